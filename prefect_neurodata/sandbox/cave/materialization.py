"""Materialization engine stand-in (``{me}/materialize``; API v2 and v3; server "5.26.4").

Versions are created by the sandbox admin endpoint ``POST /__sandbox__/materialize`` (or
:func:`materialize`). Creating a version freezes every live annotation table as it was at the
version's timestamp: rows valid at T, supervoxel ids (looked up from positions at write time) and
root ids computed by the chunkedgraph model at T. Views are frozen alongside. Frozen tables are
stored as Arrow chunks in the database (see ``store``) and queried with the vectorised engine in
``query``; see those modules for the layout choice and the filter semantics.

Decisions where the reference leaves a choice:

* An expired version (``expires_on`` in the past; its frozen data is dropped) answers **410**
  ``{"message": "This materialization version is not available"}`` on table, view and query
  routes, like the flat-model path of the real server; it stays listed with
  ``versions?expired=True`` with ``valid=false, status=EXPIRED``. The newest valid version never
  expires (the real expiry job's rule); the real ``delete_threshold`` of 5 is not applied.
* ``filter_notin_dict`` is applied with real SQL NOT IN semantics (not the 5.26.x bug that drops
  it).
* Spatial boxes with min >= max and regex filters on non-string columns answer 500 as the real
  server does; every other malformed request is a 400 naming the field.
* ``live_live_query`` supports one join (``join_tables`` with at most one entry); with no
  ``suffixes`` the colliding columns get ``x``/``y`` like a join query.

Example:
    POST {me}/materialize/api/v3/datastack/minnie_sandbox/version/1/table/synapses/query
    ?return_pyarrow=True&arrow_format=True&split_positions=True
    body {"filter_in_dict": {"synapses": {"pre_pt_root_id": [..]}}, "limit": 200000}
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from prefect_neurodata.sandbox.cave import annotation, arrowio, query, store
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError
from prefect_neurodata.sandbox.cave.query import Source
from prefect_neurodata.sandbox.cave.store import Field

SERVER_VERSION = "5.26.4"
API_VERSIONS = [2, 3]
QUERY_LIMIT_SIZE = 200_000
LIMIT_ENV = "NEURODATA_SANDBOX_CAVE_QUERY_LIMIT"
DEFAULT_DAYS_TO_EXPIRE = 7
EXPIRED_MESSAGE = "This materialization version is not available"

router = APIRouter()

_SIMPLE_KEYS = set(query.FILTER_KINDS) | {"select_columns", "offset", "limit", "desired_resolution"}
_COMPLEX_KEYS = _SIMPLE_KEYS | {"tables", "select_column_map", "suffixes", "suffix_map"}
_LIVE_KEYS = set(query.FILTER_KINDS) | {
    "table",
    "timestamp",
    "join_tables",
    "select_columns",
    "suffixes",
    "offset",
    "limit",
    "desired_resolution",
}


# --------------------------------------------------------------------------- helpers


def limit_size(world: Any) -> int:
    """The server's row limit: ``world.query_limit_size`` (set by ``PUT /__sandbox__/query_limit``
    or by in-process tests), else env ``NEURODATA_SANDBOX_CAVE_QUERY_LIMIT``, else 200,000."""
    value = getattr(world, "query_limit_size", None) or os.environ.get(LIMIT_ENV)
    return int(value or QUERY_LIMIT_SIZE)


def _posix(value: dt.datetime) -> float:
    return store.naive_utc(value).replace(tzinfo=dt.timezone.utc).timestamp()


def _from_posix(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).replace(tzinfo=None)


def _bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("true", "1", "yes", "y", "t", "on")


def _json(value: Any, status_code: int = 200) -> Response:
    return annotation.json_response(value, status_code)


def parse_timestamp(value: Any, name: str = "timestamp") -> dt.datetime:
    """ISO string (aware or naive-as-UTC) or POSIX seconds -> naive UTC datetime."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _from_posix(float(value))
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            return store.naive_utc(dt.datetime.fromisoformat(text))
        except ValueError:
            pass
    raise CaveHTTPError(400, f"{name}: not a valid ISO timestamp: {value!r}")


# --------------------------------------------------------------------------- frozen data


def frozen_arrow(
    world: Any,
    meta: dict[str, Any],
    columns: dict[str, list[Any]],
    at: dt.datetime | None,
) -> pa.Table:
    """Build the frozen (query) layout of a table from live column lists.

    Layout: ``id``, ``valid``, then the schema fields in order (a bound point contributes
    ``<pt>_supervoxel_id`` and ``<pt>_root_id``), then every point's ``<pt>_position_x/y/z``.
    Root ids are computed at ``at`` (None: now) by the chunkedgraph model.
    """
    fields = store.table_fields(meta)
    n = len(columns["id"])
    out: dict[str, pa.Array] = {
        "id": pa.array(np.asarray(columns["id"], dtype=np.int64)),
        "valid": pa.array(np.ones(n, dtype=bool)),
    }
    cg = world.chunkedgraph
    ts = None if at is None else _posix(at)
    positions: dict[str, pa.Array] = {}
    for f in fields:
        if f.kind in ("bound_point", "point"):
            for a in "xyz":
                vals = np.asarray(columns[f"{f.name}_position_{a}"], dtype=np.float64)
                positions[f"{f.name}_position_{a}"] = pa.array(np.rint(vals).astype(np.int64))
            if f.kind == "bound_point":
                raw_sv = columns[f"{f.name}_supervoxel_id"]
                if not isinstance(raw_sv, np.ndarray):
                    raw_sv = [0 if v is None else v for v in raw_sv]
                sv = np.asarray(raw_sv, dtype=np.int64)
                if cg is None:
                    roots = np.zeros(n, dtype=np.int64)
                else:
                    roots = np.asarray(cg.get_roots(sv.astype(np.uint64), ts)).astype(np.int64)
                roots = np.where(sv == 1, 1, roots)  # lookup pending: sentinel stays 1
                out[f"{f.name}_supervoxel_id"] = pa.array(sv)
                out[f"{f.name}_root_id"] = pa.array(roots)
        elif f.kind in ("int", "user"):
            out[f.name] = pa.array(columns[f.name], type=pa.int64())
        elif f.kind == "float":
            out[f.name] = pa.array(columns[f.name], type=pa.float64()).cast(pa.float32())
        elif f.kind == "bool":
            vals = [None if v is None else bool(v) for v in columns[f.name]]
            out[f.name] = pa.array(vals, type=pa.bool_())
        else:
            out[f.name] = pa.array(columns[f.name], type=pa.string())
    out.update(positions)
    return pa.table(out)


def position_bases(fields: list[Field]) -> list[str]:
    """Model names (``<pt>_position``) of the point fields."""
    return [f"{f.name}_position" for f in fields if f.kind in ("bound_point", "point")]


