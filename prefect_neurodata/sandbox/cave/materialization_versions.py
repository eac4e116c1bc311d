"""Frozen materialization versions of the CAVE stand-in: build, store, load and expire them.

Creating a version (:func:`materialize`, also ``POST /__sandbox__/materialize``) freezes every
live annotation table as it was at the version's timestamp: rows valid at T, supervoxel ids
(looked up from positions at write time) and root ids computed by the chunkedgraph model at T.
Views (:func:`define_view`) are frozen alongside. Frozen tables are stored as zstd Arrow IPC
chunks in the database (tables of :mod:`.store`) and decoded once per process into
:data:`CACHE`; :func:`load_source` hands them to the query engine (:mod:`.query`).

An expired version (``expires_on`` in the past, or :func:`expire_version`) loses its frozen data
and stays listed as ``valid=false, status=EXPIRED``; the newest valid version never expires.

Example:
    >>> version = materialize(world)  # doctest: +SKIP
    >>> source, row = load_source(world, version, "synapses")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from prefect_neurodata.sandbox.cave import query, store
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError
from prefect_neurodata.sandbox.cave.query import Source
from prefect_neurodata.sandbox.cave.store import Field

DEFAULT_DAYS_TO_EXPIRE = 7
EXPIRED_MESSAGE = "This materialization version is not available"


def posix_seconds(value: dt.datetime) -> float:
    """POSIX seconds of a datetime (naive = UTC)."""
    return store.naive_utc(value).replace(tzinfo=dt.timezone.utc).timestamp()


def from_posix(value: float) -> dt.datetime:
    """Naive UTC datetime of POSIX seconds."""
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).replace(tzinfo=None)


def parse_timestamp(value: Any, name: str = "timestamp") -> dt.datetime:
    """ISO string (aware or naive-as-UTC) or POSIX seconds -> naive UTC datetime."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return from_posix(float(value))
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
    ts = None if at is None else posix_seconds(at)
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
            flags = [None if v is None else bool(v) for v in columns[f.name]]
            out[f.name] = pa.array(flags, type=pa.bool_())
        else:
            out[f.name] = pa.array(columns[f.name], type=pa.string())
    out.update(positions)
    return pa.table(out)


def position_bases(fields: list[Field]) -> list[str]:
    """Model names (``<pt>_position``) of the point fields."""
    return [f"{f.name}_position" for f in fields if f.kind in ("bound_point", "point")]


def voxel_resolution(meta: dict[str, Any]) -> tuple[float, float, float]:
    """``(x, y, z)`` nm per voxel from a table's metadata."""
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
        ts = from_posix(float(timestamp))
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
            src = Source(meta["table_name"], table, position_bases(fields), voxel_resolution(meta))
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
        **{key: meta[key] for key in store.DESCRIPTIVE_META_KEYS},
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


def require_valid_version(world: Any, version: int) -> dict[str, Any]:
    """AnalysisVersion dict of ``version`` after expiring what is due: 404 unknown, 410 expired."""
    expire_versions(world)
    meta = version_metadata(world, version)
    if not meta["valid"]:
        raise CaveHTTPError(410, EXPIRED_MESSAGE)
    return meta


def _frozen_select(world: Any, version: int, kind: str) -> sa.Select[Any]:
    t = store.mat_tables
    return sa.select(t).where(
        t.c.datastack == world.config.datastack, t.c.version == version, t.c.kind == kind
    )


def mat_row(world: Any, version: int, name: str, kind: str) -> dict[str, Any]:
    """The stored row of one frozen table or view (``kind``); 404 naming it when absent."""
    stmt = _frozen_select(world, version, kind).where(store.mat_tables.c.table_name == name)
    with world.engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    if row is None:
        what = "table" if kind == "table" else "view"
        raise CaveHTTPError(
            404, f"{what} {name} not found in version {version} of {world.config.datastack}"
        )
    return dict(row)


def mat_rows(world: Any, version: int, kind: str) -> list[dict[str, Any]]:
    """The stored rows of every frozen table or view (``kind``) of a version, by name."""
    stmt = _frozen_select(world, version, kind).order_by(store.mat_tables.c.table_name)
    with world.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings().all()]


def load_source(
    world: Any, version: int, name: str, kind: str = "table"
) -> tuple[Source, dict[str, Any]]:
    """The frozen table (cached) and its metadata row."""
    row = mat_row(world, version, name, kind)
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
        src = Source(name, table, bases, voxel_resolution(meta))
        CACHE.put(key, src)
    return src, row


def public_meta(row: dict[str, Any]) -> dict[str, Any]:
    """Stored table/view metadata without the stand-in's private keys."""
    return {k: v for k, v in row["meta"].items() if not k.startswith("_")}
