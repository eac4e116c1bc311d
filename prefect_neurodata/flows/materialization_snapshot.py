"""Flow 5: snapshot a CAVE materialization version to Parquet, with a checksummed manifest.

Given a datastack, a version (the most recent valid one by default) and tables (all by
default), the flow writes every row of each table under

```
{destination}/{datastack}/v{version}/{table}/part-00000.parquet ...
{destination}/{datastack}/v{version}/manifest.json
```

where ``destination`` is a local directory or an ``s3://`` URI (``AWS_ENDPOINT_URL`` honoured).

* **Nothing truncated, bounded memory.** Each table is split into id ranges of about
  ``rows_per_part`` rows (one Parquet file each; 250,000 by default), dealt into at most one
  task per thread of the flow (4), each writing its consecutive parts one after the other; a
  part is fetched in requests of about 100,000 rows streamed into a
  `pyarrow.parquet.ParquetWriter` (the client splits any request the server cuts at its row
  limit), so memory holds a request's rows per thread whatever the table size.
* **Verified.** Each table's row count is checked against the server's materialized count;
  every file's sha256 goes into the manifest.
* **Idempotent.** Tables already in the manifest for this version whose files are all present
  with matching checksums are skipped; the manifest is rewritten (atomically) after each table,
  so a run killed midway keeps the tables it finished.
* **Validated first.** An unknown or expired version, unknown tables and missing permissions
  (no ``view`` on the datastack, PRIVATE tables of other users) fail before any file is
  written, with messages naming what is wrong.

Example:
    ```python
    from prefect_neurodata.flows.materialization_snapshot import (
        SnapshotRequest, snapshot_materialization,
    )

    summary = snapshot_materialization(
        SnapshotRequest(datastack="minnie65_public", destination="/data/cave-snapshots"),
        cave_block="neurodata-cave",
    )
    print(summary.manifest, summary.rows)
    ```
"""

from __future__ import annotations

import contextvars
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_aws import AwsCredentials
from pydantic import BaseModel, Field, field_validator

from prefect_neurodata.clients.aind.utils import bucket_problem
from prefect_neurodata.clients.cave.annotationengine import checked_voxel_resolution
from prefect_neurodata.constants import DEFAULT_CAVE_BLOCK
from prefect_neurodata.errors import NeurodataError
from prefect_neurodata.flows._artifacts import (
    FailureReport,
    failure_report,
    publish_markdown,
    publish_table,
)
from prefect_neurodata.flows._cave_report import (
    announce_notices,
    cave_failure_advice,
    datastack_label,
    table_notices,
)
from prefect_neurodata.flows._names import neurodata_flow, request_value
from prefect_neurodata.flows.parameters import (
    AwsBlockName,
    CaveBlockName,
    CaveTableName,
    S3UriOrPath,
)
from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.cave import (
    DEFAULT_ROWS_PER_PART,
    CaveInputError,
    SnapshotPart,
    SnapshotPlan,
    load_cave,
    plan_snapshot,
    snapshot_table_parts,
)
from prefect_neurodata.tasks.claims import exclusive
from prefect_neurodata.tasks.snapshot_manifest import (
    Manifest,
    SnapshotFile,
    TableEntry,
)

ARTIFACT_KEY = "cave-materialization-snapshot"

TASK_THREADS = 4
"""Threads of the flow's task runner: tables' parts are written by at most this many tasks each."""


class SnapshotRequest(BaseModel):
    """What to snapshot and where to."""

    destination: S3UriOrPath = Field(
        description="Local directory or s3://bucket/prefix under which snapshots are written."
    )
    datastack: str | None = Field(
        default=None, description="Datastack; None uses the CAVE block's datastack."
    )
    version: int | None = Field(
        default=None, ge=1, description="Materialization version; None for the latest valid."
    )
    tables: list[CaveTableName] = Field(
        default_factory=list, description="Tables to snapshot; empty for every table."
    )
    desired_resolution: list[float] | None = Field(
        default=None,
        description="Resolution (nm/voxel) of written positions; None keeps each table's own.",
    )
    rows_per_part: int = Field(
        default=DEFAULT_ROWS_PER_PART,
        ge=1_000,
        le=1_000_000,
        description="Rows per Parquet part file (a table's parts are shared by 4 tasks).",
    )

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("destination must not be empty")
        if value.startswith("s3://"):
            bucket = value[5:].split("/", 1)[0]
            if not bucket:
                raise ValueError(f"destination {value!r} has no bucket")
            problem = bucket_problem(bucket)
            if problem:
                raise ValueError(f"destination {value!r}: {problem}")
        elif "://" in value:
            raise ValueError(f"destination {value!r}: only local paths and s3:// are supported")
        return value.rstrip("/") or value

    @field_validator("desired_resolution")
    @classmethod
    def _resolution(cls, value: list[float] | None) -> list[float] | None:
        return None if value is None else checked_voxel_resolution(value, "desired_resolution")