def _resolution(meta: dict[str, Any]) -> tuple[float, float, float]:
    return (
        float(meta["voxel_resolution_x"]),
        float(meta["voxel_resolution_y"]),
        float(meta["voxel_resolution_z"]),
    )


def _encode_chunks(table: pa.Table) -> list[bytes]:
    out = []
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    for start in range(0, max(len(table), 1), store.CHUNK_ROWS):
        part = table.slice(start, store.CHUNK_ROWS)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=options) as w:
            w.write_table(part)
        out.append(sink.getvalue().to_pybytes())
    return out


class FrozenCache:
    """Per-process LRU of decoded frozen tables, bounded by bytes (frozen data is immutable, so a
    cached table is always valid; expiry drops a version's entries)."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], Source] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Source | None:
        """The cached source for ``key``, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[Any, ...], value: Source) -> None:
        """Cache ``value``; evicts least recently used tables beyond ``max_bytes``."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            total = sum(v.table.nbytes for v in self._items.values())
            while len(self._items) > 1 and total > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                total -= dropped.table.nbytes

    def drop_all(self) -> None:
        """Forget every cached table."""
        with self._lock:
            self._items.clear()

    def drop_version(self, db_key: str, datastack: str, version: int) -> None:
        """Forget the cached tables of one version."""
        with self._lock:
            for key in [k for k in self._items if k[:3] == (db_key, datastack, version)]:
                del self._items[key]


CACHE = FrozenCache()


def _db_key(world: Any) -> str:
    return str(world.engine.url)


def _cache_key(world: Any, version: int, kind: str, name: str) -> tuple[Any, ...]:
    return (_db_key(world), world.config.datastack, version, kind, name)


# --------------------------------------------------------------------------- versions


def expire_versions(world: Any, now: dt.datetime | None = None) -> None:
    """Mark versions past ``expires_on`` as expired and drop their frozen data.

    The newest valid version is never expired.
    """
    now = now or store.utcnow()
    v = store.mat_versions
    ds = world.config.datastack
    with world.engine.connect() as conn:
        rows = conn.execute(
            sa.select(v.c.version, v.c.expires_on)
            .where(v.c.datastack == ds, v.c.valid.is_(True))
            .order_by(v.c.version)
        ).all()
    if not rows:
        return
    newest = rows[-1][0]
    due = [r[0] for r in rows if r[1] is not None and r[1] < now and r[0] != newest]
    if not due:
        return
    with world.lock, world.engine.begin() as conn:
        for version in due:
            _drop_version_data(conn, world, version)
            conn.execute(
                sa.update(v)
                .where(v.c.datastack == ds, v.c.version == version)
                .values(valid=False, status="EXPIRED")
            )


def _drop_version_data(conn: sa.Connection, world: Any, version: int) -> None:
    ds = world.config.datastack
    ids = (
        conn.execute(
            sa.select(store.mat_tables.c.id).where(
                store.mat_tables.c.datastack == ds, store.mat_tables.c.version == version
            )
        )
        .scalars()
        .all()
    )
    if ids:
        conn.execute(sa.delete(store.mat_chunks).where(store.mat_chunks.c.mat_table_id.in_(ids)))
    CACHE.drop_version(_db_key(world), ds, version)


def expire_version(world: Any, version: int) -> dict[str, Any]:
    """Expire one version now (sandbox admin); returns its metadata."""
    v = store.mat_versions
    ds = world.config.datastack
    with world.lock, world.engine.begin() as conn:
        row = conn.execute(sa.select(v).where(v.c.datastack == ds, v.c.version == version)).first()
        if row is None:
            raise CaveHTTPError(404, f"version {version} not found in {ds}")
        _drop_version_data(conn, world, version)
        now = store.utcnow()
        conn.execute(
            sa.update(v)
            .where(v.c.datastack == ds, v.c.version == version)
            .values(valid=False, status="EXPIRED", expires_on=now)
        )
    return version_metadata(world, version)


def version_dict(row: Any) -> dict[str, Any]:
    """The AnalysisVersion dict of a version row."""
    r = row._mapping if hasattr(row, "_mapping") else row
    return {
        "id": r["id"],
        "datastack": r["datastack"],
        "version": r["version"],
        "time_stamp": store.iso(r["time_stamp"]),
        "valid": bool(r["valid"]),
        "expires_on": store.iso(r["expires_on"]),
        "parent_version": r["parent_version"],
        "status": r["status"],
        "is_merged": bool(r["is_merged"]),
    }


def version_metadata(world: Any, version: int) -> dict[str, Any]:
    """AnalysisVersion dict of ``version`` (404 when unknown)."""
    v = store.mat_versions
    ds = world.config.datastack
    with world.engine.connect() as conn:
        row = conn.execute(sa.select(v).where(v.c.datastack == ds, v.c.version == version)).first()
    if row is None:
        raise CaveHTTPError(404, f"version {version} not found in {ds}")
    return version_dict(row)


def materialize(
    world: Any,
    timestamp: dt.datetime | float | None = None,
    *,
    days_to_expire: float | None = DEFAULT_DAYS_TO_EXPIRE,
    expires_on: dt.datetime | None = None,
    rows_cache: dict[Any, Any] | None = None,
) -> int:
    """Create a new materialization version frozen at ``timestamp`` (default now).

    Args:
        world: The CAVE world.
        timestamp: Version timestamp (datetime, naive = UTC, or POSIX seconds).
        days_to_expire: ``expires_on = time_stamp + days_to_expire - 1 h`` (the real rule);
            None = never expires.
        expires_on: Explicit expiry (wins over ``days_to_expire``).
        rows_cache: Optional dict shared by several calls (seeding makes three versions): a
            table's live rows are read once when every version is at or after its last change.

    Returns:
        The new version number.

    Example:
        >>> version = materialize(world)  # doctest: +SKIP
    """
    if isinstance(timestamp, (int, float)):
        ts = _from_posix(float(timestamp))
    elif timestamp is None:
        ts = store.utcnow()
    else:
        ts = store.naive_utc(timestamp)
    if expires_on is not None:
        expiry: dt.datetime | None = store.naive_utc(expires_on)
    elif days_to_expire is not None:
        expiry = ts + dt.timedelta(days=float(days_to_expire)) - dt.timedelta(hours=1)
    else:
        expiry = None
    ds = world.config.datastack
    av = world.config.aligned_volume
    v = store.mat_versions
    with world.lock:
        store.ensure_schema(world.engine)
        with world.engine.begin() as conn:
            current = conn.execute(
                sa.select(sa.func.max(v.c.version)).where(v.c.datastack == ds)
            ).scalar()
            version = int(current or 0) + 1
            conn.execute(
                v.insert().values(
                    datastack=ds,
                    version=version,
                    time_stamp=ts,
                    valid=False,
                    expires_on=expiry,
                    parent_version=None,
                    status="RUNNING",
                    is_merged=True,
                )
            )
        sources: dict[str, Source] = {}
        with world.engine.connect() as conn:
            metas = (
                conn.execute(
                    sa.select(store.anno_tables)
                    .where(
                        store.anno_tables.c.aligned_volume == av,
                        store.anno_tables.c.deleted.is_(None),
                        store.anno_tables.c.created <= ts,
                    )
                    .order_by(store.anno_tables.c.table_name)
                )
                .mappings()
                .all()
            )
        for meta in metas:
            meta = dict(meta)
            fields = store.table_fields(meta)
            key = (meta["table_name"], meta["last_modified"])
            if rows_cache is not None and ts >= meta["last_modified"] and key in rows_cache:
                cols = rows_cache[key]  # no change since: the state at ts is the current one
            else:
                with world.engine.connect() as conn:
                    cols = store.read_live_rows(conn, meta["table_name"], fields, ts)
                if rows_cache is not None and ts >= meta["last_modified"]:
                    rows_cache[key] = cols
            table = frozen_arrow(world, meta, cols, ts)
            info = _mat_table_meta(world, meta, version)
            _store_frozen(world, version, meta["table_name"], "table", table, info)
            src = Source(meta["table_name"], table, position_bases(fields), _resolution(meta))
            sources[meta["table_name"]] = src
            CACHE.put(_cache_key(world, version, "table", meta["table_name"]), src)
        with world.engine.connect() as conn:
            view_defs = (
                conn.execute(sa.select(store.views).where(store.views.c.datastack == ds))
                .mappings()
                .all()
            )
        for vdef in view_defs:
            built = _build_view(world, dict(vdef), sources)
            if built is None:
                continue
            table, info = built
            _store_frozen(world, version, vdef["view_name"], "view", table, info)
        with world.engine.begin() as conn:
            conn.execute(
                sa.update(v)
                .where(v.c.datastack == ds, v.c.version == version)
                .values(valid=True, status="AVAILABLE")
            )
    return version


def _mat_table_meta(world: Any, meta: dict[str, Any], version: int) -> dict[str, Any]:
    return {
        "aligned_volume": world.config.aligned_volume,
        "schema": meta["schema_type"],
        "table_name": meta["table_name"],
        "valid": True,
        "created": store.iso(meta["created"]),
        "analysisversion_id": version,
        "schema_type": meta["schema_type"],
        "user_id": meta["user_id"],
        "description": meta["description"],
        "notice_text": meta["notice_text"],
        "reference_table": meta["reference_table"],
        "flat_segmentation_source": meta["flat_segmentation_source"],
        "voxel_resolution_x": meta["voxel_resolution_x"],
        "voxel_resolution_y": meta["voxel_resolution_y"],
        "voxel_resolution_z": meta["voxel_resolution_z"],
        "write_permission": meta["write_permission"],
        "read_permission": meta["read_permission"],
        "last_modified": store.iso(meta["last_modified"]),
        "segmentation_source": f"graphene://{world.config.pcg_table}",
        "pcg_table_name": world.config.pcg_table,
        "last_updated": store.iso(store.utcnow()),
        "_fields": meta["fields"],
    }


def _store_frozen(
    world: Any, version: int, name: str, kind: str, table: pa.Table, info: dict[str, Any]
) -> None:
    chunks = _encode_chunks(table)
    ds = world.config.datastack
    with world.engine.begin() as conn:
        res = conn.execute(
            store.mat_tables.insert().values(
                datastack=ds,
                version=version,
                table_name=name,
                kind=kind,
                row_count=len(table),
                meta=info,
                created=store.utcnow(),
            )
        )
        mat_id = res.inserted_primary_key[0]
        conn.execute(
            store.mat_chunks.insert(),
            [{"mat_table_id": mat_id, "seq": i, "data": c} for i, c in enumerate(chunks)],
        )
        conn.execute(
            sa.update(store.mat_tables)
            .where(store.mat_tables.c.id == mat_id)
            .values(meta={**info, "id": mat_id})
        )


def _build_view(
    world: Any, vdef: dict[str, Any], sources: dict[str, Source]
) -> tuple[pa.Table, dict[str, Any]] | None:
    spec = dict(vdef["spec"])
    if "tables" in spec:
        (t1, c1), (t2, c2) = spec["tables"]
        if t1 not in sources or t2 not in sources:
            return None
        suffix_map = spec.get("suffix_map") or {t1: "", t2: "_" + t2}
        body = {k: v for k, v in spec.items() if k in query.FILTER_KINDS}
        res = query.join_query(
            sources[t1],
            sources[t2],
            c1,
            c2,
            body,
            suffixes=(suffix_map.get(t1, ""), suffix_map.get(t2, "")),
            select_map=spec.get("select_column_map"),
            limit_size=1 << 62,
            desired_resolution=None,
        )
        res_src = sources[t1]
    else:
        t = spec["table"]
        if t not in sources:
            return None
        body = {k: v for k, v in spec.items() if k in query.FILTER_KINDS}
        body = {k: {vdef["view_name"]: v.get(t, {})} for k, v in body.items()}
        src = sources[t]
        renamed = Source(vdef["view_name"], src.table, src.position_bases, src.resolution)
        if spec.get("select_columns"):
            body["select_columns"] = spec["select_columns"]
        res = query.simple_query(renamed, body, limit_size=1 << 62, desired_resolution=None)
        res_src = src
    table = res.table
    bases = sorted({p[:-2] for p in res.position_columns})
    info = {
        "table_name": vdef["view_name"],
        "description": vdef["description"],
        "datastack_name": world.config.datastack,
        "voxel_resolution_x": res_src.resolution[0],
        "voxel_resolution_y": res_src.resolution[1],
        "voxel_resolution_z": res_src.resolution[2],
        "notice_text": vdef["notice_text"],
        "live_compatible": bool(vdef["live_compatible"]),
        "_position_bases": bases,
    }
    return table, info


def define_view(
    world: Any,
    name: str,
    spec: dict[str, Any],
    description: str,
    *,
    notice_text: str | None = None,
    live_compatible: bool = False,
) -> None:
    """Define (or replace) a view; every later version freezes it.

    ``spec`` is either ``{"table": t, "select_columns": [...], <filter dicts keyed by t>}`` or
    ``{"tables": [[t1, c1], [t2, c2]], "select_column_map": {...}, "suffix_map": {...},
    <filter dicts>}``.
    """
    store.ensure_schema(world.engine)
    ds = world.config.datastack
    with world.engine.begin() as conn:
        conn.execute(
            sa.delete(store.views).where(
                store.views.c.datastack == ds, store.views.c.view_name == name
            )
        )
        conn.execute(
            store.views.insert().values(
                datastack=ds,
                view_name=name,
                description=description,
                notice_text=notice_text,
                live_compatible=live_compatible,
                spec=spec,
            )
        )


# --------------------------------------------------------------------------- lookups


def _check_datastack(world: Any, datastack: str) -> None:
    if datastack != world.config.datastack:
        raise CaveHTTPError(404, f"datastack {datastack} not found")


def _version_row(world: Any, version: int) -> dict[str, Any]:
    expire_versions(world)
    meta = version_metadata(world, version)
    if not meta["valid"]:
        raise CaveHTTPError(410, EXPIRED_MESSAGE)
    return meta


def _mat_row(world: Any, version: int, name: str, kind: str) -> dict[str, Any]:
    t = store.mat_tables
    with world.engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(t).where(
                    t.c.datastack == world.config.datastack,
                    t.c.version == version,
                    t.c.table_name == name,
                    t.c.kind == kind,
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        what = "table" if kind == "table" else "view"
        raise CaveHTTPError(
            404, f"{what} {name} not found in version {version} of {world.config.datastack}"
        )
    return dict(row)


def load_source(
    world: Any, version: int, name: str, kind: str = "table"
) -> tuple[Source, dict[str, Any]]:
    """The frozen table (cached) and its metadata row."""
    row = _mat_row(world, version, name, kind)
    key = _cache_key(world, version, kind, name)
    src = CACHE.get(key)
    if src is None:
        with world.engine.connect() as conn:
            blobs = (
                conn.execute(
                    sa.select(store.mat_chunks.c.data)
                    .where(store.mat_chunks.c.mat_table_id == row["id"])
                    .order_by(store.mat_chunks.c.seq)
                )
                .scalars()
                .all()
            )
        if not blobs:
            raise CaveHTTPError(410, EXPIRED_MESSAGE)
        parts = [pa.ipc.open_stream(b).read_all() for b in blobs]
        table = pa.concat_tables(parts).combine_chunks()
        meta = row["meta"]
        if kind == "table":
            bases = position_bases([Field.from_json(f) for f in meta["_fields"]])
        else:
            bases = list(meta.get("_position_bases", []))
        src = Source(name, table, bases, _resolution(meta))
        CACHE.put(key, src)
    return src, row


def public_meta(row: dict[str, Any]) -> dict[str, Any]:
    """Stored table/view metadata without the stand-in's private keys."""
    return {k: v for k, v in row["meta"].items() if not k.startswith("_")}


