"""Materialization engine stand-in (``{me}/materialize``; API v2 and v3; server "5.26.4"): routes.

This module holds the HTTP surface; the work lives in two modules beside it:

* :mod:`.materialization_versions`: building, storing, loading and expiring frozen versions
  (:func:`~.materialization_versions.materialize`, :func:`~.materialization_versions.define_view`,
  :data:`~.materialization_versions.CACHE`).
* :mod:`.materialization_queries`: the query runners and the response rendering.

Decisions where the reference leaves a choice:

* An expired version (``expires_on`` in the past; its frozen data is dropped) answers **410**
  ``{"message": "This materialization version is not available"}`` on table, view and query
  routes, like the flat-model path of the real server; it stays listed with
  ``versions?expired=True`` with ``valid=false, status=EXPIRED``. The newest valid version never
  expires (the real expiry job's rule); the real ``delete_threshold`` of 5 is not applied.

Sandbox admin routes: ``POST /__sandbox__/materialize`` (a new version now),
``POST /__sandbox__/versions/{version}/expire``, ``PUT|GET /__sandbox__/query_limit``.

Example:
    POST {me}/materialize/api/v3/datastack/minnie_sandbox/version/1/table/synapses/query
    ?return_pyarrow=True&arrow_format=True&split_positions=True
    body {"filter_in_dict": {"synapses": {"pre_pt_root_id": [..]}}, "limit": 200000}
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from prefect_neurodata.sandbox.cave import access, annotation_schema, store
from prefect_neurodata.sandbox.cave import materialization_queries as queries
from prefect_neurodata.sandbox.cave import materialization_versions as versions
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError, parse_json_body

# The seeding and the app reach versions through this module (``materialization.materialize``).
from prefect_neurodata.sandbox.cave.materialization_versions import (  # noqa: F401
    CACHE,
    define_view,
    expire_versions,
    materialize,
)

SERVER_VERSION = "5.26.4"
API_VERSIONS = [2, 3]

router = APIRouter()


def _json(value: Any, status_code: int = 200) -> Response:
    return access.json_response(value, status_code)


def _check_datastack(world: Any, datastack: str) -> None:
    if datastack != world.config.datastack:
        raise CaveHTTPError(404, f"datastack {datastack} not found")


# --------------------------------------------------------------------------- auth glue


def _view(request: Request) -> Any:
    return access.check_request(request, "view")


def _edit(request: Request) -> Any:
    return access.check_request(request, "edit")


def _admin(request: Request) -> Any:
    return access.check_request(request, "admin")


def _world(request: Request, datastack: str | None = None) -> Any:
    world = access.world_of(request)
    if datastack is not None:
        _check_datastack(world, datastack)
    return world


async def _body(request: Request) -> Any:
    """The JSON body, or None when there is none (materialization bodies are optional)."""
    raw = await request.body()
    return parse_json_body(raw) if raw.strip() else None


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


def _listed_versions(
    request: Request, api: str, datastack: str, expired: str | None
) -> list[sa.Row[Any]]:
    """Version rows after expiring what is due: valid ones, or all with ``expired=True``."""
    _api(api)
    world = _world(request, datastack)
    _view(request)
    versions.expire_versions(world)
    v = store.mat_versions
    stmt = sa.select(v).where(v.c.datastack == datastack)
    if not queries.flag(expired, False):
        stmt = stmt.where(v.c.valid.is_(True))
    with world.engine.connect() as conn:
        return list(conn.execute(stmt.order_by(v.c.version)).all())


@router.get(ME + "/api/{api}" + DS + "/versions")
def list_versions(
    request: Request, api: str, datastack: str, expired: str | None = None
) -> Response:
    """Valid version numbers (every version with ``expired=True``)."""
    rows = _listed_versions(request, api, datastack, expired)
    return _json([int(r.version) for r in rows])


@router.get(ME + "/api/{api}" + DS + "/version/{version}")
def get_version_metadata(request: Request, api: str, datastack: str, version: int) -> Response:
    """AnalysisVersion dict of one version."""
    _api(api)
    world = _world(request, datastack)
    _view(request)
    versions.expire_versions(world)
    return _json(versions.version_metadata(world, version))


@router.get(ME + "/api/{api}" + DS + "/metadata")
def get_versions_metadata(
    request: Request, api: str, datastack: str, expired: str | None = None
) -> Response:
    """AnalysisVersion dicts (valid ones unless ``expired=True``)."""
    rows = _listed_versions(request, api, datastack, expired)
    if not rows:
        raise CaveHTTPError(404, f"no versions found for {datastack}")
    return _json([versions.version_dict(r) for r in rows])


def _valid_version(request: Request, datastack: str, version: int) -> tuple[Any, Any]:
    """World and viewer of a request about a valid version (datastack, viewer, version checked)."""
    world = _world(request, datastack)
    user = _view(request)
    versions.require_valid_version(world, version)
    return world, user


def _frozen_table(
    request: Request, api: str, datastack: str, version: int, table_name: str
) -> dict[str, Any]:
    """The version's row of a frozen table the viewer may read."""
    _api(api)
    world, user = _valid_version(request, datastack, version)
    queries.check_read(world, user, table_name)
    return versions.mat_row(world, version, table_name, "table")


