"""Flow 4: upload annotations to a CAVE table, validated first, exactly once, resumable.

Given a datastack, a table (created with its schema and metadata when missing) and a source
(a CSV or Parquet file, local or ``s3://``, or records in the parameters), the flow:

1. checks the token's ``edit`` permission and the table's write permission, reads the table's
   schema from the schema service, and validates **every** row against it, reporting every
   bad row (row number, field, value, problem), before anything is written;
2. creates the table when it is missing (from ``create``);
3. sends the rows in chunks of at most 10,000, one task per chunk, in ``insert``, ``update``
   (rows carry the ``id`` to replace) or ``delete`` (rows carry the ``id`` to delete) mode;
4. publishes counts, the id mapping (a table artifact, plus a CSV file for all of it) and
   returns a typed summary.

Source rows are flat: scalar fields by name, points as ``<pt>_position`` (a list, or a string
``"x,y,z"`` / ``"[x, y, z]"`` in CSV) or ``<pt>_position_x/_y/_z``, optionally
``<pt>_supervoxel_id`` / ``<pt>_root_id``. Records may also be nested
(``{"pt": {"position": [x, y, z]}}``). Row numbers in reports count data rows from 1.

**Exactly once.** Every upload has a durable ledger: a directory named after a content hash
of the source plus datastack, table, mode and chunk size (so the same upload always finds the
same ledger), next to the source (``.neurodata-ledger/``) or under ``ledger_location``. Before
a chunk is sent its entry is written ``pending`` (with the table's live row count for
inserts); once the server has answered, ``done`` with the new ids. A rerun skips ``done``
chunks. A chunk left ``pending`` was sent by a run whose answer was lost (a dropped connection,
a gateway error after the server committed, or a run killed mid-request); it is never resent
blindly: the task first finds out what landed. Inserts: if the live count did not move, nothing
landed and the chunk is resent; if it grew by exactly the chunk's size, the rows are fetched at
the ids the server assigns next (``id_hint``) and compared field by field with the chunk, and
if they match their ids are recorded without resending; anything else (another writer changed
the table meanwhile) stops with `ChunkReconcileError` rather than risk a duplicate. Updates:
old rows that already carry a ``superceded_id`` landed (that is their new id); only the rest
are resent. Deletes: rows already stamped ``deleted`` landed; only the rest are resent.

The request and summary models, the source loader and the ledger location live in
`prefect_neurodata.flows.annotation_request`; they are re-exported here.

Example:
    ```python
    from prefect_neurodata.flows.annotation_upload import (
        AnnotationUploadRequest, NewTable, upload_annotations,
    )

    summary = upload_annotations(
        AnnotationUploadRequest(
            datastack="minnie65_public",
            table="my_synapses",
            source="s3://lab-bucket/annotations/synapses.parquet",
            create=NewTable(schema_type="synapse", description="Manual synapses [A.B.]",
                            voxel_resolution=[4, 4, 40]),
        ),
        cave_block="neurodata-cave",
    )
    print(summary.rows, summary.id_map)
    ```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect_aws import AwsCredentials

from prefect_neurodata.clients.cave.annotation_rows import (
    AnnotationValidationError,
    RowProblem,
    SchemaFields,
    check_rows,
    fast_validator,
    nest_row,
    raise_problems,
)
from prefect_neurodata.constants import DEFAULT_CAVE_BLOCK
from prefect_neurodata.flows._artifacts import (
    FailureReport,
    Progress,
    failure_report,
    location_text,
    markdown_counts,
    publish_markdown,
    publish_table,
)
from prefect_neurodata.flows._cave_report import (
    announce_notices,
    cave_failure_advice,
    datastack_label,
    notices_markdown,
    table_notices,
)
from prefect_neurodata.flows._names import request_value
from prefect_neurodata.flows.annotation_request import (
    AnnotationUploadRequest,
    AnnotationUploadSummary,
    NewTable,
    ledger_dir_for,
    load_source,
)
from prefect_neurodata.flows.parameters import AwsBlockName, CaveBlockName
from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.annotation_ledger import (
    ChunkEntry,
    LedgerHeader,
    read_entry,
    write_header,
    write_id_map,
)
from prefect_neurodata.tasks.annotation_source import Source
from prefect_neurodata.tasks.cave import (
    CaveInputError,
    CavePermissionError,
    check_annotation_ids,
    check_cave_access,
    create_annotation_table,
    get_annotation_schema,
    get_annotation_table,
    load_cave,
    table_permission_problem,
    upload_annotation_chunk,
)
from prefect_neurodata.tasks.claims import exclusive

__all__ = [
    "AnnotationUploadRequest",
    "AnnotationUploadSummary",
    "AnnotationValidationError",
    "NewTable",
    "SchemaFields",
    "Source",
    "UploadProblem",
    "check_rows",
    "fast_validator",
    "ledger_dir_for",
    "load_source",
    "nest_row",
    "upload_annotations",
]

ARTIFACT_KEY = "cave-annotation-upload"
MAX_TABLE_ROWS = 2000
"""Id-map rows in the table artifact (the UI slows down above); the description says where the
rest is."""
FIRST_ROWS_SHOWN = 10
"""Id-map rows in the markdown summary."""

UploadProblem = RowProblem
"""One thing wrong with the input (row None: about a column or the whole source)."""


# ------------------------------------------------------------------------------ the steps
@dataclass
class Target:
    """The table an upload writes to, as checked before any write."""

    datastack: str
    table: str
    schema_type: str
    fields: SchemaFields
    exists: bool
    notices: dict[str, str] = field(default_factory=dict)
    """The table owner's notice (``{table: text}``; empty when none or the table is new)."""