def _read_allowed(world: Any, user: Any, name: str) -> None:
    with world.engine.connect() as conn:
        meta = store.table_meta_row(conn, world.config.aligned_volume, name)
    if meta is not None:
        annotation.read_check(world, user, meta)


# --------------------------------------------------------------------------- responses


def _desired(
    body: dict[str, Any], api: int, default: tuple[float, float, float]
) -> list[float] | None:
    value = body.get("desired_resolution")
    if value is not None:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
        ):
            raise CaveHTTPError(
                400, f"desired_resolution must be a list of 3 numbers, got {value!r}"
            )
        if any(x <= 0 for x in value):
            raise CaveHTTPError(400, f"desired_resolution must be positive, got {value!r}")
    if api < 3:
        return None  # v2 servers never rescale; the client converts locally
    return [float(x) for x in (value if value is not None else default)]


def _check_keys(body: Any, allowed: set[str]) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise CaveHTTPError(400, "Request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        # marshmallow's unknown=RAISE message, keyed by field
        raise CaveHTTPError(
            400, f"Unknown field(s) in request body: { {k: ['Unknown field.'] for k in unknown} }"
        )
    return body


def render(
    request: Request,
    result: query.Result,
    *,
    extra_warnings: list[str] | None = None,
    send_resolution: bool,
) -> Response:
    """Encode a result as Arrow (default) or JSON with the real server's headers."""
    params = request.query_params
    accept = request.headers.get("accept-encoding")
    return_pyarrow = _bool(params.get("return_pyarrow"), True)
    arrow_format = _bool(params.get("arrow_format"), False)
    split = _bool(params.get("split_positions"), False)
    table = result.table
    positions = list(result.position_columns)
    warnings = list(result.warnings) + list(extra_warnings or [])
    if not _bool(params.get("direct_sql_pandas"), False):
        warnings.append(
            "Without direct_sql_pandas=True results stream through CSV and types may be mangled "
            "(booleans, numeric strings)"
        )
    if not split:
        table, positions = _merge_positions(table, positions)
    gzip_ok = arrowio.accepts_gzip(accept)
    if return_pyarrow:
        if not arrow_format:
            warnings.append(
                "Response is in pyarrow IPC format; pass arrow_format=True to request it explicitly"
            )
        codec = arrowio.ipc_codec(accept, _bool(params.get("ipc_compress"), True))
        body = arrowio.encode_stream(table, codec=codec, plain_columns=positions)
        media = arrowio.ARROW_MEDIA_TYPE
    else:
        df = table.to_pandas()
        body = df.to_json(orient="records").encode()
        media = "application/json"
    headers: dict[str, str] = {}
    if gzip_ok:
        body = arrowio.gzip_bytes(body)
        headers["Content-Encoding"] = "gzip"
    response = Response(body, media_type=media, headers=headers)
    for w in warnings:
        response.headers.append("Warning", w)
    if send_resolution and result.resolution is not None:
        for x in result.resolution:
            response.headers.append("dataframe_resolution", str(float(x)))
    response.headers.append("column_names", repr(result.column_names))
    return response


def _merge_positions(table: pa.Table, positions: list[str]) -> tuple[pa.Table, list[str]]:
    """``split_positions=false``: ``<base>_x/_y/_z`` -> one list column ``<base>``."""
    bases = []
    for p in positions:
        if p.endswith("_x") and p[:-2] not in bases:
            bases.append(p[:-2])
    for base in bases:
        cols = [table.column(f"{base}_{a}").combine_chunks() for a in "xyz"]
        flat = np.stack([c.to_numpy(zero_copy_only=False) for c in cols], axis=1).reshape(-1)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(flat), 3)
        i = table.column_names.index(f"{base}_x")
        table = table.drop_columns([f"{base}_{a}" for a in "xyz"])
        table = table.add_column(i, base, pa.array(arr.to_pylist(), pa.list_(arr.type.value_type)))
    return table, []


