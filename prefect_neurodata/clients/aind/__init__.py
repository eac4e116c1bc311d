"""Clients of the AIND data-access services (re-implementation of ``aind_data_access_api``).

Modules, with the seed package's names:

* `credentials`: credentials from arguments, environment or AWS Secrets Manager;
* `secrets`: `secrets.get_secret` and `secrets.get_parameter` (Secrets Manager, SSM);
* `document_db`: the DocDB REST API clients (`MetadataDbClient`, `SchemaDbClient`,
  `AnalysisDbClient`);
* `document_db_ssh`: pymongo through an SSH tunnel;
* `rds_tables`: pandas DataFrames in Postgres / Redshift;
* `utils`: S3 location helpers, pagination, lookups by lists of values.

This package never imports Prefect.
"""