def check_target(request: AnnotationUploadRequest, cave_block: str, datastack: str) -> Target:
    """Permissions, table and schema, checked before any write.

    Raises:
        CaveInputError: Missing table without ``create`` (or update/delete of one), a schema
            that differs from ``create``'s, or an unknown schema.
        CavePermissionError: No ``edit`` permission, or the table's write permission refuses.
    """
    access = check_cave_access(cave_block, datastack, "edit")
    meta = get_annotation_table(cave_block, datastack, request.table)
    if meta is None:
        if request.create is None:
            raise CaveInputError(
                f"table {request.table!r} does not exist in datastack {datastack!r}; pass "
                "create= (schema_type, description, voxel_resolution) to create it"
            )
        if request.mode != "insert":
            raise CaveInputError(
                f"table {request.table!r} does not exist, so there is nothing to {request.mode}"
            )
        schema_type = request.create.schema_type
    else:
        schema_type = meta["schema_type"]
        if request.create is not None and request.create.schema_type != schema_type:
            raise CaveInputError(
                f"table {request.table!r} exists with schema {schema_type!r}, but create= "
                f"asks for {request.create.schema_type!r}"
            )
        denied = table_permission_problem(meta, access, "write")
        if denied:
            raise CavePermissionError(denied)
    fields = SchemaFields.from_schema(get_annotation_schema(cave_block, schema_type))
    notices = table_notices([meta] if meta is not None else [])
    return Target(datastack, request.table, schema_type, fields, meta is not None, notices)


def check_source(request: AnnotationUploadRequest, source: Source, target: Target) -> None:
    """Every column and row against the schema and what the service can store.

    Raises:
        AnnotationValidationError: Listing every problem (row, field, value); also published
            as a table artifact. Nothing was written.
    """
    fields = target.fields
    allowed = fields.columns() | ({"id"} if request.mode != "insert" else set())
    problems: list[RowProblem] = [
        RowProblem(
            row=None,
            field=column,
            value="",
            problem=(
                "ids are assigned by the server on insert; use mode=update to replace rows"
                if column == "id"
                else f"not a field of schema {target.schema_type!r} "
                f"(fields: {sorted(fields.columns())})"
            ),
        )
        for column in source.columns
        if column not in allowed and not (column in fields.points and source.records is not None)
    ]
    seen: set[int] = set()
    for start, rows in source.batches(request.chunk_size):
        nested = source.annotations(rows, fields)
        problems += check_rows(rows, nested, fields, request.mode, start + 1, seen)
    report_problems(problems, source.name, request.table, target.schema_type)


