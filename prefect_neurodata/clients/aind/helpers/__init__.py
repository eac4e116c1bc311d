"""Convenience helpers over `MetadataDbClient` (``aind_data_access_api.helpers`` of 1.10).

* `docdb`: one record, one projection or one field by ``_id`` or ``name``;
* `data_schema`: QualityControl objects of aind-data-schema 1.x (install the ``helpers`` extra:
  ``pip install 'prefect-neurodata[helpers]'``).
"""
