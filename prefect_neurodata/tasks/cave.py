"""Retryable Prefect tasks over the CAVE services, one batch or partition per task.

Every task takes the `CaveCredentials` block (or, better, its saved *name*) and gets its
`CAVEclient` from the process: a saved block is read once per flow run, and a client is built
once per flow run and worker thread (keyed by the block's settings and a hash of its token),
so partition tasks skip the repeated block reads and client set-up. No live client or token
crosses a task boundary as a parameter or result: results are small, secret-free values
(counts, ids, paths, checksums). Bulk data moves as files: a snapshot partition is written to
Parquet by the task that fetched it.

Retries: the HTTP core already retries transient failures of idempotent requests; the task
level adds retries (`TASK_RETRIES`) for transient errors only (`transient_only`), so a schema
error, an unknown table or a missing permission fails at once.

Caching: reads of a *frozen* materialization version (tables, row counts, partition plans)
use ``INPUTS + TASK_SOURCE``: a version never changes, so a rerun reuses them. Everything else,
and every write, uses ``NONE``.

Tags: ``cave`` on every task, ``write`` on tasks that change CAVE, so operators can set
concurrency limits (``prefect concurrency-limit create cave 8``).

Example:
    ```python
    from prefect import flow
    from prefect_neurodata.tasks.cave import count_version_rows, resolve_materialization_version

    @flow
    def rows(table: str) -> int:
        meta = resolve_materialization_version("cave", "minnie65_public", None)
        return count_version_rows("cave", "minnie65_public", meta["version"], table)
    ```
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NONE, TASK_SOURCE

from prefect_neurodata.blocks.cave import CaveCredentials
from prefect_neurodata.clients.cave import frameworkclient as _frameworkclient  # noqa: F401
from prefect_neurodata.clients.cave.annotation_rows import MAX_ANNOTATIONS_PER_REQUEST
from prefect_neurodata.clients.http import HttpClient, ServiceError
from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks._common import TASK_RETRIES, TASK_RETRY_DELAYS, transient_only
from prefect_neurodata.tasks.annotation_ledger import (
    ChunkEntry,
    current_run,
    read_entry,
    write_entry,
)

# (The client package loads its modules, and pandas, lazily; the import of ``frameworkclient``
# above pays that one-off cost at import instead of inside the first task of a run.)

Cave = str | CaveCredentials

MAX_CHUNK = MAX_ANNOTATIONS_PER_REQUEST
"""The annotation engine's limit of annotations per request (413 above it)."""

DEFAULT_ROWS_PER_PART = 100_000
"""Rows per snapshot partition task: well under the server's 200,000-row limit."""

