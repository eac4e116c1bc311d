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
import functools
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.context import TaskRunContext
from prefect_aws import AwsCredentials
from pydantic import BaseModel, Field

from prefect_neurodata.clients.concurrency import TTLMemo, imap_bounded, map_bounded
from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.cave_auth import cave_access, table_permission_problem
from prefect_neurodata.tasks.cave_common import (
    FROZEN_OPTIONS,
    LIVE_OPTIONS,
    Cave,
    CaveInputError,
    CavePermissionError,
    cave_client,
    json_safe,
)

DEFAULT_ROWS_PER_PART = 250_000
"""Rows per snapshot part (one Parquet file each).

The snapshot flow deals a table's parts into one task per thread (`snapshot_table_parts`), so
the part size sets file sizes, not task runs; each part is still fetched in requests of
`REQUEST_ROWS`.
"""

REQUEST_ROWS = 100_000
"""Rows per request of a partition task: half the server's default 200,000-row limit.

The room absorbs uneven id density, so a request is not cut at the limit (which would fetch
its first 200,000 rows for nothing before the client splits it); a server with a lower limit
still gets complete answers, the client splits what it cuts.
"""

PREFETCH = 1
"""Requests in flight per partition task (2 would fetch the next piece while one is written).

The flow's 4 task threads already keep 4 requests in flight, as many as a plain client loop;
2 per task (8 in flight) was slower on a 2-core machine (1M rows: median 1.96 s against 1.59 s,
the stand-in is CPU-bound) and holds twice the rows, so it pays only with more cores or latency.
"""


class TablePlan(BaseModel):
    """One table of a snapshot plan: the server's row count and the id ranges to write."""

    rows: int = Field(description="Rows of the table in the version (materialized count).")
    ranges: list[list[int | None]] = Field(
        description="Half-open ``[lo, hi)`` id ranges, one Parquet part each (None: open end)."
    )
    cuts: list[list[int]] = Field(
        default_factory=list,
        description=(
            "Per range, the interior ids at which its task splits it into requests of about "
            "`REQUEST_ROWS` rows (empty: one request)."
        ),
    )


# ------------------------------------------------------------------------------ plain helpers
# The bodies of the set-up tasks below, with a client at hand: `plan_snapshot` runs them all in
# one task run instead of one run each.
def version_metadata(client: Any, datastack: str, version: int | None = None) -> dict[str, Any]:
    """`resolve_materialization_version` with a client at hand (no task run of its own)."""
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


def tables_metadata(client: Any, version: int) -> list[dict[str, Any]]:
    """`list_version_tables` with a client at hand (no task run of its own)."""
    metas = client.materialize.get_tables_metadata(version=version)
    out = []
    for meta in metas:
        meta = dict(meta)
        keys = ("voxel_resolution_x", "voxel_resolution_y", "voxel_resolution_z")
        if all(k in meta for k in keys):
            meta["voxel_resolution"] = [meta.pop(k) for k in keys]
        out.append(json_safe(meta))
    return sorted(out, key=lambda m: m["table_name"])


def _count_from(client: Any, table: str, version: int, lo: int) -> int:
    frame = client.materialize.query_table(
        table,
        filter_greater_equal_dict={"id": lo},
        get_counts=True,
        materialization_version=version,
        merge_reference=False,
    )
    return int(frame["count"].iloc[0])


def _id_span_end(client: Any, table: str, version: int, total: int) -> int:
    """An id above every row: ids are assigned increasing from 1, so probe by doubling."""
    hi = total + 1
    for _ in range(64):
        if _count_from(client, table, version, hi) == 0:
            break
        hi *= 2
    return hi


def _even_cuts(lo: int, hi: int, pieces: int) -> list[int]:
    """Interior ids that split ``[lo, hi)`` into ``pieces`` ranges of equal width."""
    width = math.ceil((hi - lo) / max(1, pieces))
    return [lo + i * width for i in range(1, pieces) if lo + i * width < hi]


def _ranges(cuts: list[int]) -> list[list[int | None]]:
    bounds: list[int | None] = [None, *cuts, None]
    return [[bounds[i], bounds[i + 1]] for i in range(len(bounds) - 1)]