def _notices(*metas: dict[str, Any]) -> list[str]:
    out = []
    for meta in metas:
        text = meta.get("notice_text")
        if text:
            out.append(f"Table Owner Notice on {meta.get('table_name')}: {text}")
    return out


# --------------------------------------------------------------------------- query runners


def _query_flags(request: Request) -> tuple[bool, int | None]:
    params = request.query_params
    count = _bool(params.get("count"), False)
    sample = params.get("random_sample")
    if sample is not None:
        try:
            n = int(sample)
        except ValueError:
            raise CaveHTTPError(400, f"random_sample must be an integer, got {sample!r}") from None
        return count, n
    return count, None


def run_simple(
    request: Request, world: Any, user: Any, api: int, version: int, name: str, kind: str, body: Any
) -> Response:
    """Run a table or view query and render the response."""
    body = _check_keys(body, _SIMPLE_KEYS)
    _version_row(world, version)
    if kind == "table":
        _read_allowed(world, user, name)
    src, row = load_source(world, version, name, kind)
    meta = public_meta(row)
    count, sample = _query_flags(request)
    desired = _desired(body, api, src.resolution)
    result = query.simple_query(
        src,
        body,
        limit_size=limit_size(world),
        desired_resolution=desired,
        count=count,
        sample=sample,
    )
    return render(request, result, extra_warnings=_notices(meta), send_resolution=api >= 3)


