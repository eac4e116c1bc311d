"""Look-ups of one DocDB record by ``_id`` or ``name`` (``aind_data_access_api.helpers.docdb``).

Same names, arguments and results as aind-data-access-api 1.10.

Example:
    ```python
    from prefect_neurodata.clients.aind.document_db import MetadataDbClient
    from prefect_neurodata.clients.aind.helpers.docdb import get_field_by_id, get_id_from_name

    client = MetadataDbClient(host="api.allenneuraldynamics.org")
    _id = get_id_from_name(client, name="ecephys_123456_2024-01-01_01-01-01")
    subject = get_field_by_id(client, _id=_id, field="subject")
    ```
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_neurodata.clients.aind.document_db import MetadataDbClient


def _first_match(
    client: MetadataDbClient, key: str, value: str, projection: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The first record whose ``key`` is ``value`` (reduced to ``projection``), or None."""
    records = client.retrieve_docdb_records(
        filter_query={key: value}, projection=projection, limit=1
    )
    return records[0] if len(records) > 0 else None


def get_record_by_id(client: MetadataDbClient, _id: str) -> dict[str, Any] | None:
    """The record with this ``_id``, or None when there is none.

    Example:
        ```python
        record = get_record_by_id(client, _id="0b1f3c4e-...")
        ```
    """
    return _first_match(client, "_id", _id)


def get_projection_by_id(
    client: MetadataDbClient, _id: str, projection: dict[str, Any]
) -> dict[str, Any] | None:
    """The record with this ``_id`` reduced to ``projection`` (e.g. ``{"subject": 1}``), or None.

    Example:
        ```python
        ids_and_names = get_projection_by_id(client, _id="0b1f...", projection={"name": 1})
        ```
    """
    return _first_match(client, "_id", _id, projection)


def get_field_by_id(client: MetadataDbClient, _id: str, field: str) -> dict[str, Any] | None:
    """``{"_id": ..., field: value}`` of the record with this ``_id``, or None when there is none.

    Example:
        ```python
        get_field_by_id(client, _id="0b1f...", field="quality_control")
        ```
    """
    return get_projection_by_id(client, _id=_id, projection={field: 1})


def get_id_from_name(client: MetadataDbClient, name: str) -> str:
    """The ``_id`` of the record named ``name``; the first one (with a warning) if several share it.

    Raises:
        ValueError: no record has this name.

    Example:
        ```python
        _id = get_id_from_name(client, name="ecephys_123456_2024-01-01_01-01-01")
        ```
    """
    records = client.retrieve_docdb_records(filter_query={"name": name}, projection={"_id": 1})
    if len(records) > 1:
        # The root logger, as 1.10 does: callers' log configuration (and tests) rely on it.
        logging.warning(
            f"Multiple records share the name {name}, only the first record will be returned."
        )
    elif len(records) == 0:
        raise ValueError(f"No record found with name {name}")
    return records[0]["_id"]


def get_name_from_id(client: MetadataDbClient, _id: str) -> str:
    """The ``name`` of the record with this ``_id``.

    Raises:
        ValueError: no record has this ``_id``.

    Example:
        ```python
        name = get_name_from_id(client, _id="0b1f...")
        ```
    """
    record = _first_match(client, "_id", _id, {"name": 1})
    if record is None:
        raise ValueError(f"No record found with _id {_id}")
    return record["name"]


def get_record_by_name(client: MetadataDbClient, name: str) -> dict[str, Any] | None:
    """The first record named ``name``, or None when there is none.

    Example:
        ```python
        record = get_record_by_name(client, name="ecephys_123456_2024-01-01_01-01-01")
        ```
    """
    return _first_match(client, "name", name)


def get_projection_by_name(
    client: MetadataDbClient, name: str, projection: dict[str, Any]
) -> dict[str, Any] | None:
    """The first record named ``name`` reduced to ``projection``, or None when there is none.

    Example:
        ```python
        get_projection_by_name(client, name="ecephys_123456_...", projection={"subject": 1})
        ```
    """
    return _first_match(client, "name", name, projection)