def _part_ranges(rows: int, rows_per_part: int, id_end: int) -> list[list[int | None]]:
    """The id ranges of a table's Parquet parts: about ``rows_per_part`` rows each.

    The id span ``[0, id_end)`` is cut evenly, assuming its ``rows`` spread evenly over it
    (ids grow from 1); the first range is open below and the last open above, so together
    they cover every id, even one added after ``id_end`` was probed.
    """
    return _ranges(_even_cuts(0, id_end, max(1, math.ceil(rows / rows_per_part))))


def table_partitions(
    client: Any,
    table: str,
    version: int,
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    total: int | None = None,
) -> list[list[int | None]]:
    """`plan_table_partitions` with a client at hand and, when known, the table's row count."""
    if rows_per_part < 1:
        raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part}")
    if total is None:
        total = int(client.materialize.get_annotation_count(table, version=version))
    if total <= rows_per_part:
        return [[None, None]]
    return _part_ranges(total, rows_per_part, _id_span_end(client, table, version, total))


def table_plan(
    client: Any, table: str, version: int, rows_per_part: int = DEFAULT_ROWS_PER_PART
) -> TablePlan:
    """The `TablePlan` of one table: its row count, id ranges and their request cuts.

    Each range is cut into requests of about `REQUEST_ROWS` rows, assuming the rows spread
    evenly over the id span (ids grow from 1); a denser stretch that reaches the server's
    limit anyway is split by the client, so the cuts only save round trips, never rows.

    Example:
        ```python
        from prefect_neurodata.tasks.cave_common import cave_client

        plan = table_plan(cave_client("neurodata-cave", "minnie65_public"), "synapses", 943)
        print(plan.rows, len(plan.ranges), plan.cuts[0])
        ```
    """
    rows = int(client.materialize.get_annotation_count(table, version=version))
    if rows <= min(rows_per_part, REQUEST_ROWS):
        return TablePlan(rows=rows, ranges=[[None, None]], cuts=[[]])
    end = _id_span_end(client, table, version, rows)
    ranges = _part_ranges(rows, rows_per_part, end)
    cuts = []
    for lo, hi in ranges:
        start, stop = lo or 0, end if hi is None else hi
        share = rows * (stop - start) / end / REQUEST_ROWS  # in requests
        # (1 % slack: a range a rounded-up id or two above one request stays one request)
        cuts.append(_even_cuts(start, stop, math.ceil(share - 0.01)))
    return TablePlan(rows=rows, ranges=ranges, cuts=cuts)


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
    return version_metadata(cave_client(cave, datastack), datastack, version)


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
    return tables_metadata(cave_client(cave, datastack), version)


@task(name="count-version-rows", tags=["cave"], **FROZEN_OPTIONS)
def count_version_rows(
    cave: Cave, datastack: str, version: int, table: str, version_timestamp: str | None = None
) -> int:
    """Rows of ``table`` in a frozen version, as the server's materialized metadata says
    (``version_timestamp`` as in `list_version_tables`)."""
    client = cave_client(cave, datastack)
    return int(client.materialize.get_annotation_count(table, version=version))


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
    return table_partitions(cave_client(cave, datastack), table, version, rows_per_part)


class SnapshotPlan(BaseModel):
    """Everything a snapshot needs to know before its first write, from one task run."""

    access: dict[str, Any] = Field(description="`cave_access` of the token (no secret).")
    version: dict[str, Any] = Field(description="Metadata of the version (JSON-safe).")
    tables: dict[str, dict[str, Any]] = Field(description="Metadata of every table, by name.")
    wanted: list[str] = Field(description="Tables to snapshot, in order.")
    parts: dict[str, TablePlan] = Field(description="Row count and id ranges of each wanted table.")


