"""CAVE materialization tasks: versions, tables, row counts, partition plans, Parquet parts.

Reads of a frozen version are cached (`FROZEN_OPTIONS`); a snapshot partition is written to
Parquet by the task that fetched it, so bulk data moves as files, never as task results.

Example:
    ```python
    from prefect import flow
    from prefect_neurodata.tasks.cave_materialization import (
        count_version_rows, resolve_materialization_version,
    )

    @flow
    def rows(table: str) -> int:
        meta = resolve_materialization_version("cave", "minnie65_public", None)
        return count_version_rows("cave", "minnie65_public", meta["version"], table)
    ```
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.cave_common import (
    FROZEN_OPTIONS,
    LIVE_OPTIONS,
    Cave,
    CaveInputError,
    cave_client,
    json_safe,
)

DEFAULT_ROWS_PER_PART = 100_000
"""Rows per snapshot partition task: well under the server's 200,000-row limit."""


# ------------------------------------------------------------------------------ materialization
@task(name="resolve-materialization-version", tags=["cave"], **LIVE_OPTIONS)
def resolve_materialization_version(
    cave: Cave, datastack: str, version: int | None = None
) -> dict[str, Any]:
    """The metadata of a usable materialization version (the most recent valid by default).

    Args:
        cave: CAVE block or its name.
        datastack: Datastack.
        version: Version wanted; None for the most recent valid one.

    Returns:
        The version metadata (``version``, ``time_stamp``, ``expires_on`` as ISO strings,
        ``valid``, ``status``...).

    Raises:
        CaveInputError: The version does not exist, has expired or is not ready; the message
            lists the valid versions.
    """
    client = cave_client(cave, datastack)
    every = client.materialize.get_versions_metadata(expired=True)
    valid = sorted(m["version"] for m in every if m.get("valid"))
    if version is None:
        if not valid:
            raise CaveInputError(f"datastack {datastack!r} has no valid materialization version")
        version = valid[-1]
    found = [m for m in every if m["version"] == version]
    if not found:
        raise CaveInputError(
            f"materialization version {version} does not exist for datastack {datastack!r} "
            f"(valid versions: {valid})"
        )
    meta = found[0]
    if not meta.get("valid") or meta.get("status") not in (None, "AVAILABLE"):
        expires = meta.get("expires_on")
        when = f", expired on {expires.isoformat()}" if isinstance(expires, dt.datetime) else ""
        raise CaveInputError(
            f"materialization version {version} of datastack {datastack!r} is "
            f"{meta.get('status') or 'not valid'}{when}; valid versions: {valid}"
        )
    return json_safe(meta)


@task(name="list-version-tables", tags=["cave"], **FROZEN_OPTIONS)
def list_version_tables(
    cave: Cave, datastack: str, version: int, version_timestamp: str | None = None
) -> list[dict[str, Any]]:
    """Metadata of every table of a frozen version (cached: a version never changes).

    ``version_timestamp`` (from `resolve_materialization_version`) only enters the cache key,
    so a server that was rebuilt with the same version numbers (a sandbox) is not confused
    with the old one.

    Returns:
        One metadata dict per table (``table_name``, ``schema_type``, ``voxel_resolution``,
        ``reference_table``, ``read_permission``, ``user_id``...), sorted by name.
    """
    client = cave_client(cave, datastack)
    metas = client.materialize.get_tables_metadata(version=version)
    out = []
    for meta in metas:
        meta = dict(meta)
        keys = ("voxel_resolution_x", "voxel_resolution_y", "voxel_resolution_z")
        if all(k in meta for k in keys):
            meta["voxel_resolution"] = [meta.pop(k) for k in keys]
        out.append(json_safe(meta))
    return sorted(out, key=lambda m: m["table_name"])


@task(name="count-version-rows", tags=["cave"], **FROZEN_OPTIONS)
def count_version_rows(
    cave: Cave, datastack: str, version: int, table: str, version_timestamp: str | None = None
) -> int:
    """Rows of ``table`` in a frozen version, as the server's materialized metadata says
    (``version_timestamp`` as in `list_version_tables`)."""
    client = cave_client(cave, datastack)
    return int(client.materialize.get_annotation_count(table, version=version))


def _count_from(client: Any, table: str, version: int, lo: int) -> int:
    frame = client.materialize.query_table(
        table,
        filter_greater_equal_dict={"id": lo},
        get_counts=True,
        materialization_version=version,
        merge_reference=False,
    )
    return int(frame["count"].iloc[0])