def run_join(
    request: Request, world: Any, user: Any, api: int, version: int, body: Any
) -> Response:
    """Run a two-table join query and render the response."""
    body = _check_keys(body, _COMPLEX_KEYS)
    tables = body.get("tables")
    if (
        not isinstance(tables, list)
        or len(tables) != 2
        or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in tables
        )
    ):
        raise CaveHTTPError(
            400, f"tables must be exactly two [table, column] pairs, got {tables!r}"
        )
    (t1, c1), (t2, c2) = tables
    warnings: list[str] = []
    if "suffix_map" in body:
        sm = body["suffix_map"]
        if not isinstance(sm, dict):
            raise CaveHTTPError(400, "suffix_map must be an object of table -> suffix")
        suffixes = (str(sm.get(t1, "")), str(sm.get(t2, "")))
    elif "suffixes" in body:
        sl = body["suffixes"]
        if not isinstance(sl, list) or len(sl) != 2:
            raise CaveHTTPError(400, "suffixes must be a list of two strings")
        suffixes = (str(sl[0]), str(sl[1]))
        warnings.append("Deprecation: suffixes as a list is deprecated, use suffix_map")
    else:
        suffixes = ("x", "y")
    select_map = body.get("select_column_map")
    if select_map is None and "select_columns" in body:
        warnings.append(
            "Deprecation: select_columns as a list is deprecated, use select_column_map"
        )
        sc = body["select_columns"]
        select_map = None if sc is None else {t1: sc, t2: sc}
    if select_map is not None and not isinstance(select_map, dict):
        raise CaveHTTPError(400, "select_column_map must be an object of table -> columns")
    _version_row(world, version)
    for t in (t1, t2):
        _read_allowed(world, user, t)
    left, lrow = load_source(world, version, t1)
    right, rrow = load_source(world, version, t2)
    count, sample = _query_flags(request)
    desired = _desired(body, api, left.resolution)
    result = query.join_query(
        left,
        right,
        c1,
        c2,
        body,
        suffixes=suffixes,
        select_map=select_map,
        limit_size=limit_size(world),
        desired_resolution=desired,
        count=count,
        sample=sample,
    )
    warnings += _notices(public_meta(lrow), public_meta(rrow))
    return render(request, result, extra_warnings=warnings, send_resolution=api >= 3)


def run_live(request: Request, world: Any, user: Any, body: Any) -> Response:
    """``live_live_query``: the reference's algorithm (section 1.5.2) over the live tables."""
    body = _check_keys(body, _LIVE_KEYS)
    params = request.query_params
    table = body.get("table")
    if not isinstance(table, str):
        raise CaveHTTPError(400, "table is required")
    if "timestamp" not in body:
        raise CaveHTTPError(400, "timestamp is required")
    at = parse_timestamp(body["timestamp"])
    joins = body.get("join_tables") or []
    if not isinstance(joins, list) or len(joins) > 1:
        raise CaveHTTPError(400, "join_tables: the sandbox supports at most one join")
    if joins and (not isinstance(joins[0], list) or len(joins[0]) != 4):
        raise CaveHTTPError(400, "join_tables entries must be [table1, column1, table2, column2]")
    names = [table] + ([joins[0][2]] if joins else [])
    if joins and joins[0][0] != table:
        names = [joins[0][0], joins[0][2]]
    select = body.get("select_columns")
    if select is not None and not isinstance(select, dict):
        raise CaveHTTPError(400, "select_columns must be an object of table -> columns")
    suffixes = body.get("suffixes")
    if suffixes is not None and not isinstance(suffixes, dict):
        raise CaveHTTPError(400, "suffixes must be an object of table -> suffix")
    expire_versions(world)
    _pick_live_version(world, at)
    allow_missing = _bool(params.get("allow_missing_lookups"), False)
    allow_invalid = _bool(params.get("allow_invalid_root_ids"), False)
    warnings: list[str] = []
    body = dict(body)
    warnings += _check_root_filters(world, body, at, allow_invalid)
    sources: dict[str, Source] = {}
    metas = []
    for name in names:
        _read_allowed(world, user, name)
        with world.engine.connect() as conn:
            meta = annotation.get_meta(conn, world, name)
        fields = store.table_fields(meta)
        metas.append(meta)
        frozen = _live_table(world, meta, fields, at)
        frozen, dropped = _sentinel_rows(frozen, fields, allow_missing)
        if dropped:
            warnings.append(
                f"{dropped} annotations in {name} need supervoxel lookups and were dropped"
            )
        sources[name] = Source(name, frozen, position_bases(fields), _resolution(meta))
    count, sample = _query_flags(request)
    desired = _desired(body, 3, sources[names[0]].resolution)
    limit = limit_size(world)
    qbody = {k: v for k, v in body.items() if k in query.FILTER_KINDS or k in ("offset", "limit")}
    if joins:
        t1, c1, t2, c2 = joins[0]
        sfx = suffixes or {}
        result = query.join_query(
            sources[t1],
            sources[t2],
            c1,
            c2,
            qbody,
            suffixes=(
                str(sfx.get(t1, "x" if not sfx else "")),
                str(sfx.get(t2, "y" if not sfx else "")),
            ),
            select_map=select,
            limit_size=limit,
            desired_resolution=desired,
            count=count,
            sample=sample,
        )
    else:
        if select is not None:
            qbody["select_columns"] = select.get(table)
        result = query.simple_query(
            sources[table],
            qbody,
            limit_size=limit,
            desired_resolution=desired,
            count=count,
            sample=sample,
        )
    if result.warnings:
        n = len(result.table)
        result.warnings = [
            f"result has {n} entries, which is equal or more than limit of {n} there may be more "
            "results which are not shown"
        ]
    warnings += _notices(*metas)
    return render(request, result, extra_warnings=warnings, send_resolution=True)


