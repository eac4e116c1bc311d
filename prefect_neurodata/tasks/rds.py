"""Prefect tasks over the AIND RDS (Postgres/Redshift) tables."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task

from prefect_neurodata.blocks.rds import RdsCredentials
from prefect_neurodata.tasks.common import load_rds
from prefect_neurodata.tasks.retries import task_options


@task(name="export-rds-table", **task_options(tags=["rds", "write"]))
def export_rows(rds: str | RdsCredentials, table: str, rows: list[dict[str, Any]]) -> int:
    """Replace ``table`` with ``rows`` (one row per asset); a rerun writes the same table.

    Args:
        rds: RDS block or its name.
        table: Table name.
        rows: Flat dicts with the same keys.

    Returns:
        The number of rows written.

    Example:
        ```python
        export_rows("neurodata-rds", "asset_summary", [{"id": "a", "name": "x"}])
        ```
    """
    frame = pd.DataFrame.from_records(rows)
    load_rds(rds).get_client().overwrite_table_with_df(frame, table)
    return len(frame)
