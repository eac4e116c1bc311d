"""QualityControl helpers over aind-data-schema 1.x (``aind_data_access_api.helpers.data_schema``).

Same names, arguments and results as aind-data-access-api 1.10. Needs the ``helpers`` extra
(``pip install 'prefect-neurodata[helpers]'``, which installs aind-data-schema 1.x).

Example:
    ```python
    from prefect_neurodata.clients.aind.document_db import MetadataDbClient
    from prefect_neurodata.clients.aind.helpers.data_schema import get_quality_control_status_df

    client = MetadataDbClient(host="api.allenneuraldynamics.org")
    statuses = get_quality_control_status_df(client, names=["ecephys_123456_2024-01-01_01-01-01"])
    ```
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pandas as pd
from aind_data_schema.core.quality_control import QCEvaluation, QualityControl

from prefect_neurodata.clients.aind.helpers.docdb import get_field_by_id, get_id_from_name

if TYPE_CHECKING:
    from prefect_neurodata.clients.aind.document_db import MetadataDbClient

_NO_VALUE: Any = object()
"""What a metric-frame cell function returns to leave the cell out (no status yet)."""


def validate_qc(qc_data: dict[str, Any], allow_invalid: bool = False) -> QualityControl | dict:
    """``qc_data`` as a validated `QualityControl`; as the dict itself if invalid and allowed.

    Example:
        ```python
        qc = validate_qc(record["quality_control"], allow_invalid=True)
        ```
    """
    try:
        return QualityControl.model_validate_json(json.dumps(qc_data))
    except Exception:
        if allow_invalid:
            return qc_data
        raise


def get_quality_control_by_id(
    client: MetadataDbClient, _id: str, allow_invalid: bool = False
) -> QualityControl | dict:
    """The `QualityControl` of the record with this ``_id``.

    Raises:
        ValueError: no such record, or it has no ``quality_control``.

    Example:
        ```python
        qc = get_quality_control_by_id(client, _id="0b1f...")
        ```
    """
    record = get_field_by_id(client, _id=_id, field="quality_control")
    if not record:
        raise ValueError(f"No record found with id {_id}")
    if "quality_control" not in record or not record["quality_control"]:
        raise ValueError(f"No quality_control field found in record with id {_id}")
    return validate_qc(record["quality_control"], allow_invalid=allow_invalid)


def get_quality_control_by_name(
    client: MetadataDbClient, name: str, allow_invalid: bool = False
) -> QualityControl | dict:
    """The `QualityControl` of the record named ``name``.

    Example:
        ```python
        qc = get_quality_control_by_name(client, name="ecephys_123456_2024-01-01_01-01-01")
        ```
    """
    _id = get_id_from_name(client, name=name)
    return get_quality_control_by_id(client, _id=_id, allow_invalid=allow_invalid)


def get_quality_control_by_names(
    client: MetadataDbClient, names: list[str], allow_invalid: bool = False
) -> list[QualityControl | dict]:
    """The `QualityControl` of each named record, in the order the service returns them.

    Example:
        ```python
        qcs = get_quality_control_by_names(client, names=["asset_a", "asset_b"])
        ```
    """
    records = client.fetch_records_by_filter_list(
        filter_key="name", filter_values=names, projection={"quality_control": 1}
    )
    return [
        validate_qc(record["quality_control"], allow_invalid=allow_invalid) for record in records
    ]


def get_quality_control_status_df(
    client: MetadataDbClient, names: list[str], date: datetime | None = None
) -> pd.DataFrame:
    """One row per name: ``<evaluation>_<metric>`` -> the metric's latest status at ``date``.

    Example:
        ```python
        df = get_quality_control_status_df(client, names=["asset_a"], date=datetime(2024, 6, 1))
        ```
    """
    if date is None:
        date = datetime.now(tz=timezone.utc)
    at = date

    def latest_status(metric: Any) -> Any:
        # The most recent status at or before the given date (none: the column is left out).
        for status in reversed(metric.status_history):
            if status.timestamp <= at:
                return status.status
        return _NO_VALUE

    return _metric_frame(client, names, latest_status)


def get_quality_control_value_df(client: MetadataDbClient, names: list[str]) -> pd.DataFrame:
    """One row per name: ``<evaluation>_<metric>`` -> the metric's value.

    Example:
        ```python
        df = get_quality_control_value_df(client, names=["asset_a", "asset_b"])
        ```
    """
    return _metric_frame(client, names, lambda metric: metric.value)


def _metric_frame(
    client: MetadataDbClient, names: list[str], cell: Callable[[Any], Any]
) -> pd.DataFrame:
    """One row per name: ``<evaluation>_<metric>`` -> ``cell(metric)`` (`_NO_VALUE`: no column)."""
    qcs = get_quality_control_by_names(client=client, names=names, allow_invalid=False)
    rows = []
    for name, qc in zip(names, qcs, strict=False):  # 1.10 stops at the shorter list
        row: dict[str, Any] = {"name": name}
        for evaluation in qc.evaluations:  # type: ignore[union-attr]
            for metric in evaluation.metrics:
                value = cell(metric)
                if value is not _NO_VALUE:
                    row[f"{evaluation.name}_{metric.name}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def add_qc_evaluations_to_docdb(
    client: MetadataDbClient,
    data_asset_id: str,
    evaluations: QCEvaluation | list[QCEvaluation],
) -> Any:
    """Serialise the evaluation(s) and attach them to the asset with ``add_qc_evaluation``.

    Example:
        ```python
        add_qc_evaluations_to_docdb(client, data_asset_id="0b1f...", evaluations=[evaluation])
        ```
    """
    if isinstance(evaluations, QCEvaluation):
        evaluations = [evaluations]
    serialized = [e.model_dump(mode="json", exclude_none=True) for e in evaluations]
    return client.add_qc_evaluation(
        data_asset_id=data_asset_id, qc_contents={"qc_evaluation": serialized}
    )