@router.get(ME + "/api/{api}" + DS + "/version/{version}/tables")
def list_mat_tables(request: Request, api: str, datastack: str, version: int) -> Response:
    """Table names frozen in a version."""
    _api(api)
    world, _ = _valid_version(request, datastack, version)
    rows = versions.mat_rows(world, version, "table")
    if not rows:
        raise CaveHTTPError(404, f"no tables found in version {version} of {datastack}")
    return _json([r["table_name"] for r in rows])


@router.get(ME + "/api/{api}" + DS + "/version/{version}/table/{table_name}/count")
def mat_table_count(
    request: Request, api: str, datastack: str, version: int, table_name: str
) -> Response:
    """Row count of a frozen table."""
    return _json(int(_frozen_table(request, api, datastack, version, table_name)["row_count"]))


@router.get(ME + "/api/{api}" + DS + "/version/{version}/table/{table_name}/metadata")
def mat_table_metadata(
    request: Request, api: str, datastack: str, version: int, table_name: str
) -> Response:
    """Metadata of a frozen table (reference section 4.2)."""
    return _json(versions.public_meta(_frozen_table(request, api, datastack, version, table_name)))


@router.get(ME + "/api/v3" + DS + "/version/{version}/tables/metadata")
def all_tables_metadata(request: Request, datastack: str, version: int) -> Response:
    """Metadata of every frozen table of a version."""
    world, _ = _valid_version(request, datastack, version)
    return _json([versions.public_meta(r) for r in versions.mat_rows(world, version, "table")])


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
        queries.run_simple, request, world, user, api_n, version, table_name, "table", body
    )


@router.post(ME + "/api/{api}" + DS + "/version/{version}/query")
async def join_query_route(request: Request, api: str, datastack: str, version: int) -> Response:
    """Versioned join query (Arrow or JSON)."""
    api_n = _api(api)
    world = _world(request, datastack)
    user = _view(request)
    body = await _body(request)
    return await run_in_threadpool(queries.run_join, request, world, user, api_n, version, body)


@router.post(ME + "/api/v3" + DS + "/query")
async def live_live_query_route(request: Request, datastack: str) -> Response:
    """Server-side live query at a timestamp (reference section 1.5.2)."""
    world = _world(request, datastack)
    user = _view(request)
    body = await _body(request)
    return await run_in_threadpool(queries.run_live, request, world, user, body)


def _view_info(row: dict[str, Any]) -> dict[str, Any]:
    meta = versions.public_meta(row)
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
    world, _ = _valid_version(request, datastack, version)
    rows = versions.mat_rows(world, version, "view")
    return _json({r["table_name"]: _view_info(r) for r in rows})


@router.get(ME + "/api/v3" + DS + "/version/{version}/views/schemas")
def get_view_schemas(request: Request, datastack: str, version: int) -> Response:
    """Column types of every view (404 ``{}`` without views)."""
    world, _ = _valid_version(request, datastack, version)
    rows = versions.mat_rows(world, version, "view")
    if not rows:
        return _json({}, 404)
    return _json({r["table_name"]: _view_schema(world, version, r["table_name"]) for r in rows})


