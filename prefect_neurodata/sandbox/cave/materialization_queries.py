"""Query runners of the materialization stand-in: validate a request, run it, render it.

:func:`run_simple` (table and view queries), :func:`run_join` (two-table joins) and
:func:`run_live` (``live_live_query``: the newest frozen version plus the live delta, root ids
recomputed at the query timestamp) check the body against the real server's accepted keys, run
the vectorised engine of :mod:`.query` over frozen sources from
:mod:`.materialization_versions`, and :func:`render` encodes the result as Arrow IPC or JSON with
the real server's headers (``Warning``, ``dataframe_resolution``, ``column_names``).

Decisions where the reference leaves a choice:

* ``filter_notin_dict`` is applied with real SQL NOT IN semantics (not the 5.26.x bug that drops
  it).
* Spatial boxes with min >= max and regex filters on non-string columns answer 500 as the real
  server does; every other malformed request is a 400 naming the field.
* ``live_live_query`` supports one join (``join_tables`` with at most one entry); with no
  ``suffixes`` the colliding columns get ``x``/``y`` like a join query.

Example:
    >>> run_simple(request, world, user, 3, 1, "synapses", "table", body)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from fastapi import Request, Response

from prefect_neurodata.sandbox.cave import access, arrowio, query, store
from prefect_neurodata.sandbox.cave import materialization_versions as versions
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError
from prefect_neurodata.sandbox.cave.query import Source
from prefect_neurodata.sandbox.cave.store import Field

QUERY_LIMIT_SIZE = 200_000
LIMIT_ENV = "NEURODATA_SANDBOX_CAVE_QUERY_LIMIT"

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


def limit_size(world: Any) -> int:
    """The server's row limit: ``world.query_limit_size`` (set by ``PUT /__sandbox__/query_limit``
    or by in-process tests), else env ``NEURODATA_SANDBOX_CAVE_QUERY_LIMIT``, else 200,000."""
    value = getattr(world, "query_limit_size", None) or os.environ.get(LIMIT_ENV)
    return int(value or QUERY_LIMIT_SIZE)


def flag(value: str | None, default: bool) -> bool:
    """A query-string boolean as the real server reads it (``True``, ``1``, ``yes``...)."""
    if value is None:
        return default
    return value.strip().lower() in ("true", "1", "yes", "y", "t", "on")


def check_read(world: Any, user: Any, name: str) -> None:
    """403 unless ``user`` may read the live table ``name`` (unknown tables pass: 404 later)."""
    with world.engine.connect() as conn:
        meta = store.table_meta_row(conn, world.config.aligned_volume, name)
    if meta is not None:
        access.read_check(world, user, meta)


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
    return_pyarrow = flag(params.get("return_pyarrow"), True)
    arrow_format = flag(params.get("arrow_format"), False)
    split = flag(params.get("split_positions"), False)
    table = result.table
    positions = list(result.position_columns)
    warnings = list(result.warnings) + list(extra_warnings or [])
    if not flag(params.get("direct_sql_pandas"), False):
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
        codec = arrowio.ipc_codec(accept, flag(params.get("ipc_compress"), True))
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
    count = flag(params.get("count"), False)
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
    versions.require_valid_version(world, version)
    if kind == "table":
        check_read(world, user, name)
    src, row = versions.load_source(world, version, name, kind)
    meta = versions.public_meta(row)
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
    versions.require_valid_version(world, version)
    for t in (t1, t2):
        check_read(world, user, t)
    left, lrow = versions.load_source(world, version, t1)
    right, rrow = versions.load_source(world, version, t2)
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
    warnings += _notices(versions.public_meta(lrow), versions.public_meta(rrow))
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
    at = versions.parse_timestamp(body["timestamp"])
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
    versions.expire_versions(world)
    _pick_live_version(world, at)
    allow_missing = flag(params.get("allow_missing_lookups"), False)
    allow_invalid = flag(params.get("allow_invalid_root_ids"), False)
    warnings: list[str] = []
    body = dict(body)
    warnings += _check_root_filters(world, body, at, allow_invalid)
    sources: dict[str, Source] = {}
    metas = []
    for name in names:
        check_read(world, user, name)
        with world.engine.connect() as conn:
            meta = access.get_meta(conn, world, name)
        fields = store.table_fields(meta)
        metas.append(meta)
        frozen = _live_table(world, meta, fields, at)
        frozen, dropped = sentinel_rows(frozen, fields, allow_missing)
        if dropped:
            warnings.append(
                f"{dropped} annotations in {name} need supervoxel lookups and were dropped"
            )
        sources[name] = Source(
            name, frozen, versions.position_bases(fields), versions.voxel_resolution(meta)
        )
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
            base, _ = versions.load_source(world, int(found[0]), name)
        except CaveHTTPError:
            base = None
    if base is None:
        with world.engine.connect() as conn:
            cols = store.read_live_rows(conn, name, fields, at)
        return versions.frozen_arrow(world, meta, cols, at)
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
    added = versions.frozen_arrow(world, meta, cols, at).cast(table.schema)
    out = pa.concat_tables([table, added])
    ids = out.column("id").to_numpy()
    if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):
        out = out.take(pa.array(np.argsort(ids, kind="stable")))
    return out


def _roots_at(world: Any, table: pa.Table, fields: list[Field], at: dt.datetime) -> pa.Table:
    cg = world.chunkedgraph
    ts = versions.posix_seconds(at)
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
    latest = np.asarray(
        cg.is_latest_roots(np.asarray(ordered, dtype=np.uint64), versions.posix_seconds(at))
    )
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


def sentinel_rows(
    table: pa.Table, fields: list[Field], allow_missing: bool
) -> tuple[pa.Table, int]:
    """Drop rows whose supervoxel lookup is pending (sentinel 1): 406 unless ``allow_missing``.

    Returns:
        The kept rows and how many were dropped.
    """
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