def report_problems(problems: Sequence[RowProblem], source: str, table: str, schema: str) -> None:
    """Publish the problems as a table artifact and raise them (nothing when there are none)."""
    if not problems:
        return
    publish_table(
        f"{ARTIFACT_KEY}-problems",
        [p.model_dump() for p in problems],
        f"{len(problems)} problem(s) in {source}; nothing was written to {table}",
    )
    raise_problems(problems, f"{source} for table {table!r} (schema {schema!r})")


def check_ids_usable(
    request: AnnotationUploadRequest,
    source: Source,
    target: Target,
    cave_block: str,
    ledger: str,
    aws: AwsCredentials | None = None,
) -> None:
    """Update/delete: every id of a chunk not started yet exists and is current.

    Chunks a run already started are left to the ledger (their rows may be superseded or
    deleted by that run). Runs under the table's claim, so no other run changes them meanwhile.

    Raises:
        AnnotationValidationError: Naming the row and id of every unusable id.
    """
    if request.mode == "insert":
        return
    rows_of: dict[int, int] = {}
    for index, (start, rows) in enumerate(source.batches(request.chunk_size)):
        if read_entry(ledger, index, aws) is not None:
            continue
        for offset, record in enumerate(source.annotations(rows, target.fields)):
            rows_of[int(record["id"])] = start + offset + 1
    if not rows_of:
        return
    unusable = check_annotation_ids(
        cave_block, target.datastack, target.table, request.mode, list(rows_of)
    )
    problems = [
        RowProblem(rows_of[ident], "id", str(ident), f"cannot {request.mode}: {why}")
        for ident, why in sorted(unusable.items(), key=lambda item: rows_of[item[0]])
    ]
    report_problems(problems, source.name, target.table, target.schema_type)


def ensure_table(request: AnnotationUploadRequest, target: Target, cave_block: str) -> bool:
    """Create the table from ``request.create`` when it is missing; whether it was created."""
    if target.exists:
        return False
    assert request.create is not None
    spec = request.create
    create_annotation_table(
        cave_block,
        target.datastack,
        target.table,
        spec.schema_type,
        spec.description,
        spec.voxel_resolution,
        reference_table=spec.reference_table,
        read_permission=spec.read_permission,
        write_permission=spec.write_permission,
        notice_text=spec.notice_text,
    )
    return True


@dataclass
class ChunkOutcome:
    """What the chunk loop did."""

    entries: list[ChunkEntry] = field(default_factory=list)
    sent: int = 0
    skipped: int = 0
    resumed: int = 0


def upload_chunks(
    request: AnnotationUploadRequest,
    source: Source,
    target: Target,
    cave_block: str,
    ledger: str,
    aws_block: str | None = None,
    report: FailureReport | None = None,
) -> ChunkOutcome:
    """Send every chunk the ledger does not have ``done``, one task per chunk, in order.

    ``report`` (the run's failure report) is told which chunk is in flight, so a failure
    names it.
    """
    logger = get_run_logger()
    aws = storage.load_aws(aws_block)
    chunks = math.ceil(source.num_rows / request.chunk_size)
    progress = Progress(f"{ARTIFACT_KEY}-progress", chunks, "chunks done")
    outcome = ChunkOutcome()
    id_hint: int | None = None
    for index, (start, rows) in enumerate(source.batches(request.chunk_size)):
        span = f"rows {start + 1}-{start + len(rows)}"
        entry = read_entry(ledger, index, aws)
        if entry is not None and entry.done:
            logger.info(
                "chunk %d/%d (%s) already done by flow run %s", index + 1, chunks, span,
                entry.flow_run,
            )  # fmt: skip
            outcome.skipped += 1
        else:
            records = source.annotations(rows, target.fields)
            payload: list[Any] = [r["id"] for r in records] if request.mode == "delete" else records
            name = f"{request.mode} chunk {index + 1}/{chunks} ({span})"
            if report is not None:
                report.inputs["chunk"] = f"{index + 1} of {chunks} ({span})"
            entry = upload_annotation_chunk.with_options(task_run_name=name)(
                cave_block, target.datastack, target.table, request.mode, payload, ledger,
                index, start + 1, id_hint, aws_block,
            )  # fmt: skip
            logger.info("chunk %d/%d (%s) sent by this run", index + 1, chunks, span)
            outcome.sent += 1
            outcome.resumed += int(entry.resumed)
        if request.mode == "insert" and entry.ids:
            id_hint = max(entry.ids) + 1
        outcome.entries.append(entry)
        progress.advance()
    return outcome