class TableSnapshot(BaseModel):
    """Outcome for one table."""

    table: str
    status: str = Field(description="written or skipped (already snapshotted, checksums ok).")
    rows: int
    expected_rows: int
    files: int
    bytes: int
    seconds: float

    @classmethod
    def of(cls, table: str, status: str, entry: TableEntry, seconds: float = 0.0) -> TableSnapshot:
        """The outcome of ``table`` from its manifest entry (what was written, or found)."""
        return cls(
            table=table,
            status=status,
            rows=entry.rows,
            expected_rows=entry.expected_rows,
            files=len(entry.files),
            bytes=entry.bytes,
            seconds=seconds,
        )


class SnapshotSummary(BaseModel):
    """What a snapshot run did."""

    datastack: str
    version: int
    version_timestamp: str | None
    manifest: str
    rows: int
    tables: list[TableSnapshot]


class SnapshotVerificationError(RuntimeError, NeurodataError):
    """A table's written row count differs from the server's count."""


def snapshot_root(destination: str, datastack: str, version: int) -> str:
    """The directory (or S3 prefix) of one version's snapshot."""
    return storage.join(destination, datastack, f"v{version}")


def _check_destination(destination: str, aws: AwsCredentials | None = None) -> None:
    """Fail before any write when the destination cannot be written."""
    import pyarrow.fs as pafs

    if storage.is_s3(destination):
        fs, path = storage.resolve(destination, aws)
        bucket = path.split("/", 1)[0]
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            raise CaveInputError(f"destination bucket {bucket!r} does not exist")
        return
    fs, path = storage.resolve(destination)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise CaveInputError(f"destination {destination!r} is a file, not a directory")


def _schema_of(uri: str, aws: AwsCredentials | None = None) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    fs, path = storage.resolve(uri, aws)
    schema = pq.read_schema(path, filesystem=fs)
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def _run_name() -> str:
    """Flow-run name: datastack and version (e.g. ``snapshot minnie65 v1507``)."""
    version = request_value("version")
    return f"snapshot {datastack_label()} {f'v{version}' if version else 'latest'}"


@neurodata_flow("cave-materialization-snapshot", _run_name, max_workers=TASK_THREADS)
def snapshot_materialization(
    request: SnapshotRequest,
    cave_block: CaveBlockName = DEFAULT_CAVE_BLOCK,
    aws_block: AwsBlockName | None = None,
) -> SnapshotSummary:
    """Write a materialization version's tables to Parquet with a manifest.

    Args:
        request: Datastack, version, tables, destination and partition size.
        cave_block: The saved `CaveCredentials` block, by name or picked in the run form.
        aws_block: Name of a saved prefect-aws `AwsCredentials` block for an ``s3://``
            destination; None uses the AWS environment (keys, profile, ``AWS_ENDPOINT_URL``).

    Returns:
        The summary: version, manifest location, and per table its status, rows and files.

    Raises:
        CaveInputError: Unknown datastack, expired or unknown version, unknown tables, or an
            unusable destination (before any write).
        CavePermissionError: The token cannot read the datastack or a table (before any write).
        SnapshotVerificationError: A table's written rows differ from the server's count.

    A failed run publishes a markdown artifact (``cave-materialization-snapshot-failure``):
    what failed, for which datastack, version and table, and what to do next.
    """
    inputs = {
        "datastack": request.datastack or f"(from block {cave_block})",
        "version": request.version or "latest valid",
        "tables": request.tables or "all",
        "destination": request.destination,
        "cave_block": cave_block,
        "aws_block": aws_block or "(AWS environment)",
    }
    with failure_report(ARTIFACT_KEY, "Materialization snapshot", inputs) as report:
        report.advice = cave_failure_advice(report, cave_block, aws_block, lambda: RERUN)
        return run_snapshot(request, cave_block, aws_block, report)