@task(name="plan-snapshot", tags=["cave"], **LIVE_OPTIONS)
def plan_snapshot(
    cave: Cave,
    datastack: str,
    version: int | None = None,
    tables: Sequence[str] = (),
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
) -> SnapshotPlan:
    """Check and plan a snapshot in one task run: access, version, tables, counts, id ranges.

    The work of `check_cave_access` (``view``), `resolve_materialization_version`,
    `list_version_tables`, and `count_version_rows` plus `plan_table_partitions` of every wanted
    table (up to 4 tables at once), without a task run (and its API round trips) for each, so
    a snapshot's partitions start one task after the flow does. Nothing is written.

    Args:
        cave: CAVE block or its name.
        datastack: Datastack.
        version: Version wanted; None for the most recent valid one.
        tables: Tables to snapshot (duplicates dropped); empty for every table of the version.
        rows_per_part: Rows per id range (see `plan_table_partitions`).

    Returns:
        The plan (see `SnapshotPlan`).

    Raises:
        CaveInputError: Unknown datastack, unknown or expired version, or unknown tables.
        CavePermissionError: No ``view`` on the datastack, or PRIVATE tables of another user.

    Example:
        ```python
        from prefect import flow

        @flow
        def parts() -> dict[str, int]:
            plan = plan_snapshot("neurodata-cave", "minnie65_public", tables=["synapses"])
            return {table: len(p.ranges) for table, p in plan.parts.items()}
        ```
    """
    access = cave_access(cave, datastack, "view")
    client = cave_client(cave, datastack)
    vmeta = version_metadata(client, datastack, version)
    number = int(vmeta["version"])
    metas = {m["table_name"]: m for m in tables_metadata(client, number)}
    wanted = list(dict.fromkeys(tables)) or sorted(metas)
    unknown = [t for t in wanted if t not in metas]
    if unknown:
        raise CaveInputError(
            f"table(s) {unknown} are not in version {number} of datastack {datastack!r} "
            f"(tables: {sorted(metas)})"
        )
    denied = [p for t in wanted if (p := table_permission_problem(metas[t], access, "read"))]
    if denied:
        raise CavePermissionError("cannot read:\n  " + "\n  ".join(denied))

    # the client is thread-safe (its metadata memo is locked, its pool shared)
    plans = map_bounded(
        lambda table: table_plan(client, table, number, rows_per_part), wanted, max_workers=4
    )
    return SnapshotPlan(
        access=access,
        version=vmeta,
        tables=metas,
        wanted=wanted,
        parts=dict(zip(wanted, plans, strict=True)),
    )


WRITTEN_BY_TASK_RUN = TTLMemo(ttl=24 * 3600, maxsize=4096)
"""The parts each `snapshot_table_parts` task run has published, by (task run id, target).

A retry of the task run (same parameters) takes these instead of fetching and writing them
again, so a failure in a task's last part costs one part, not the task's whole share.
"""


class SnapshotPart(BaseModel):
    """One Parquet part of a snapshot: an id range of a table and the file it is written to."""

    id_range: list[int | None] = Field(
        description="Half-open ``[lo, hi)`` id range; None for an open end."
    )
    target: str = Field(description="Local path or ``s3://`` URI of the part's Parquet file.")
    cuts: list[int] = Field(
        default_factory=list,
        description="Interior ids at which the range is split into requests (`TablePlan.cuts`).",
    )