def _live_table(world: Any, meta: dict[str, Any], fields: list[Field], at: dt.datetime) -> pa.Table:
    """The table's rows valid at ``at`` in the frozen layout, root ids at ``at``.

    Like the real server: start from a frozen version of the table (the newest one) and apply
    the delta of live rows created or deleted between the version's timestamp and ``at`` (either
    direction), then recompute every root id at ``at``. Only the delta is read from SQL; a
    table that is in no version is read whole.
    """
    name = meta["table_name"]
    v = store.mat_versions
    t = store.mat_tables
    with world.engine.connect() as conn:
        found = conn.execute(
            sa.select(v.c.version, v.c.time_stamp)
            .select_from(
                v.join(t, sa.and_(t.c.datastack == v.c.datastack, t.c.version == v.c.version))
            )
            .where(
                v.c.datastack == world.config.datastack,
                v.c.valid.is_(True),
                t.c.table_name == name,
                t.c.kind == "table",
            )
            .order_by(v.c.version.desc())
            .limit(1)
        ).first()
    base = None
    if found is not None:
        try:
            base, _ = load_source(world, int(found[0]), name)
        except CaveHTTPError:
            base = None
    if base is None:
        with world.engine.connect() as conn:
            cols = store.read_live_rows(conn, name, fields, at)
        return frozen_arrow(world, meta, cols, at)
    since = min(store.naive_utc(found[1]), at)
    with world.engine.connect() as conn:
        delta = store.read_changed_rows(conn, name, fields, since)
    table = _roots_at(world, base.table, fields, at)
    if not delta["id"]:
        return table
    keep = [
        i
        for i, (c, d) in enumerate(zip(delta["created"], delta["deleted"], strict=True))
        if c <= at and (d is None or d > at)
    ]
    changed = pa.array(delta["id"], pa.int64())
    table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=changed)))
    cols = {k: [vals[i] for i in keep] for k, vals in delta.items()}
    added = frozen_arrow(world, meta, cols, at).cast(table.schema)
    out = pa.concat_tables([table, added])
    ids = out.column("id").to_numpy()
    if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):
        out = out.take(pa.array(np.argsort(ids, kind="stable")))
    return out


def _roots_at(world: Any, table: pa.Table, fields: list[Field], at: dt.datetime) -> pa.Table:
    cg = world.chunkedgraph
    ts = _posix(at)
    for f in fields:
        if f.kind != "bound_point":
            continue
        sv = table.column(f"{f.name}_supervoxel_id").to_numpy()
        roots = np.zeros(len(sv), dtype=np.int64)
        if cg is not None:
            roots = np.asarray(cg.get_roots(sv.astype(np.uint64), ts)).astype(np.int64)
        roots = np.where(sv == 1, 1, roots)
        i = table.column_names.index(f"{f.name}_root_id")
        table = table.set_column(i, f"{f.name}_root_id", pa.array(roots))
    return table


def _pick_live_version(world: Any, at: dt.datetime) -> int:
    v = store.mat_versions
    ds = world.config.datastack
    with world.engine.connect() as conn:
        before = conn.execute(
            sa.select(sa.func.max(v.c.version)).where(
                v.c.datastack == ds, v.c.valid.is_(True), v.c.time_stamp <= at
            )
        ).scalar()
        if before is not None:
            return int(before)
        after = conn.execute(
            sa.select(sa.func.min(v.c.version)).where(
                v.c.datastack == ds, v.c.valid.is_(True), v.c.time_stamp >= at
            )
        ).scalar()
    if after is None:
        raise CaveHTTPError(
            400, f"No valid materialization version to answer a query at {at.isoformat()}"
        )
    return int(after)


def _check_root_filters(
    world: Any, body: dict[str, Any], at: dt.datetime, allow_invalid: bool
) -> list[str]:
    cg = world.chunkedgraph
    ids: set[int] = set()
    for kind in ("filter_in_dict", "filter_notin_dict", "filter_equal_dict"):
        for cols in (body.get(kind) or {}).values():
            if not isinstance(cols, dict):
                continue
            for col, value in cols.items():
                if not col.endswith("root_id"):
                    continue
                vals = value if isinstance(value, list) else [value]
                ids.update(int(x) for x in vals if isinstance(x, int) and x != 0)
    if not ids or cg is None:
        return []
    ordered = sorted(ids)
    latest = np.asarray(cg.is_latest_roots(np.asarray(ordered, dtype=np.uint64), _posix(at)))
    bad = {i for i, ok in zip(ordered, latest.tolist(), strict=True) if not ok}
    if not bad:
        return []
    if not allow_invalid:
        raise CaveHTTPError(
            400, f"Some root_ids passed are not valid at the query timestamp: {sorted(bad)[:50]}"
        )
    for kind in ("filter_in_dict", "filter_notin_dict", "filter_equal_dict"):
        spec = body.get(kind)
        if not spec:
            continue
        new_spec = {}
        for t, cols in spec.items():
            new_cols = {}
            for col, value in cols.items():
                if col.endswith("root_id"):
                    if isinstance(value, list):
                        value = [x for x in value if x not in bad]
                    elif value in bad:
                        continue
                new_cols[col] = value
            new_spec[t] = new_cols
        body[kind] = new_spec
    return [
        f"Removed {len(bad)} root_ids that are not valid at the query timestamp: {sorted(bad)[:50]}"
    ]


def _sentinel_rows(
    table: pa.Table, fields: list[Field], allow_missing: bool
) -> tuple[pa.Table, int]:
    sv_cols = [f"{f.name}_supervoxel_id" for f in fields if f.kind == "bound_point"]
    if not sv_cols or len(table) == 0:
        return table, 0
    pending = np.zeros(len(table), dtype=bool)
    for c in sv_cols:
        pending |= table.column(c).to_numpy() == 1
    n = int(pending.sum())
    if n == 0:
        return table, 0
    if not allow_missing:
        raise CaveHTTPError(
            406,
            f"There are {n} annotations that need supervoxel lookups, "
            "pass allow_missing_lookups=True to drop them",
        )
    return table.filter(pa.array(~pending)), n


# --------------------------------------------------------------------------- auth glue


def _view(request: Request) -> Any:
    return annotation.check_request(request, "view")


def _edit(request: Request) -> Any:
    return annotation.check_request(request, "edit")


def _admin(request: Request) -> Any:
    return annotation.check_request(request, "admin")


def _world(request: Request, datastack: str | None = None) -> Any:
    world = annotation.world_of(request)
    if datastack is not None:
        _check_datastack(world, datastack)
    return world


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CaveHTTPError(400, f"Request body is not valid JSON: {exc}") from None


# --------------------------------------------------------------------------- routes

ME = "/materialize"
DS = "/datastack/{datastack}"


@router.get(ME + "/api/versions")
def api_versions() -> Response:
    """API versions the server supports."""
    return _json(API_VERSIONS)


@router.get(ME + "/version")
def server_version() -> Response:
    """The server software version (>= 5.13 enables every client query)."""
    return _json(SERVER_VERSION)


def _api(api_str: str) -> int:
    if api_str not in ("v2", "v3"):
        raise CaveHTTPError(404, "Not Found")
    return int(api_str[1])


@router.get(ME + "/api/{api}" + DS + "/versions")
def list_versions(
    request: Request, api: str, datastack: str, expired: str | None = None
) -> Response:
    """Valid version numbers (every version with ``expired=True``)."""
    _api(api)
    world = _world(request, datastack)
    _view(request)
    expire_versions(world)
    v = store.mat_versions
    stmt = sa.select(v.c.version).where(v.c.datastack == datastack)
    if not _bool(expired, False):
        stmt = stmt.where(v.c.valid.is_(True))
    with world.engine.connect() as conn:
        out = conn.execute(stmt.order_by(v.c.version)).scalars().all()
    return _json([int(x) for x in out])