RERUN = (
    "A rerun with the same parameters keeps the tables already in the manifest (their "
    "checksums are verified) and writes the rest."
)


def run_snapshot(
    request: SnapshotRequest,
    cave_block: str,
    aws_block: str | None,
    report: FailureReport,
) -> SnapshotSummary:
    """The flow's recipe: validate, plan, do, report (``report`` learns names on the way)."""
    datastack = request.datastack or load_cave(cave_block).datastack_name
    if not datastack:
        raise CaveInputError("no datastack given and the CAVE block names none")
    report.inputs["datastack"] = datastack
    # validate everything before the first write
    aws = storage.load_aws(aws_block)
    plan = check_request(request, cave_block, datastack, aws)
    vmeta = plan.version
    version = int(vmeta["version"])

    root = snapshot_root(request.destination, datastack, version)
    report.inputs["version"] = version
    notices = announce_notices(table_notices(plan.tables[t] for t in plan.wanted), report)
    # plan and do under the snapshot's claim: overlapping runs on the same version and
    # destination write its files and manifest one after the other; the later ones skip the
    # tables the first one finished (checksums verified).
    with exclusive("cave-snapshot", datastack, f"v{version}", root):
        manifest = new_manifest(root, datastack, version, vmeta, request, cave_block, aws)
        done, todo = plan_tables(root, manifest, plan.wanted, request, aws)
        futures, started = start_parts(request, cave_block, datastack, plan, root, todo, aws_block)
        written, problems = finish_tables(
            root, manifest, plan, request, futures, started, todo, aws, report
        )
        manifest_uri = manifest.write(root, aws)
        rows_out = sorted(done + written, key=lambda r: r.table)
        summary = SnapshotSummary(
            datastack=datastack,
            version=version,
            version_timestamp=vmeta.get("time_stamp"),
            manifest=manifest_uri,
            rows=sum(r.rows for r in rows_out),
            tables=rows_out,
        )
        # the artifacts (API round trips) are published while the claim is being released
        published = _in_background(report_snapshot, summary, root, manifest, notices)
    published.result()
    if problems:
        raise SnapshotVerificationError(
            "row counts differ from the server's:\n  " + "\n  ".join(problems)
        )
    return summary