@task(name="plan-table-partitions", tags=["cave"], **FROZEN_OPTIONS)
def plan_table_partitions(
    cave: Cave,
    datastack: str,
    version: int,
    table: str,
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    version_timestamp: str | None = None,
) -> list[list[int | None]]:
    """Split a frozen table into half-open id ranges of about ``rows_per_part`` rows.

    The first range is open below and the last open above, so together they cover every id;
    a range that still reaches the server's row limit is split again when it is fetched.

    Returns:
        ``[[lo, hi], ...]`` with None for an open end (``version_timestamp`` as in
        `list_version_tables`).
    """
    if rows_per_part < 1:
        raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part}")
    client = cave_client(cave, datastack)
    total = int(client.materialize.get_annotation_count(table, version=version))
    if total <= rows_per_part:
        return [[None, None]]
    # Ids are assigned increasing from 1; probe for the end of the id span (doubling).
    hi = total + 1
    for _ in range(64):
        if _count_from(client, table, version, hi) == 0:
            break
        hi *= 2
    parts = math.ceil(total / rows_per_part)
    width = math.ceil(hi / parts)
    cuts = [i * width for i in range(1, parts) if i * width < hi]
    bounds: list[int | None] = [None, *cuts, None]
    return [[bounds[i], bounds[i + 1]] for i in range(len(bounds) - 1)]


@task(name="snapshot-table-part", tags=["cave"], **LIVE_OPTIONS)
def snapshot_table_part(
    cave: Cave,
    datastack: str,
    version: int,
    table: str,
    id_range: Sequence[int | None],
    target: str,
    desired_resolution: Sequence[float] | None = None,
    aws_block: str | None = None,
) -> dict[str, Any]:
    """Write the rows of one id range of a frozen table to one Parquet file.

    Rows are streamed from the server partition by partition (one Arrow table in memory at a
    time) into a `pyarrow.parquet.ParquetWriter`, in a scratch file that is checksummed and
    then published to ``target`` (renamed locally, uploaded to S3), so a crash never leaves a
    half-written file under its final name. Ranges the server cuts at its row limit are split
    further by the client, so nothing is truncated.

    Args:
        cave: CAVE block or its name.
        datastack: Datastack.
        version: Frozen materialization version.
        table: Table.
        id_range: ``[lo, hi)``; None for an open end.
        target: Local path or ``s3://`` URI of the Parquet file.
        desired_resolution: Resolution of positions (None: the table's own).
        aws_block: Name of an `AwsCredentials` block for an ``s3://`` target (None: the AWS
            environment).

    Returns:
        ``{"path", "rows", "sha256", "bytes", "id_range"}``; an empty range writes no file
        (``path`` None).
    """
    lo, hi = (list(id_range) + [None, None])[:2]
    client = cave_client(cave, datastack)
    filters: dict[str, Any] = {}
    if lo is not None:
        filters["filter_greater_equal_dict"] = {"id": int(lo)}
    if hi is not None:
        filters["filter_less_dict"] = {"id": int(hi)}
    scratch = storage.scratch_dir(target) / f".{Path(target).name}.{uuid.uuid4().hex}.part"
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    rows = 0
    try:
        for part in client.materialize.iter_query_table_partitions(
            table,
            materialization_version=version,
            merge_reference=False,
            desired_resolution=desired_resolution,
            max_workers=1,
            **filters,
        ):
            part = part.replace_schema_metadata(None)
            if writer is None:
                schema = part.schema
                writer = pq.ParquetWriter(str(scratch), schema, compression="zstd")
            elif schema is not None and part.schema != schema:  # schema is set with writer
                part = part.select(schema.names).cast(schema)
            if part.num_rows:
                writer.write_table(part)
                rows += part.num_rows
            del part
        if writer is None or rows == 0:
            return {"path": None, "rows": 0, "sha256": None, "bytes": 0, "id_range": [lo, hi]}
        writer.close()
        writer = None
        size = scratch.stat().st_size
        digest = storage.sha256_local(scratch)
        storage.publish_file(scratch, target, storage.load_aws(aws_block))
        return {"path": target, "rows": rows, "sha256": digest, "bytes": size, "id_range": [lo, hi]}
    finally:
        if writer is not None:
            writer.close()
        if scratch.exists():
            scratch.unlink()