def report_upload(
    request: AnnotationUploadRequest,
    source: Source,
    target: Target,
    ledger: str,
    outcome: ChunkOutcome,
    table_created: bool,
    aws: AwsCredentials | None = None,
) -> AnnotationUploadSummary:
    """Write the id map, publish what a person needs to see, and return the summary."""
    id_map_uri, id_rows = write_id_map(ledger, request.mode, outcome.entries, aws)
    summary = AnnotationUploadSummary(
        datastack=target.datastack,
        table=target.table,
        mode=request.mode,
        rows=source.num_rows,
        chunks=len(outcome.entries),
        chunks_sent=outcome.sent,
        chunks_skipped=outcome.skipped,
        chunks_resumed=outcome.resumed,
        table_created=table_created,
        ledger=ledger,
        id_map=id_map_uri,
    )
    shown = id_rows[:MAX_TABLE_ROWS]
    rest = (
        f" Showing the first {len(shown):,} of {len(id_rows):,} rows; all of them are in "
        f"`{id_map_uri}` (e.g. `pandas.read_csv(...)`)."
        if len(id_rows) > len(shown)
        else f" All {len(id_rows):,} rows are shown (also in `{id_map_uri}`)."
    )
    publish_table(ARTIFACT_KEY, shown, f"{_what(summary)}.{rest}")
    markdown = summary_markdown(summary, id_rows) + notices_markdown(target.notices)
    publish_markdown(f"{ARTIFACT_KEY}-summary", markdown, _what(summary))
    return summary


def _what(summary: AnnotationUploadSummary) -> str:
    return (
        f"{summary.mode} of {summary.rows:,} rows into {summary.table} ({summary.datastack}): "
        f"{summary.chunks_sent} chunk(s) sent, {summary.chunks_skipped} already done, "
        f"{summary.chunks_resumed} reconciled"
    )


def summary_markdown(summary: AnnotationUploadSummary, id_rows: Sequence[Mapping[str, Any]]) -> str:
    """The run's counts and the first rows of the id mapping, readable in the Prefect UI.

    Paths are shown as text (a browser cannot open ``file://`` or ``s3://`` links); only
    ``http(s)`` locations become links.
    """
    counts = {
        "datastack": summary.datastack,
        "table": summary.table,
        "mode": summary.mode,
        "rows": f"{summary.rows:,}",
        "chunks": summary.chunks,
        "chunks sent by this run": summary.chunks_sent,
        "chunks already done (skipped)": summary.chunks_skipped,
        "chunks reconciled after a lost answer": summary.chunks_resumed,
        "table created": "yes" if summary.table_created else "no",
        "id mapping rows": f"{len(id_rows):,}",
        "id mapping file": location_text(summary.id_map or ""),
        "ledger": location_text(summary.ledger),
    }
    first = list(id_rows[:FIRST_ROWS_SHOWN])
    notes = [f"## First {len(first)} of {len(id_rows):,} id mapping rows", ""]
    if first:
        columns = list(first[0])
        notes += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        notes += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in first]
    return markdown_counts(f"Annotation {summary.mode}: {summary.table}", counts, notes)


def _run_name() -> str:
    """Flow-run name: mode, table and datastack (e.g. ``insert my_synapses @ minnie65``)."""
    mode = request_value("mode") or "insert"
    return f"{mode} {request_value('table')} @ {datastack_label()}"