@router.get(ME + "/api/v3" + DS + "/version/{version}/views/{view_name}/metadata")
def get_view_metadata(request: Request, datastack: str, version: int, view_name: str) -> Response:
    """Metadata of one view."""
    world, _ = _valid_version(request, datastack, version)
    row = versions.mat_row(world, version, view_name, "view")
    return _json({"table_name": view_name, **_view_info(row)})


def _view_schema(world: Any, version: int, view_name: str) -> dict[str, Any]:
    src, _ = versions.load_source(world, version, view_name, "view")
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
    world, _ = _valid_version(request, datastack, version)
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
        queries.run_simple, request, world, user, 3, version, view_name, "view", body
    )


@router.get(ME + "/api/v3" + DS + "/table/{table_name}/unique_string_values")
def unique_string_values(request: Request, datastack: str, table_name: str) -> Response:
    """Distinct values of every string column of a live table."""
    world = _world(request, datastack)
    user = _view(request)
    versions.expire_versions(world)
    with world.engine.connect() as conn:
        meta = access.get_meta(conn, world, table_name)
        access.read_check(world, user, meta)
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
    access.writable_meta(world, user, table_name)
    return _json(f"ingesting annotations from {table_name}")


@router.post(ME + "/api/v2/materialize/run/lookup_svid" + DS + "/{table_name}")
async def lookup_svid(request: Request, datastack: str, table_name: str) -> Response:
    """Re-run supervoxel lookups for rows still carrying the sentinel 1."""
    world = _world(request, datastack)
    user = _edit(request)
    body = await _body(request) or {}
    if not isinstance(body, dict) or set(body) - {"annotation_ids"}:
        raise CaveHTTPError(400, "body must be {} or {'annotation_ids': [...]}")
    meta = access.writable_meta(world, user, table_name)
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
        annotation_schema.lookup_supervoxels(world, meta, fields, rows)
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
    world = access.world_of(request)
    _admin(request)
    body = await _body(request) or {}
    if not isinstance(body, dict):
        raise CaveHTTPError(400, "body must be a JSON object")
    unknown = set(body) - {"timestamp", "days_to_expire", "expires_on"}
    if unknown:
        raise CaveHTTPError(400, f"Unknown field(s): {sorted(unknown)}")
    ts = versions.parse_timestamp(body["timestamp"]) if body.get("timestamp") is not None else None
    exp = (
        versions.parse_timestamp(body["expires_on"], "expires_on")
        if body.get("expires_on")
        else None
    )
    days = body.get("days_to_expire", versions.DEFAULT_DAYS_TO_EXPIRE)
    if days is not None and (not isinstance(days, (int, float)) or isinstance(days, bool)):
        raise CaveHTTPError(400, f"days_to_expire must be a number or null, got {days!r}")
    version = await run_in_threadpool(
        versions.materialize, world, ts, days_to_expire=days, expires_on=exp
    )
    return _json(versions.version_metadata(world, version))


@router.post("/__sandbox__/versions/{version}/expire")
def admin_expire(request: Request, version: int) -> Response:
    """Sandbox admin: expire a version now."""
    world = access.world_of(request)
    _admin(request)
    return _json(versions.expire_version(world, version))


@router.put("/__sandbox__/query_limit")
async def admin_query_limit(request: Request) -> Response:
    """Change the server row limit at runtime: ``{"limit": N}``; ``{"limit": null}`` restores the
    configured default. Returns ``{"limit": <effective limit>}``."""
    world = access.world_of(request)
    _admin(request)
    body = await _body(request)
    if not isinstance(body, dict) or set(body) != {"limit"}:
        raise CaveHTTPError(400, 'body must be {"limit": <positive int or null>}')
    value = body["limit"]
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise CaveHTTPError(400, f"limit must be a positive integer or null, got {value!r}")
    world.query_limit_size = value
    return _json({"limit": queries.limit_size(world)})


@router.get("/__sandbox__/query_limit")
def admin_get_query_limit(request: Request) -> Response:
    """Sandbox: the effective row limit."""
    world = access.world_of(request)
    return _json({"limit": queries.limit_size(world)})