@router.get(ME + "/api/{api}" + DS + "/version/{version}")
def get_version_metadata(request: Request, api: str, datastack: str, version: int) -> Response:
    """AnalysisVersion dict of one version."""
    _api(api)
    world = _world(request, datastack)
    _view(request)
    expire_versions(world)
    return _json(version_metadata(world, version))


@router.get(ME + "/api/{api}" + DS + "/metadata")
def get_versions_metadata(
    request: Request, api: str, datastack: str, expired: str | None = None
) -> Response:
    """AnalysisVersion dicts (valid ones unless ``expired=True``)."""
    _api(api)
    world = _world(request, datastack)
    _view(request)
    expire_versions(world)
    v = store.mat_versions
    stmt = sa.select(v).where(v.c.datastack == datastack)
    if not _bool(expired, False):
        stmt = stmt.where(v.c.valid.is_(True))
    with world.engine.connect() as conn:
        rows = conn.execute(stmt.order_by(v.c.version)).all()
    if not rows:
        raise CaveHTTPError(404, f"no versions found for {datastack}")
    return _json([version_dict(r) for r in rows])


def _mat_names(world: Any, version: int, kind: str) -> list[dict[str, Any]]:
    t = store.mat_tables
    with world.engine.connect() as conn:
        rows = (
            conn.execute(
                sa.select(t)
                .where(
                    t.c.datastack == world.config.datastack,
                    t.c.version == version,
                    t.c.kind == kind,
                )
                .order_by(t.c.table_name)
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


@router.get(ME + "/api/{api}" + DS + "/version/{version}/tables")
def list_mat_tables(request: Request, api: str, datastack: str, version: int) -> Response:
    """Table names frozen in a version."""
    _api(api)
    world = _world(request, datastack)
    _view(request)
    _version_row(world, version)
    rows = _mat_names(world, version, "table")
    if not rows:
        raise CaveHTTPError(404, f"no tables found in version {version} of {datastack}")
    return _json([r["table_name"] for r in rows])


@router.get(ME + "/api/{api}" + DS + "/version/{version}/table/{table_name}/count")
def mat_table_count(
    request: Request, api: str, datastack: str, version: int, table_name: str
) -> Response:
    """Row count of a frozen table."""
    _api(api)
    world = _world(request, datastack)
    user = _view(request)
    _version_row(world, version)
    _read_allowed(world, user, table_name)
    return _json(int(_mat_row(world, version, table_name, "table")["row_count"]))


@router.get(ME + "/api/{api}" + DS + "/version/{version}/table/{table_name}/metadata")
def mat_table_metadata(
    request: Request, api: str, datastack: str, version: int, table_name: str
) -> Response:
    """Metadata of a frozen table (reference section 4.2)."""
    _api(api)
    world = _world(request, datastack)
    user = _view(request)
    _version_row(world, version)
    _read_allowed(world, user, table_name)
    return _json(public_meta(_mat_row(world, version, table_name, "table")))


@router.get(ME + "/api/v3" + DS + "/version/{version}/tables/metadata")
def all_tables_metadata(request: Request, datastack: str, version: int) -> Response:
    """Metadata of every frozen table of a version."""
    world = _world(request, datastack)
    _view(request)
    _version_row(world, version)
    return _json([public_meta(r) for r in _mat_names(world, version, "table")])


@router.post(ME + "/api/{api}" + DS + "/version/{version}/table/{table_name}/query")
async def simple_query_route(
    request: Request, api: str, datastack: str, version: int, table_name: str
) -> Response:
    """Versioned single-table query (Arrow or JSON)."""
    api_n = _api(api)
    world = _world(request, datastack)
    user = _view(request)
    body = await _body(request)
    return await run_in_threadpool(
        run_simple, request, world, user, api_n, version, table_name, "table", body
    )


@router.post(ME + "/api/{api}" + DS + "/version/{version}/query")
async def join_query_route(request: Request, api: str, datastack: str, version: int) -> Response:
    """Versioned join query (Arrow or JSON)."""
    api_n = _api(api)
    world = _world(request, datastack)
    user = _view(request)
    body = await _body(request)
    return await run_in_threadpool(run_join, request, world, user, api_n, version, body)


@router.post(ME + "/api/v3" + DS + "/query")
async def live_live_query_route(request: Request, datastack: str) -> Response:
    """Server-side live query at a timestamp (reference section 1.5.2)."""
    world = _world(request, datastack)
    user = _view(request)
    body = await _body(request)
    return await run_in_threadpool(run_live, request, world, user, body)


def _view_info(row: dict[str, Any]) -> dict[str, Any]:
    meta = public_meta(row)
    return {
        "id": row["id"],
        "description": meta["description"],
        "datastack_name": meta["datastack_name"],
        "voxel_resolution_x": meta["voxel_resolution_x"],
        "voxel_resolution_y": meta["voxel_resolution_y"],
        "voxel_resolution_z": meta["voxel_resolution_z"],
        "notice_text": meta["notice_text"],
        "live_compatible": meta["live_compatible"],
    }


@router.get(ME + "/api/v3" + DS + "/version/{version}/views")
def get_views(request: Request, datastack: str, version: int) -> Response:
    """Views of a version: ``{name: {id, description, ...}}``."""
    world = _world(request, datastack)
    _view(request)
    _version_row(world, version)
    return _json({r["table_name"]: _view_info(r) for r in _mat_names(world, version, "view")})


@router.get(ME + "/api/v3" + DS + "/version/{version}/views/schemas")
def get_view_schemas(request: Request, datastack: str, version: int) -> Response:
    """Column types of every view (404 ``{}`` without views)."""
    world = _world(request, datastack)
    _view(request)
    _version_row(world, version)
    rows = _mat_names(world, version, "view")
    if not rows:
        return _json({}, 404)
    return _json({r["table_name"]: _view_schema(world, version, r["table_name"]) for r in rows})


@router.get(ME + "/api/v3" + DS + "/version/{version}/views/{view_name}/metadata")
def get_view_metadata(request: Request, datastack: str, version: int, view_name: str) -> Response:
    """Metadata of one view."""
    world = _world(request, datastack)
    _view(request)
    _version_row(world, version)
    row = _mat_row(world, version, view_name, "view")
    return _json({"table_name": view_name, **_view_info(row)})


def _view_schema(world: Any, version: int, view_name: str) -> dict[str, Any]:
    src, _ = load_source(world, version, view_name, "view")
    out: dict[str, Any] = {}
    done: set[str] = set()
    for name in src.table.column_names:
        base = name[:-2]
        if base in src.position_bases:
            if base not in done:
                out[base] = {"type": "SpatialPoint"}
                done.add(base)
            continue
        t = src.table.schema.field(name).type
        if pa.types.is_integer(t):
            out[name] = {"type": "integer"}
        elif pa.types.is_floating(t):
            out[name] = {"type": "float"}
        elif pa.types.is_boolean(t):
            out[name] = {"type": "boolean"}
        elif pa.types.is_timestamp(t):
            out[name] = {"type": "string", "format": "date-time"}
        else:
            out[name] = {"type": "string"}
    return out


@router.get(ME + "/api/v3" + DS + "/version/{version}/views/{view_name}/schema")
def get_view_schema(request: Request, datastack: str, version: int, view_name: str) -> Response:
    """Column types of one view."""
    world = _world(request, datastack)
    _view(request)
    _version_row(world, version)
    return _json(_view_schema(world, version, view_name))


@router.post(ME + "/api/v3" + DS + "/version/{version}/views/{view_name}/query")
async def view_query_route(
    request: Request, datastack: str, version: int, view_name: str
) -> Response:
    """Query a view (filters nested under the view name)."""
    world = _world(request, datastack)
    user = _view(request)
    body = await _body(request)
    return await run_in_threadpool(
        run_simple, request, world, user, 3, version, view_name, "view", body
    )


@router.get(ME + "/api/v3" + DS + "/table/{table_name}/unique_string_values")
def unique_string_values(request: Request, datastack: str, table_name: str) -> Response:
    """Distinct values of every string column of a live table."""
    world = _world(request, datastack)
    user = _view(request)
    expire_versions(world)
    with world.engine.connect() as conn:
        meta = annotation.get_meta(conn, world, table_name)
        annotation.read_check(world, user, meta)
        fields = store.table_fields(meta)
        live = store.live_table(table_name, fields)
        out: dict[str, list[str]] = {}
        for f in fields:
            if f.kind == "str":
                col = live.c[f.name]
                vals = (
                    conn.execute(
                        sa.select(col)
                        .where(live.c.valid.is_(True), col.is_not(None))
                        .distinct()
                        .order_by(col)
                    )
                    .scalars()
                    .all()
                )
                out[f.name] = list(vals)
    return _json(out)


@router.post(ME + "/api/v2/materialize/run/ingest_annotations" + DS + "/{table_name}")
def ingest_annotations(request: Request, datastack: str, table_name: str) -> Response:
    """Accept an ingest request (edit + table write permission); no-op."""
    world = _world(request, datastack)
    user = _edit(request)
    with world.engine.connect() as conn:
        meta = annotation.get_meta(conn, world, table_name)
    annotation.write_check(world, user, meta)
    return _json(f"ingesting annotations from {table_name}")


@router.post(ME + "/api/v2/materialize/run/lookup_svid" + DS + "/{table_name}")
async def lookup_svid(request: Request, datastack: str, table_name: str) -> Response:
    """Re-run supervoxel lookups for rows still carrying the sentinel 1."""
    world = _world(request, datastack)
    user = _edit(request)
    body = await _body(request) or {}
    if not isinstance(body, dict) or set(body) - {"annotation_ids"}:
        raise CaveHTTPError(400, "body must be {} or {'annotation_ids': [...]}")
    with world.engine.connect() as conn:
        meta = annotation.get_meta(conn, world, table_name)
    annotation.write_check(world, user, meta)
    n = await run_in_threadpool(_relookup, world, meta, body.get("annotation_ids"))
    return _json(f"looked up supervoxels for {n} annotations in {table_name}")


def _relookup(world: Any, meta: dict[str, Any], ids: list[int] | None) -> int:
    """Re-run the supervoxel lookup for rows still carrying the pending sentinel (1)."""
    fields = store.table_fields(meta)
    bound = [f for f in fields if f.kind == "bound_point"]
    if not bound or world.chunkedgraph is None:
        return 0
    live = store.live_table(meta["table_name"], fields)
    cond = sa.or_(*[live.c[f"{f.name}_supervoxel_id"] == 1 for f in bound])
    stmt = sa.select(live).where(cond)
    if ids:
        stmt = stmt.where(live.c.id.in_(ids))
    with store.write_lock(meta["table_name"]), world.engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings().all()]
        annotation.lookup_supervoxels(world, meta, fields, rows)
        for r in rows:
            conn.execute(
                sa.update(live)
                .where(live.c.id == r["id"])
                .values({f"{f.name}_supervoxel_id": r[f"{f.name}_supervoxel_id"] for f in bound})
            )
    return len(rows)


# --------------------------------------------------------------------------- sandbox admin


@router.post("/__sandbox__/materialize")
async def admin_materialize(request: Request) -> Response:
    """Create a version now: body ``{"timestamp"?, "days_to_expire"?, "expires_on"?}``."""
    world = annotation.world_of(request)
    _admin(request)
    body = await _body(request) or {}
    if not isinstance(body, dict):
        raise CaveHTTPError(400, "body must be a JSON object")
    unknown = set(body) - {"timestamp", "days_to_expire", "expires_on"}
    if unknown:
        raise CaveHTTPError(400, f"Unknown field(s): {sorted(unknown)}")
    ts = parse_timestamp(body["timestamp"]) if body.get("timestamp") is not None else None
    exp = parse_timestamp(body["expires_on"], "expires_on") if body.get("expires_on") else None
    days = body.get("days_to_expire", DEFAULT_DAYS_TO_EXPIRE)
    if days is not None and (not isinstance(days, (int, float)) or isinstance(days, bool)):
        raise CaveHTTPError(400, f"days_to_expire must be a number or null, got {days!r}")
    version = await run_in_threadpool(materialize, world, ts, days_to_expire=days, expires_on=exp)
    return _json(version_metadata(world, version))


@router.post("/__sandbox__/versions/{version}/expire")
def admin_expire(request: Request, version: int) -> Response:
    """Sandbox admin: expire a version now."""
    world = annotation.world_of(request)
    _admin(request)
    return _json(expire_version(world, version))


@router.put("/__sandbox__/query_limit")
async def admin_query_limit(request: Request) -> Response:
    """Change the server row limit at runtime: ``{"limit": N}``; ``{"limit": null}`` restores the
    configured default. Returns ``{"limit": <effective limit>}``."""
    world = annotation.world_of(request)
    _admin(request)
    body = await _body(request)
    if not isinstance(body, dict) or set(body) != {"limit"}:
        raise CaveHTTPError(400, 'body must be {"limit": <positive int or null>}')
    value = body["limit"]
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise CaveHTTPError(400, f"limit must be a positive integer or null, got {value!r}")
    world.query_limit_size = value
    return _json({"limit": limit_size(world)})


@router.get("/__sandbox__/query_limit")
def admin_get_query_limit(request: Request) -> Response:
    """Sandbox: the effective row limit."""
    world = annotation.world_of(request)
    return _json({"limit": limit_size(world)})