# ------------------------------------------------------------------------------ the flow
@flow(name="cave-annotation-upload", flow_run_name=_run_name, validate_parameters=True)
def upload_annotations(
    request: AnnotationUploadRequest,
    cave_block: CaveBlockName = DEFAULT_CAVE_BLOCK,
    aws_block: AwsBlockName | None = None,
) -> AnnotationUploadSummary:
    """Validate every row, then upload in chunks of at most 10,000, exactly once.

    Overlapping runs on the same table are safe: the write phase holds the table's claim
    (`prefect_neurodata.tasks.claims.exclusive`), so a second run waits, then finds the chunks
    done in the ledger and only reports them.

    Args:
        request: Table, mode, source (file/URI or records), table definition and chunk size.
        cave_block: The saved `CaveCredentials` block, by name or picked in the run form.
        aws_block: Name of a saved prefect-aws `AwsCredentials` block for ``s3://`` sources
            and ledgers; None uses the AWS environment (keys, profile, ``AWS_ENDPOINT_URL``).

    Returns:
        Counts, the ledger location and the id-mapping file.

    Raises:
        AnnotationValidationError: Rows violate the schema, hold values the service cannot
            store, or name ids that cannot be updated or deleted (every problem is listed;
            nothing was written).
        CaveInputError: Unknown datastack or schema, missing table without ``create``,
            unreadable source (nothing was written).
        CavePermissionError: The token lacks ``edit`` or the table's write permission
            (nothing was written).
        ChunkReconcileError: A chunk's lost answer could not be reconciled (see module doc).
    """
    inputs = {
        "datastack": request.datastack or f"(from block {cave_block})",
        "table": request.table,
        "mode": request.mode,
        "source": request.source or f"{len(request.records or [])} inline records",
        "chunk_size": request.chunk_size,
        "cave_block": cave_block,
        "aws_block": aws_block or "(AWS environment)",
    }
    with failure_report(ARTIFACT_KEY, "Annotation upload", inputs) as report:
        report.advice = cave_failure_advice(report, cave_block, aws_block, lambda: _rerun(report))
        return _upload(request, cave_block, aws_block, report)


def _rerun(report: FailureReport) -> str:
    """What a rerun does, for the failure artifact (names the ledger once it is known)."""
    ledger = report.inputs.get("ledger")
    if ledger is None:
        return "No chunk was sent yet, so a rerun starts from the first chunk."
    return (
        f"A rerun with the same parameters resumes from the ledger `{ledger}`: chunks it has "
        "as done are skipped, and a chunk whose answer was lost is checked, never sent twice."
    )


def _upload(
    request: AnnotationUploadRequest,
    cave_block: str,
    aws_block: str | None,
    report: FailureReport,
) -> AnnotationUploadSummary:
    """The flow's recipe: validate, plan, do, report (``report`` learns names on the way)."""
    logger = get_run_logger()
    datastack = request.datastack or load_cave(cave_block).datastack_name
    if not datastack:
        raise CaveInputError("no datastack given and the CAVE block names none")
    report.inputs["datastack"] = datastack

    # validate: everything that needs no claim, before the first write
    aws = storage.load_aws(aws_block)
    target = check_target(request, cave_block, datastack)
    announce_notices(target.notices, report)
    source = load_source(request, aws)
    if source.num_rows == 0:
        raise CaveInputError(f"source {source.name!r} has no rows")
    report.inputs["rows"] = source.num_rows
    check_source(request, source, target)

    # plan and do: under the table's claim, so overlapping runs never send a chunk twice
    key, ledger = ledger_dir_for(request, source, datastack)
    chunks = math.ceil(source.num_rows / request.chunk_size)
    with exclusive("cave-annotations", datastack, request.table):
        check_ids_usable(request, source, target, cave_block, ledger, aws)
        logger.info(
            "%d rows valid; %s in %d chunk(s); ledger %s",
            source.num_rows, request.mode, chunks, ledger,
        )  # fmt: skip
        table_created = ensure_table(request, target, cave_block)
        write_header(
            ledger,
            LedgerHeader(
                key=key, source=source.name, source_sha256=source.sha256, datastack=datastack,
                table=request.table, mode=request.mode, chunk_size=request.chunk_size,
                rows=source.num_rows, chunks=chunks,
            ),
            aws,
        )  # fmt: skip
        report.inputs["ledger"] = ledger
        outcome = upload_chunks(request, source, target, cave_block, ledger, aws_block, report)
        # report (the id map is written under the claim: it reads the ledger)
        return report_upload(request, source, target, ledger, outcome, table_created, aws)