_RETRYING: dict[str, Any] = {
    "retries": TASK_RETRIES,
    "retry_delay_seconds": TASK_RETRY_DELAYS,
    "retry_jitter_factor": 0.3,
    "retry_condition_fn": transient_only,
}
_LIVE = {**_RETRYING, "cache_policy": NONE}
_FROZEN = {**_RETRYING, "cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}


class CaveInputError(ValueError):
    """A request names something CAVE does not have (datastack, version, table, schema)."""


class CavePermissionError(PermissionError):
    """The token lacks a permission the work needs (checked before any write)."""


class ChunkReconcileError(RuntimeError):
    """A chunk whose answer was lost cannot be proven landed or not landed.

    Raised instead of resending, so nothing is ever written twice; the message says what was
    found. Typical cause: another writer changed the table while the chunk was in flight.
    """


# A saved block is read from the Prefect API once per flow run (each read is an API round
# trip, slow when several partition tasks start at once), not once per task. The scope is the
# flow run, so a block re-saved between runs is always seen by the next run.
_BLOCKS: OrderedDict[tuple[str, str], CaveCredentials] = OrderedDict()
_BLOCKS_LOCK = threading.Lock()
_BLOCKS_MAX = 16
# Clients are reused by the tasks of one flow run on the same thread (clients are not shared
# across threads); the key carries a hash of the token, never the token.
_CLIENTS = threading.local()
_CLIENTS_MAX = 8


def load_cave(block: Cave) -> CaveCredentials:
    """The CAVE block itself, or the saved block of that name (read once per flow run)."""
    if isinstance(block, CaveCredentials):
        return block
    scope = current_run()
    if scope is None:
        return CaveCredentials.load(block)
    key = (scope, block)
    with _BLOCKS_LOCK:
        cached = _BLOCKS.get(key)
    if cached is not None:
        return cached
    loaded = CaveCredentials.load(block)
    with _BLOCKS_LOCK:
        _BLOCKS[key] = loaded
        while len(_BLOCKS) > _BLOCKS_MAX:
            _BLOCKS.popitem(last=False)
    return loaded


def _client_key(block: CaveCredentials, datastack: str | None, version: int | None) -> tuple:
    token = block.token.get_secret_value() if block.token else ""
    return (
        block.server_address,
        datastack or block.datastack_name,
        version,
        hashlib.sha256(token.encode()).hexdigest(),
        block.max_retries,
        block.pool_maxsize,
        tuple(block.desired_resolution or ()),
        block.request_timeout,
    )


def _client(block: Cave, datastack: str | None, version: int | None = None) -> Any:
    creds = load_cave(block)
    scope = current_run()
    if scope is None:
        return creds.get_client(datastack_name=datastack, version=version)
    if getattr(_CLIENTS, "scope", None) != scope:
        _CLIENTS.scope = scope
        _CLIENTS.cache = OrderedDict()
    cache: OrderedDict[tuple, Any] = _CLIENTS.cache
    key = _client_key(creds, datastack, version)
    client = cache.get(key)
    if client is None:
        client = creds.get_client(datastack_name=datastack, version=version)
        cache[key] = client
        while len(cache) > _CLIENTS_MAX:
            cache.popitem(last=False)
    return client


def _json_safe(value: Any) -> Any:
    """Plain JSON values (datetimes as ISO strings, numpy scalars as Python)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


# ------------------------------------------------------------------------------ access checks
def _auth_get(client: Any, path: str) -> Any:
    """GET an auth-service path with the client's token (never logged)."""
    http = HttpClient(base_headers=client.auth.request_header, timeout=(10.0, 60.0))
    try:
        return HttpClient.json(http.request("GET", f"{client.auth.server_address}{path}"))
    finally:
        http.close()


@task(name="check-cave-access", tags=["cave"], **_LIVE)
def check_cave_access(cave: Cave, datastack: str, permission: str = "view") -> dict[str, Any]:
    """Check that the datastack exists and the block's token holds ``permission`` on it.

    Args:
        cave: CAVE block or its name.
        datastack: Datastack to check.
        permission: ``"view"`` (reads) or ``"edit"`` (annotation writes).

    Returns:
        ``{"user_id", "user", "admin", "dataset", "permissions"}`` (no token).

    Raises:
        CaveInputError: The info service does not know the datastack.
        CavePermissionError: The token is invalid or lacks the permission (or the terms of
            service of the dataset are not accepted).
    """
    if permission not in ("view", "edit"):
        raise ValueError(f"permission must be 'view' or 'edit', got {permission!r}")
    try:
        client = _client(cave, datastack)
    except ValueError as exc:
        raise CaveInputError(f"datastack {datastack!r}: {exc}") from None
    except ServiceError as exc:
        if exc.status_code in (401, 403):
            raise CavePermissionError(
                f"the CAVE token of block {_name(cave)!r} was refused by the info service "
                f"({exc.status_code}: {exc.server_message})"
            ) from None
        raise
    try:
        dataset = _auth_get(client, f"/auth/api/v1/service/datastack/table/{datastack}/dataset")
    except ServiceError as exc:
        if exc.status_code != 404:
            raise
        dataset = datastack
    try:
        me = _auth_get(client, "/auth/api/v1/user/cache")
    except ServiceError as exc:
        if exc.status_code in (401, 403):
            raise CavePermissionError(
                f"the CAVE token of block {_name(cave)!r} is invalid or expired "
                f"({exc.status_code}: {exc.server_message})"
            ) from None
        raise
    granted = sorted(me.get("permissions_v2", {}).get(dataset, []))
    admin = bool(me.get("admin"))
    if not admin and permission not in granted:
        tos = [t for t in me.get("missing_tos", []) if t.get("dataset_name") == dataset]
        hint = f"; accept the terms of service {tos[0].get('tos_name')!r} first" if tos else ""
        raise CavePermissionError(
            f"user {me.get('name')!r} (id {me.get('id')}) lacks the {permission!r} permission "
            f"on dataset {dataset!r} of datastack {datastack!r} (has: {granted or 'none'})"
            f"{hint}"
        )
    return {
        "user_id": me.get("id"),
        "user": me.get("name"),
        "admin": admin,
        "dataset": dataset,
        "permissions": granted,
    }


def _name(cave: Cave) -> str:
    return cave if isinstance(cave, str) else "<inline block>"


def table_permission_problem(
    meta: Mapping[str, Any], access: Mapping[str, Any], action: str
) -> str | None:
    """Why the caller may not ``action`` (``read``/``write``) a table, or None.

    PRIVATE tables are the owner's only; GROUP tables are left to the server (group
    membership is not visible to clients).
    """
    if access.get("admin"):
        return None
    level = meta.get(f"{action}_permission") or ("PUBLIC" if action == "read" else "PRIVATE")
    owner = meta.get("user_id")
    if level == "PRIVATE" and str(owner) != str(access.get("user_id")):
        return (
            f"table {meta.get('table_name')!r} has {action}_permission PRIVATE (owner: user id "
            f"{owner}); user {access.get('user')!r} (id {access.get('user_id')}) cannot "
            f"{action} it"
        )
    return None


# ------------------------------------------------------------------------------ materialization
@task(name="resolve-materialization-version", tags=["cave"], **_LIVE)
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
    client = _client(cave, datastack)
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
    return _json_safe(meta)


@task(name="list-version-tables", tags=["cave"], **_FROZEN)
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
    client = _client(cave, datastack)
    metas = client.materialize.get_tables_metadata(version=version)
    out = []
    for meta in metas:
        meta = dict(meta)
        keys = ("voxel_resolution_x", "voxel_resolution_y", "voxel_resolution_z")
        if all(k in meta for k in keys):
            meta["voxel_resolution"] = [meta.pop(k) for k in keys]
        out.append(_json_safe(meta))
    return sorted(out, key=lambda m: m["table_name"])


@task(name="count-version-rows", tags=["cave"], **_FROZEN)
def count_version_rows(
    cave: Cave, datastack: str, version: int, table: str, version_timestamp: str | None = None
) -> int:
    """Rows of ``table`` in a frozen version, as the server's materialized metadata says
    (``version_timestamp`` as in `list_version_tables`)."""
    client = _client(cave, datastack)
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


@task(name="plan-table-partitions", tags=["cave"], **_FROZEN)
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
    client = _client(cave, datastack)
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


@task(name="snapshot-table-part", tags=["cave"], **_LIVE)
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
    client = _client(cave, datastack)
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
            elif part.schema != schema:
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


# ------------------------------------------------------------------------------ annotations
@task(name="get-annotation-table", tags=["cave"], **_LIVE)
def get_annotation_table(cave: Cave, datastack: str, table: str) -> dict[str, Any] | None:
    """Live metadata of an annotation table, or None when the table does not exist."""
    client = _client(cave, datastack)
    try:
        return _json_safe(client.annotation.get_table_metadata(table))
    except ServiceError as exc:
        if exc.status_code == 404:
            return None
        raise


@task(name="get-annotation-schema", tags=["cave"], **_LIVE)
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


@task(name="count-annotations", tags=["cave"], **_LIVE)
def count_annotations(cave: Cave, datastack: str, table: str) -> int:
    """Live row count of an annotation table (all rows ever inserted, including deleted)."""
    return int(_client(cave, datastack).annotation.get_annotation_count(table))


@task(name="create-annotation-table", tags=["cave", "write"], **_LIVE)
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
    client = _client(cave, datastack)
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
    return _json_safe(meta)


# -- annotation uploads ---------------------------------------------------------------------
def _norm(value: Any) -> Any:
    """A comparable form of a value (numbers as floats, lists as tuples)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    return value


def fingerprint(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies an annotation's content: its fields as the server stores them.

    Nested points contribute their position only (supervoxel and root ids are looked up by the
    server, not stored from the request).
    """
    items: list[tuple[str, Any]] = []
    for key, value in record.items():
        if key in ("id", "valid"):
            continue
        if isinstance(value, Mapping):
            if "position" in value:
                items.append((f"{key}_position", _norm(value["position"])))
            continue
        items.append((key, _norm(value)))
    return tuple(sorted(items))


def _server_fingerprint(row: Mapping[str, Any], keys: set[str]) -> tuple[Any, ...]:
    return tuple(sorted((k, _norm(row.get(k))) for k in keys))


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
        if row is None or _server_fingerprint(row, {k for k, _ in want}) != want:
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


@task(name="check-annotation-ids", tags=["cave"], **_LIVE)
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
    ann = _client(cave, datastack).annotation
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


@task(name="upload-annotation-chunk", tags=["cave", "write"], **_LIVE)
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
    ann = _client(cave, datastack).annotation
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


# ------------------------------------------------------------------------------ chunkedgraph
@task(name="get-roots", tags=["cave"], **_LIVE)
def get_roots(
    cave: Cave,
    datastack: str,
    supervoxel_ids: list[int],
    timestamp: dt.datetime | None = None,
) -> list[int]:
    """Root ids of a batch of supervoxels at ``timestamp`` (now when None)."""
    client = _client(cave, datastack)
    return [int(x) for x in client.chunkedgraph.get_roots(supervoxel_ids, timestamp=timestamp)]


@task(name="get-latest-roots", tags=["cave"], **_LIVE)
def get_latest_roots(cave: Cave, datastack: str, root_id: int) -> list[int]:
    """The current root ids that descend from ``root_id`` (after merges and splits)."""
    client = _client(cave, datastack)
    return [int(x) for x in client.chunkedgraph.get_latest_roots(root_id)]


@task(name="is-latest-roots", tags=["cave"], **_LIVE)
def is_latest_roots(
    cave: Cave, datastack: str, root_ids: list[int], timestamp: dt.datetime | None = None
) -> list[bool]:
    """Whether each root id is current at ``timestamp`` (now when None)."""
    client = _client(cave, datastack)
    return [bool(x) for x in client.chunkedgraph.is_latest_roots(root_ids, timestamp=timestamp)]
