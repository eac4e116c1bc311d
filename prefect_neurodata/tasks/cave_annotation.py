"""CAVE annotation tasks: tables, schemas, id checks and exactly-once chunk uploads.

Example:
    ```python
    from prefect_neurodata.tasks.cave_annotation import get_annotation_table

    meta = get_annotation_table("neurodata-cave", "minnie65_public", "my_synapses")
    ```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import get_run_logger, task

from prefect_neurodata.clients.cave.annotation_rows import (
    MAX_ANNOTATIONS_PER_REQUEST,
    fingerprint,
    flat_fingerprint,
)
from prefect_neurodata.clients.http import ServiceError
from prefect_neurodata.errors import NeurodataError
from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.annotation_ledger import ChunkEntry, read_entry, write_entry
from prefect_neurodata.tasks.cave_common import (
    LIVE_OPTIONS,
    Cave,
    CaveInputError,
    cave_client,
    json_safe,
    load_cave,
)

MAX_CHUNK = MAX_ANNOTATIONS_PER_REQUEST
"""The annotation engine's limit of annotations per request (413 above it)."""


class ChunkReconcileError(RuntimeError, NeurodataError):
    """A chunk whose answer was lost cannot be proven landed or not landed.

    Raised instead of resending, so nothing is ever written twice; the message says what was
    found. Typical cause: another writer changed the table while the chunk was in flight.
    """


# ------------------------------------------------------------------------------ annotations
@task(name="get-annotation-table", tags=["cave"], **LIVE_OPTIONS)
def get_annotation_table(cave: Cave, datastack: str, table: str) -> dict[str, Any] | None:
    """Live metadata of an annotation table, or None when the table does not exist."""
    client = cave_client(cave, datastack)
    try:
        return json_safe(client.annotation.get_table_metadata(table))
    except ServiceError as exc:
        if exc.status_code == 404:
            return None
        raise


@task(name="get-annotation-schema", tags=["cave"], **LIVE_OPTIONS)
def get_annotation_schema(cave: Cave, schema_type: str) -> dict[str, Any]:
    """The JSON Schema of an annotation schema type from the schema service.

    Raises:
        CaveInputError: The schema service does not know ``schema_type``.
    """
    client = load_cave(cave).get_client(datastack_name=None)
    try:
        return client.schema.schema_definition(schema_type)
    except ServiceError as exc:
        if exc.status_code == 404:
            known = client.schema.get_schemas()
            raise CaveInputError(
                f"schema {schema_type!r} is not known to the schema service "
                f"({len(known)} schemas, e.g. {sorted(known)[:8]})"
            ) from None
        raise


@task(name="count-annotations", tags=["cave"], **LIVE_OPTIONS)
def count_annotations(cave: Cave, datastack: str, table: str) -> int:
    """Live row count of an annotation table (all rows ever inserted, including deleted)."""
    return int(cave_client(cave, datastack).annotation.get_annotation_count(table))


@task(name="create-annotation-table", tags=["cave", "write"], **LIVE_OPTIONS)
def create_annotation_table(
    cave: Cave,
    datastack: str,
    table: str,
    schema_type: str,
    description: str,
    voxel_resolution: Sequence[float],
    reference_table: str | None = None,
    read_permission: str = "PUBLIC",
    write_permission: str = "PRIVATE",
    notice_text: str | None = None,
) -> dict[str, Any]:
    """Create an annotation table unless it exists (safe to retry).

    Returns:
        The table's metadata after creation.
    """
    client = cave_client(cave, datastack)
    ann = client.annotation

    def existing() -> dict[str, Any] | None:
        try:
            return ann.get_table_metadata(table)
        except ServiceError as exc:
            if exc.status_code == 404:
                return None
            raise

    meta = existing()
    if meta is None:
        try:
            ann.create_table(
                table,
                schema_type,
                description,
                list(voxel_resolution),
                reference_table=reference_table,
                read_permission=read_permission,
                write_permission=write_permission,
                notice_text=notice_text,
            )
        except ServiceError as exc:
            # A lost answer to a create that landed comes back as "already exists".
            meta = existing()
            if meta is None:
                raise
            if exc.is_transient:
                get_run_logger().info("table %s was created by an earlier attempt", table)
        meta = meta or existing()
    if meta is None:
        raise RuntimeError(f"table {table!r} was created but cannot be read back")
    if meta.get("schema_type") not in (None, schema_type):
        raise CaveInputError(
            f"table {table!r} already exists with schema {meta.get('schema_type')!r}, "
            f"not {schema_type!r}"
        )
    return json_safe(meta)


