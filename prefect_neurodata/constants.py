"""Constants shared by more than one layer: service limits and default block names.

This module imports nothing, so every layer (clients, blocks, tasks, flows, deployments, the
CLI) may read it. A value lives here when two modules would otherwise each spell it.

Example:
    ```python
    from prefect_neurodata.constants import DEFAULT_CAVE_BLOCK, MAX_ANNOTATIONS_PER_REQUEST

    chunk_size = min(25_000, MAX_ANNOTATIONS_PER_REQUEST)
    ```
"""

from __future__ import annotations

from typing import Final, Literal

MAX_ANNOTATIONS_PER_REQUEST: Final = 10_000
"""Rows the CAVE annotation engine accepts in one POST/PUT/DELETE (its documented limit)."""

DocDbVersion = Literal["v1", "v2"]
"""The DocDB REST API generation: ``v1`` for aind-data-schema 1.x records, ``v2`` for 2.x
(the clients' ``version=`` and the `DocDbApiCredentials` block's field)."""

DEFAULT_DOCDB_BLOCK: Final = "neurodata-docdb"
"""Saved name of the `DocDbApiCredentials` block the flows use when given none."""

DEFAULT_CAVE_BLOCK: Final = "neurodata-cave"
"""Saved name of the `CaveCredentials` block the flows use when given none."""

DEFAULT_RDS_BLOCK: Final = "neurodata-rds"
"""Saved name of the `RdsCredentials` block the flows use when given none."""

DEFAULT_AWS_BLOCK: Final = "neurodata-aws"
"""Saved name of the prefect-aws `AwsCredentials` block the saved DocDB block references."""

__all__ = [
    "DEFAULT_AWS_BLOCK",
    "DEFAULT_CAVE_BLOCK",
    "DEFAULT_DOCDB_BLOCK",
    "DEFAULT_RDS_BLOCK",
    "MAX_ANNOTATIONS_PER_REQUEST",
    "DocDbVersion",
]