def _in_background(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """Start ``fn(*args)`` in a thread of its own, in a copy of this thread's context.

    The copy carries the flow run's context, so what ``fn`` publishes (artifacts, logs) is
    attached to this run. The returned future gives its result or raises its error.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurodata-report")
    try:
        return pool.submit(contextvars.copy_context().run, fn, *args)
    finally:
        pool.shutdown(wait=False)


def check_request(
    request: SnapshotRequest, cave_block: str, datastack: str, aws: AwsCredentials | None = None
) -> SnapshotPlan:
    """Version, tables, permissions, partition plans and destination, before any write.

    One set-up task (`plan_snapshot`) does the CAVE side, so the partitions start one task
    run after the flow does.
    """
    plan = plan_snapshot(
        cave_block, datastack, request.version, request.tables, request.rows_per_part
    )
    _check_destination(request.destination, aws)
    return plan


def new_manifest(
    root: str,
    datastack: str,
    version: int,
    vmeta: dict[str, Any],
    request: SnapshotRequest,
    cave_block: str,
    aws: AwsCredentials | None = None,
) -> Manifest:
    """The manifest to write: the one on disk for this version (its tables kept), refreshed."""
    found = Manifest.read(root, aws)
    if found is None or found.version != version or found.datastack != datastack:
        found = None
    return Manifest(
        datastack=datastack,
        version=version,
        version_timestamp=vmeta.get("time_stamp"),
        expires_on=vmeta.get("expires_on"),
        server=load_cave(cave_block).server_address,
        desired_resolution=request.desired_resolution,
        tables=dict(found.tables) if found else {},
        updated=found.updated if found else None,
    )


def plan_tables(
    root: str,
    manifest: Manifest,
    wanted: list[str],
    request: SnapshotRequest,
    aws: AwsCredentials | None = None,
) -> tuple[list[TableSnapshot], list[str]]:
    """``(skipped, todo)``: tables already in the manifest with intact files, and the rest."""
    logger = get_run_logger()
    skipped: list[TableSnapshot] = []
    todo: list[str] = []
    for table in wanted:
        entry = manifest.tables.get(table)
        if entry is not None and manifest.is_intact(root, table, request.desired_resolution, aws):
            logger.info("%s: already snapshotted (checksums match); skipped", table)
            skipped.append(TableSnapshot.of(table, "skipped", entry))
        else:
            todo.append(table)
    return skipped, todo


def start_parts(
    request: SnapshotRequest,
    cave_block: str,
    datastack: str,
    plan: SnapshotPlan,
    root: str,
    todo: list[str],
    aws_block: str | None = None,
) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """Submit the part-writing tasks of every table to write; ``(futures, started)``.

    On the flow's thread pool a table's parts (one file each) are dealt into one task of
    consecutive parts per thread, so every thread writes a share of the table and the flow
    pays one task run per thread, not one per file (see `snapshot_table_parts`). On a
    distributed task runner (Dask) each part is a task of its own, to spread over the workers.
    """
    storage.ensure_dir(root)
    slots = _task_slots()
    version = int(plan.version["version"])
    started: dict[str, float] = {}
    futures: dict[str, list[Any]] = defaultdict(list)
    for table in todo:
        started[table] = time.monotonic()
        ranges = plan.parts[table].ranges
        cuts = plan.parts[table].cuts or [[] for _ in ranges]
        parts = [
            SnapshotPart(
                id_range=id_range,
                target=storage.join(root, table, f"part-{i:05d}.parquet"),
                cuts=part_cuts,
            )
            for i, (id_range, part_cuts) in enumerate(zip(ranges, cuts, strict=True))
        ]
        names: dict[str, str] = {}
        groups, first = deal_parts(parts, slots or len(parts)), 1
        for group in groups:
            names[group[0].target] = _group_name(table, group, first, len(parts))
            first += len(group)
        # One task variant per table, named per group from its first target when it starts:
        # `with_options` costs milliseconds, too many to pay per task in the flow's thread.
        task = snapshot_table_parts.with_options(task_run_name=_run_name_of(names))
        for group in groups:
            futures[table].append(
                task.submit(
                    cave_block,
                    datastack,
                    version,
                    table,
                    group,
                    request.desired_resolution,
                    aws_block,
                )
            )
    return futures, started


def _task_slots() -> int | None:
    """Threads of this flow run's thread-pool task runner; None for any other runner."""
    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    if not isinstance(runner, ThreadPoolTaskRunner):
        return None
    # Prefect keeps the pool size private; a runner without it gets the flow's own default
    threads = getattr(runner, "_max_workers", TASK_THREADS)
    return threads if isinstance(threads, int) and 0 < threads < 1024 else None


def deal_parts(parts: list[SnapshotPart], tasks: int) -> list[list[SnapshotPart]]:
    """``parts`` cut into at most ``tasks`` runs of consecutive parts, sizes differing by one."""
    count = min(len(parts), tasks)
    size, extra = divmod(len(parts), count)
    groups, start = [], 0
    for index in range(count):
        stop = start + size + (1 if index < extra else 0)
        groups.append(parts[start:stop])
        start = stop
    return groups


def _group_name(table: str, group: list[SnapshotPart], first: int, total: int) -> str:
    """``snapshot synapses parts 5-8/16 (ids 1000000-1999999)`` (``part 1/1`` for one part);
    ``first`` is the group's first part number (from 1), ``total`` the table's part count."""
    last = first + len(group) - 1
    numbers = f"part {first}" if first == last else f"parts {first}-{last}"
    span = _span([group[0].id_range[0], group[-1].id_range[1]])
    return f"snapshot {table} {numbers}/{total} (ids {span})"


def _run_name_of(names: dict[str, str]) -> Callable[..., str]:
    """A ``task_run_name`` callable: the name of the group whose first part is ``parts[0]``."""

    def run_name(parameters: dict[str, Any]) -> str:
        return names[parameters["parts"][0].target]

    return run_name


def _span(id_range: list[int | None]) -> str:
    lo, hi = id_range
    return f"{'...' if lo is None else lo}-{'...' if hi is None else hi - 1}"


def finish_tables(
    root: str,
    manifest: Manifest,
    plan: SnapshotPlan,
    request: SnapshotRequest,
    futures: dict[str, list[Any]],
    started: dict[str, float],
    todo: list[str],
    aws: AwsCredentials | None = None,
    report: FailureReport | None = None,
) -> tuple[list[TableSnapshot], list[str]]:
    """Verify each table's row count, record it in the manifest (rewritten after each table).

    ``report`` (the run's failure report) is told which table is being finished, so a failed
    partition names it.
    """
    logger = get_run_logger()
    written: list[TableSnapshot] = []
    problems: list[str] = []
    metas = plan.tables
    expected = {table: plan.parts[table].rows for table in todo}
    for table in todo:
        if report is not None:
            report.inputs["table"] = f"{table} ({len(plan.parts[table].ranges)} part(s))"
        parts = [part for f in futures[table] for part in f.result()]
        files = [p for p in parts if p["path"]]
        rows = sum(p["rows"] for p in parts)
        if rows != expected[table]:
            problems.append(f"{table}: wrote {rows} rows but the server counts {expected[table]}")
            continue
        entry = TableEntry(
            rows=rows,
            expected_rows=expected[table],
            schema_type=metas[table].get("schema_type"),
            voxel_resolution=metas[table].get("voxel_resolution"),
            reference_table=metas[table].get("reference_table") or None,
            desired_resolution=request.desired_resolution,
            arrow_schema=_schema_of(files[0]["path"], aws) if files else [],
            files=[
                SnapshotFile(
                    path=f"{table}/{p['path'].rsplit('/', 1)[-1]}",
                    rows=p["rows"],
                    sha256=p["sha256"],
                    bytes=p["bytes"],
                    id_range=p["id_range"],
                )
                for p in files
            ],
        )
        manifest.record(table, entry)
        manifest.write(root, aws)
        seconds = round(time.monotonic() - started[table], 3)
        written.append(TableSnapshot.of(table, "written", entry, seconds))
        logger.info("%s: %d rows in %d file(s)", table, rows, len(files))
    return written, problems


def report_snapshot(
    summary: SnapshotSummary, root: str, manifest: Manifest, notices: str = ""
) -> None:
    """Publish the tables and their files inline (counts and checksums), paths as text.

    ``notices`` is the markdown section of the table owners' notices (`announce_notices`).
    """
    publish_table(
        ARTIFACT_KEY,
        [r.model_dump() for r in summary.tables],
        f"Snapshot of {summary.datastack} v{summary.version} under {root}",
    )
    files = [
        {
            "table": table,
            "file": item.path,
            "rows": item.rows,
            "bytes": item.bytes,
            "ids": _span(item.id_range),
            "sha256": item.sha256,
        }
        for table, entry in sorted(manifest.tables.items())
        for item in entry.files
    ]
    lines = [
        f"# Snapshot {summary.datastack} v{summary.version}",
        "",
        f"Manifest: `{summary.manifest}` (paths below are relative to `{root}`).",
        "",
        *([notices] if notices else []),
        "| table | status | rows | server rows | files | bytes |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r.table} | {r.status} | {r.rows:,} | {r.expected_rows:,} | {r.files} | "
            f"{r.bytes:,} |"
            for r in summary.tables
        ],
        "",
        "## Files",
        "",
        "| table | file | rows | ids | bytes | sha256 |",
        "|---|---|---|---|---|---|",
        *[
            f"| {f['table']} | `{f['file']}` | {f['rows']:,} | {f['ids']} | {f['bytes']:,} | "
            f"`{f['sha256']}` |"
            for f in files
        ],
    ]
    publish_markdown(
        f"{ARTIFACT_KEY}-manifest",
        "\n".join(lines) + "\n",
        f"Manifest of the snapshot of {summary.datastack} v{summary.version}",
    )