# -- annotation uploads ---------------------------------------------------------------------
def _fetch_annotations(ann: Any, table: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    try:
        return ann.get_annotation(table, list(ids))
    except ServiceError as exc:
        if exc.status_code == 404:
            return []
        raise


def _find_inserted_ids(
    ann: Any, table: str, records: Sequence[Mapping[str, Any]], first_id: int
) -> list[int] | None:
    """The ids of ``records`` if they sit at ``first_id...`` with the same content, else None."""
    candidates = list(range(first_id, first_id + len(records)))
    rows = {int(r["id"]): r for r in _fetch_annotations(ann, table, candidates)}
    for ident, record in zip(candidates, records, strict=True):
        row = rows.get(ident)
        want = fingerprint(record)
        if row is None or flat_fingerprint(row, {k for k, _ in want}) != want:
            return None
    return candidates


def reconcile_chunk(
    ann: Any,
    table: str,
    mode: str,
    records: Sequence[Any],
    entry: ChunkEntry,
) -> tuple[list[Any], Any]:
    """After a chunk whose outcome is unknown: what is left to send, and what already landed.

    Returns:
        ``(remaining, landed)``: the records still to send and the result of the ones found
        applied (ids for insert/delete, ``{old: new}`` for update).

    Raises:
        ChunkReconcileError: The table changed in a way that does not prove either outcome.
    """
    if mode == "insert":
        now = int(ann.get_annotation_count(table))
        before = int(entry.count_before or 0)
        if now == before:
            return list(records), []
        hint = int(entry.id_hint or before + 1)
        if now - before == len(records):
            ids = _find_inserted_ids(ann, table, records, hint)
            if ids is not None:
                return [], ids
        raise ChunkReconcileError(
            f"chunk {entry.chunk} of {table!r} may have landed: the table grew from "
            f"{before} to {now} rows ({len(records)} were sent) but rows with the chunk's "
            f"content were not found at ids {hint}-{hint + len(records) - 1}. Another writer "
            "may have changed the table; check it before rerunning (nothing was resent)."
        )
    ids = [int(r["id"]) if isinstance(r, Mapping) else int(r) for r in records]
    rows = {int(r["id"]): r for r in _fetch_annotations(ann, table, ids)}
    if mode == "update":
        landed = {
            str(i): int(rows[i]["superceded_id"])
            for i in ids
            if i in rows and rows[i].get("superceded_id") is not None
        }
        remaining = [r for r, i in zip(records, ids, strict=True) if str(i) not in landed]
        return remaining, landed
    done = [i for i in ids if i in rows and rows[i].get("deleted") is not None]
    remaining = [i for i in ids if i not in set(done)]
    return remaining, done


def _send(ann: Any, table: str, mode: str, records: list[Any]) -> Any:
    if not records:
        return {} if mode == "update" else []
    if mode == "insert":
        return ann.post_annotation(table, records)
    if mode == "update":
        return ann.update_annotation(table, records)
    return ann.delete_annotation(table, records)


ID_CHECK_BATCH = 500
"""Ids fetched per request when checking that rows to update or delete exist."""


@task(name="check-annotation-ids", tags=["cave"], **LIVE_OPTIONS)
def check_annotation_ids(
    cave: Cave, datastack: str, table: str, mode: str, ids: list[int]
) -> dict[int, str]:
    """Which ids cannot be updated or deleted, and why (checked before any write).

    The annotations are fetched by id in batches (the service's get-annotations endpoint);
    an id it does not return does not exist. Updates also need the row to be current (not
    already superseded or deleted: the service answers 409); deletes need it not deleted yet.

    Returns:
        ``{id: problem}`` for every id that cannot be used (empty when all can).
    """
    ann = cave_client(cave, datastack).annotation
    problems: dict[int, str] = {}
    for start in range(0, len(ids), ID_CHECK_BATCH):
        group = ids[start : start + ID_CHECK_BATCH]
        rows = {int(r["id"]): r for r in _fetch_annotations(ann, table, group)}
        for ident in group:
            row = rows.get(ident)
            if row is None:
                problems[ident] = f"no annotation with this id in table {table!r}"
            elif row.get("superceded_id") is not None:
                problems[ident] = f"already superseded by annotation {row['superceded_id']}"
            elif row.get("deleted") is not None:
                problems[ident] = f"already deleted ({row['deleted']})"
    return problems


@task(name="upload-annotation-chunk", tags=["cave", "write"], **LIVE_OPTIONS)
def upload_annotation_chunk(
    cave: Cave,
    datastack: str,
    table: str,
    mode: str,
    records: list[Any],
    ledger_dir: str,
    chunk_index: int,
    first_row: int,
    id_hint: int | None = None,
    aws_block: str | None = None,
) -> ChunkEntry:
    """Send one chunk (at most 10,000 rows) exactly once, recording it in the ledger.

    The ledger entry (`prefect_neurodata.tasks.annotation_ledger`) moves from ``pending``
    (written *before* the request, with the live row count for inserts) to ``done`` (written
    after the server acknowledged, with the new ids). A chunk found ``done`` is skipped. A chunk
    found ``pending`` was sent by an attempt whose answer was lost (or that died), so it is
    reconciled before anything is resent (`reconcile_chunk`): inserted rows are found by the
    table count and their content at the expected ids, updates by their old rows'
    ``superceded_id``, deletes by the rows' ``deleted`` stamp. Only what provably did not land
    is sent again. The caller holds the table's claim, so no other run writes meanwhile.

    Args:
        cave: CAVE block or its name.
        datastack: Datastack.
        table: Annotation table.
        mode: ``insert``, ``update`` or ``delete``.
        records: Nested annotation dicts (insert/update) or ids (delete).
        ledger_dir: Directory (local or ``s3://``) of this upload's ledger.
        chunk_index: Position of the chunk in the upload.
        first_row: Source row number of the chunk's first record (for reports).
        id_hint: First id the server is expected to assign (insert), if known.
        aws_block: Name of an `AwsCredentials` block for an ``s3://`` ledger (None: the AWS
            environment).

    Returns:
        The ``done`` `ChunkEntry`: ``ids`` (insert/delete) or ``id_map`` (update), ``resumed``
        (reconciled after a lost answer) and the flow run that sent it.
    """
    if mode not in ("insert", "update", "delete"):
        raise ValueError(f"mode must be insert, update or delete, got {mode!r}")
    if not 0 < len(records) <= MAX_CHUNK:
        raise ValueError(f"a chunk holds 1 to {MAX_CHUNK} records, got {len(records)}")
    logger = get_run_logger()
    aws = storage.load_aws(aws_block)
    entry = read_entry(ledger_dir, chunk_index, aws)
    if entry is not None and entry.done:
        return entry
    ann = cave_client(cave, datastack).annotation
    rows = [first_row, first_row + len(records) - 1]
    resumed = False
    landed: Any = {} if mode == "update" else []
    remaining = list(records)
    if entry is not None:
        remaining, landed = reconcile_chunk(ann, table, mode, records, entry)
        resumed = True
        logger.info(
            "chunk %d of %s was sent by run %s without an answer: %d rows had landed, %d to send",
            chunk_index,
            table,
            entry.flow_run,
            len(records) - len(remaining),
            len(remaining),
        )
    if remaining:
        pending = ChunkEntry(status="pending", chunk=chunk_index, mode=mode, rows=rows)  # type: ignore[arg-type]
        if mode == "insert":
            # A partial insert never happens (one request, one transaction), so the chunk
            # is either all there or not at all.
            pending.count_before = int(ann.get_annotation_count(table))
            pending.id_hint = id_hint
        write_entry(ledger_dir, pending, aws)
        result = _send(ann, table, mode, remaining)
        if mode == "update":
            landed = {**landed, **{str(k): int(v) for k, v in dict(result).items()}}
        else:
            landed = [*landed, *[int(i) for i in result]]
    done = ChunkEntry(status="done", chunk=chunk_index, mode=mode, rows=rows, resumed=resumed)  # type: ignore[arg-type]
    if mode == "update":
        done.id_map = landed
    else:
        done.ids = landed
    return write_entry(ledger_dir, done, aws)