def write_table_part(
    client: Any,
    version: int,
    table: str,
    part: SnapshotPart,
    desired_resolution: Sequence[float] | None = None,
    aws: AwsCredentials | None = None,
) -> dict[str, Any]:
    """`snapshot_table_part` with a client at hand (no task run of its own).

    Returns:
        ``{"path", "rows", "sha256", "bytes", "id_range"}``; an empty range writes no file
        (``path`` None).
    """
    lo, hi = (list(part.id_range) + [None, None])[:2]
    bounds: list[int | None] = [lo, *(int(c) for c in part.cuts), hi]
    pieces = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]

    def fetch(piece: tuple[int | None, int | None]) -> list[pa.Table]:
        # the client is thread-safe (its metadata memo is locked, its pool shared)
        start, stop = piece
        filters: dict[str, Any] = {}
        if start is not None:
            filters["filter_greater_equal_dict"] = {"id": int(start)}
        if stop is not None:
            filters["filter_less_dict"] = {"id": int(stop)}
        return list(
            client.materialize.iter_query_table_partitions(
                table,
                materialization_version=version,
                merge_reference=False,
                desired_resolution=desired_resolution,
                max_workers=1,
                **filters,
            )
        )

    target = part.target
    scratch = storage.scratch_dir(target) / f".{Path(target).name}.{uuid.uuid4().hex}.part"
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    rows = 0
    try:
        for fetched in imap_bounded(fetch, pieces, max_workers=min(PREFETCH, len(pieces))):
            for piece in fetched:
                piece = piece.replace_schema_metadata(None)
                if writer is None:
                    schema = piece.schema
                    writer = pq.ParquetWriter(str(scratch), schema, compression="zstd")
                elif schema is not None and piece.schema != schema:  # schema is set with writer
                    piece = piece.select(schema.names).cast(schema)
                if piece.num_rows:
                    writer.write_table(piece)
                    rows += piece.num_rows
            del fetched
        if writer is None or rows == 0:
            return {"path": None, "rows": 0, "sha256": None, "bytes": 0, "id_range": [lo, hi]}
        writer.close()
        writer = None
        size = scratch.stat().st_size
        digest = storage.sha256_local(scratch)
        storage.publish_file(scratch, target, aws)
        return {"path": target, "rows": rows, "sha256": digest, "bytes": size, "id_range": [lo, hi]}
    finally:
        if writer is not None:
            writer.close()
        if scratch.exists():
            scratch.unlink()


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
    cuts: Sequence[int] = (),
) -> dict[str, Any]:
    """Write the rows of one id range of a frozen table to one Parquet file.

    The range is fetched as one request per piece between ``cuts`` (`PREFETCH` in flight) and
    streamed into a `pyarrow.parquet.ParquetWriter`, one Arrow table in memory per piece in
    flight, in a scratch file that is checksummed and then published to ``target`` (renamed
    locally, uploaded to S3), so a crash never leaves a half-written file under its final
    name. Pieces the server cuts at its row limit are split further by the client, so nothing
    is truncated.

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
        cuts: Increasing ids inside ``id_range`` at which it is split into requests (see
            `TablePlan.cuts`); empty fetches it as one request.

    Returns:
        ``{"path", "rows", "sha256", "bytes", "id_range"}``; an empty range writes no file
        (``path`` None).

    Example:
        ```python
        from prefect import flow

        @flow
        def one_part() -> int:
            part = snapshot_table_part(
                "neurodata-cave", "minnie65_public", 943, "synapses",
                [None, 250_000], "/data/synapses/part-00000.parquet", cuts=[100_000, 200_000],
            )
            return part["rows"]
        ```
    """
    part = SnapshotPart(id_range=list(id_range), target=target, cuts=list(cuts))
    return write_table_part(
        cave_client(cave, datastack),
        version,
        table,
        part,
        desired_resolution,
        storage.load_aws(aws_block),
    )


@task(name="snapshot-table-parts", tags=["cave"], **LIVE_OPTIONS)
def snapshot_table_parts(
    cave: Cave,
    datastack: str,
    version: int,
    table: str,
    parts: Sequence[SnapshotPart],
    desired_resolution: Sequence[float] | None = None,
    aws_block: str | None = None,
) -> list[dict[str, Any]]:
    """Write several id ranges of a frozen table, one Parquet file each, one after the other.

    Each part is written as by `snapshot_table_part` (scratch file, checksum, then published
    under its target), so a table keeps its files of ``rows_per_part`` rows while the flow
    pays one task run per thread rather than one per file: a task run costs Prefect work in
    the flow's process and on its server (about 0.1-0.3 s of CPU on the machines we measured),
    which a 10-million-row table would otherwise pay 40 times. A retry of the task run writes
    only the parts its earlier attempts did not finish (`WRITTEN_BY_TASK_RUN`).

    Args:
        cave: CAVE block or its name.
        datastack: Datastack.
        version: Frozen materialization version.
        table: Table.
        parts: The parts to write, in order (`SnapshotPart`: id range, target, request cuts).
        desired_resolution: Resolution of positions (None: the table's own).
        aws_block: Name of an `AwsCredentials` block for ``s3://`` targets (None: the AWS
            environment).

    Returns:
        One ``{"path", "rows", "sha256", "bytes", "id_range"}`` per part, in order.

    Example:
        ```python
        from prefect import flow

        @flow
        def two_parts() -> int:
            written = snapshot_table_parts(
                "neurodata-cave", "minnie65_public", 943, "synapses",
                [
                    SnapshotPart(id_range=[None, 250_000], target="/data/s/part-00000.parquet"),
                    SnapshotPart(id_range=[250_000, None], target="/data/s/part-00001.parquet"),
                ],
            )
            return sum(part["rows"] for part in written)
        ```
    """
    client = cave_client(cave, datastack)
    aws = storage.load_aws(aws_block)

    def write(part: SnapshotPart) -> dict[str, Any]:
        return write_table_part(client, version, table, part, desired_resolution, aws)

    context = TaskRunContext.get()
    if context is None:  # called as a plain function (``.fn``): nothing to retry
        return [write(part) for part in parts]
    run_id = context.task_run.id
    return [
        WRITTEN_BY_TASK_RUN.get((run_id, part.target), functools.partial(write, part))
        for part in parts
    ]
