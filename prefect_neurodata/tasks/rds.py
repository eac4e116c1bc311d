"""Prefect tasks over the AIND RDS (Postgres/Redshift) tables."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
from prefect import task

from prefect_neurodata.blocks.rds import RdsCredentials
from prefect_neurodata.tasks.common import load_rds
from prefect_neurodata.tasks.retries import task_options

MAX_IDENTIFIER_BYTES = 63
"""Postgres keeps identifiers to NAMEDATALEN - 1 = 63 bytes (longer ones are cut or refused)."""
_IDENTIFIER_CHAR = "[A-Za-z0-9_]"
EXPORT_TABLE_PATTERN = f"^{_IDENTIFIER_CHAR}{{1,{MAX_IDENTIFIER_BYTES}}}$"
"""JSON-schema pattern of what `table_name_problem` accepts (for run forms)."""


def table_name_problem(value: str) -> str | None:
    """Why ``value`` cannot name the export table, or None.

    Example:
        ```python
        table_name_problem("asset_summary")  # None
        table_name_problem("x" * 64)  # 'is 64 bytes long; Postgres identifiers ...'
        ```
    """
    if not re.fullmatch(f"{_IDENTIFIER_CHAR}+", value):
        return "must be letters, digits and _"
    size = len(value.encode())
    if size > MAX_IDENTIFIER_BYTES:
        return f"is {size} bytes long; Postgres identifiers hold at most {MAX_IDENTIFIER_BYTES}"
    return None


def check_table_name(value: str) -> str:
    """``value`` when it can name the export table; else ValueError naming it (shortened)."""
    problem = table_name_problem(value)
    if problem:
        shown = value if len(value) <= 80 else f"{value[:40]}...{value[-20:]}"
        raise ValueError(f"export_table {problem}, got {shown!r}")
    return value


@task(name="check-rds", **task_options(tags=["rds"]))
def check_rds(rds: str | RdsCredentials) -> None:
    """Fail before any write when the database cannot be reached with the block's credentials.

    Runs ``SELECT 1``. The message names the host and database, never the password.

    Raises:
        ValueError: The database refused the connection or the login.
    """
    block = load_rds(rds)
    client = block.get_client()
    try:
        client.execute_query("SELECT 1")
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise ValueError(
            f"RDS database {block.database!r} at {block.host}:{block.port} cannot be used "
            f"with the block's credentials: {reason}"
        ) from None
    finally:
        client.dispose()


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
