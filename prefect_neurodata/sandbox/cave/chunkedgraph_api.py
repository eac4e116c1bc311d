"""PyChunkedGraph routes of the CAVE stand-in (reference §1.6, §3), over ``world.chunkedgraph``.

Timestamps are float POSIX seconds in the query string (missing = now). Points of edits and
``find_path`` are ``[node_id, x_nm, y_nm, z_nm]`` (nm; divided by the (4, 4, 40) resolution).
``roots_binary`` reads and writes raw little-endian uint64. ``past_id_mapping``,
``tabular_change_log_many`` and ``valid_nodes`` read a JSON body on a GET. Responses are gzipped
when the request accepts gzip; gzip request bodies are accepted. Reads need ``view`` and edits
``edit`` on the table's dataset; ``user_operations`` needs a superadmin.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import networkx as nx
import numpy as np
import orjson
import pandas as pd
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from .auth import User, require
from .chunkedgraph import ChunkedGraph
from .chunkedgraph_requests import (
    graph_of,
    id_list,
    ids_field,
    iso_utc,
    json_body,
    json_reply,
    leaf_layer,
    maybe_gzip,
    query_bool,
    query_bounds,
    query_float,
    query_int,
    raw_body,
    roots_at,
    two_points,
    uint64_reply,
    voxel_points,
)
from .errors import PCGError

PCG_VERSION = "2.21.1"
router = APIRouter()
V1 = "/segmentation/api/v1/table/{table_id}"
_view = require("view", namespace="table")
_edit = require("edit", namespace="table")
_admin = require("admin", namespace="table")


# ------------------------------------------------------------------------------ common
@router.get("/segmentation/api/versions")
def api_versions() -> list[int]:
    """Supported API versions."""
    return [0, 1]


@router.get("/segmentation/api/version")
def pcg_version() -> str:
    """Server version."""
    return PCG_VERSION


@router.get("/segmentation/table/{table_id}/info")
def table_info(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """CloudVolume-style info of the PCG table."""
    return json_reply(request, graph_of(request, table_id).info())


@router.get("/segmentation/api/v1/table/{table_id}/info")
def table_info_v1(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Same info under the V1 prefix (CloudVolume graphene paths)."""
    return json_reply(request, graph_of(request, table_id).info())


# ------------------------------------------------------------------------------ roots
@router.get(V1 + "/node/{node_id}/root")
def handle_root(
    table_id: str, node_id: int, request: Request, user: User = Depends(_view)
) -> Response:
    """Root (or ``stop_layer`` node) of one node at ``timestamp``."""
    cg = graph_of(request, table_id)
    if node_id and not cg.node_exists(node_id):
        raise PCGError(400, f"Node {node_id} does not exist")
    root = roots_at(request, cg, [node_id])
    return json_reply(request, {"root_id": int(root[0])})


# Bulk lookups run in a worker thread: the real service answers them from many load-balanced
# workers at once, while on the event loop one big lookup would hold every other request (and
# its latency timer) until it is done, serving concurrent requests one after the other.
@router.post(V1 + "/roots_binary")
async def roots_binary(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Roots of raw little-endian uint64 ids; answers raw uint64 in the same order."""
    cg = graph_of(request, table_id)
    data = await raw_body(request)

    def answer() -> Response:
        if len(data) % 8:
            raise PCGError(400, f"body must be little-endian uint64 (got {len(data)} bytes)")
        ids = np.frombuffer(data, dtype="<u8")
        roots = roots_at(request, cg, ids)
        if not query_bool(request, "fail_to_zero", True):
            unknown = (roots == 0) & (ids != 0)
            if unknown.any():
                raise PCGError(400, f"Node {int(ids[np.argmax(unknown)])} does not exist")
        return maybe_gzip(request, uint64_reply(roots))

    return await run_in_threadpool(answer)


@router.post(V1 + "/roots")
async def handle_roots(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Roots of ``{"node_ids": [...]}`` (JSON, or raw uint64 with ``as_binary``)."""
    cg = graph_of(request, table_id)
    body = await json_body(request)

    def answer() -> Response:
        ids = ids_field(body, "node_ids")
        roots = roots_at(request, cg, ids)
        if query_bool(request, "as_binary", False):
            return uint64_reply(roots)
        return json_reply(request, {"root_ids": id_list(roots)})

    return await run_in_threadpool(answer)


@router.post(V1 + "/is_latest_roots")
async def is_latest_roots(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Whether each id is a root that is current at ``timestamp``."""
    cg = graph_of(request, table_id)
    ids = ids_field(await json_body(request), "node_ids")
    latest = cg.is_latest_roots(ids, query_float(request, "timestamp"))
    return json_reply(request, {"is_latest": [bool(v) for v in latest]})


@router.post(V1 + "/root_timestamps")
async def root_timestamps(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Creation (or, with ``latest``, last-valid) timestamps of roots in float seconds."""
    cg = graph_of(request, table_id)
    ids = ids_field(await json_body(request), "node_ids")
    ts = cg.get_root_timestamps(
        ids, query_bool(request, "latest", False), query_float(request, "timestamp")
    )
    return json_reply(request, {"timestamp": [float(v) for v in ts]})


# ------------------------------------------------------------------------------ hierarchy
@router.get(V1 + "/node/{node_id}/children")
def children(
    table_id: str, node_id: int, request: Request, user: User = Depends(_view)
) -> Response:
    """Children of a node (empty for supervoxels)."""
    cg = graph_of(request, table_id)
    return json_reply(request, {"children_ids": id_list(cg.get_children(node_id))})


@router.get(V1 + "/node/{node_id}/leaves")
def leaves(table_id: str, node_id: int, request: Request, user: User = Depends(_view)) -> Response:
    """Supervoxels (or ``stop_layer`` nodes) under a node, optionally within ``bounds``."""
    cg = graph_of(request, table_id)
    stop = leaf_layer(request)
    return json_reply(
        request, {"leaf_ids": id_list(cg.get_leaves(node_id, query_bounds(request), stop))}
    )


async def _leaves_many(table_id: str, request: Request) -> Response:
    cg = graph_of(request, table_id)
    ids = ids_field(await json_body(request), "node_ids")
    stop = leaf_layer(request)
    bounds = query_bounds(request)
    return json_reply(
        request, {str(int(n)): id_list(cg.get_leaves(int(n), bounds, stop)) for n in ids}
    )


@router.post(V1 + "/node/leaves_many")
async def leaves_many(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Leaves of several nodes: ``{"<node>": [leaves]}``."""
    return await _leaves_many(table_id, request)


@router.post(V1 + "/leaves_many")
async def leaves_many_alias(
    table_id: str, request: Request, user: User = Depends(_view)
) -> Response:
    """Alias of ``/node/leaves_many``."""
    return await _leaves_many(table_id, request)


@router.post(V1 + "/minimal_covering_nodes")
async def minimal_covering_nodes(
    table_id: str, request: Request, user: User = Depends(_view)
) -> Response:
    """Smallest set of nodes covering the given nodes (their L2 nodes here), as uint64 bytes."""
    cg = graph_of(request, table_id)
    ids = ids_field(await json_body(request), "node_ids")
    l2 = np.unique(cg.get_roots(ids, None, 2))
    l2 = l2[l2 != 0]
    if query_bool(request, "as_array", True):
        return uint64_reply(l2)
    return json_reply(request, id_list(l2))


@router.get(V1 + "/node/{node_id}/subgraph")
def subgraph(
    table_id: str, node_id: int, request: Request, user: User = Depends(_view)
) -> Response:
    """Supervoxel edges of a root with affinities and areas."""
    cg = graph_of(request, table_id)
    return json_reply(request, cg.subgraph(node_id, query_bounds(request)))


@router.get(V1 + "/node/{node_id}/lvl2_graph")
def lvl2_graph(
    table_id: str, node_id: int, request: Request, user: User = Depends(_view)
) -> Response:
    """L2 edge graph of a root; ``Used-Bounds`` tells whether ``bounds`` was applied."""
    cg = graph_of(request, table_id)
    bounds = query_bounds(request)
    edges = cg.level2_graph(node_id, bounds)
    return json_reply(
        request,
        {"edge_graph": edges},
        headers={"Used-Bounds": "True" if bounds is not None else "False"},
    )


@router.get(V1 + "/node/{node_id}/contact_sites")
async def contact_sites(
    table_id: str, node_id: int, request: Request, user: User = Depends(_view)
) -> Response:
    """Contact sites of a root with other roots (cells touching across a face)."""
    cg = graph_of(request, table_id)
    r = cg.roots.get(node_id)
    if r is None:
        raise PCGError(400, f"{node_id} is not a valid root id")
    bounds = query_bounds(request)
    idx = cg.in_bounds(r.members, bounds)
    member_labels = set(int(i) + 1 for i in idx)
    sites: dict[str, list[list[Any]]] = {}
    shape = np.asarray(cg.grid_shape)
    for i in idx:
        cells = cg.sv_cells[cg.sv_cell_offsets[i] : cg.sv_cell_offsets[i + 1]]
        for c in cells:
            for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                nb = c + np.asarray(d)
                if np.any(nb < 0) or np.any(nb >= shape):
                    continue
                lab = int(cg.labels[tuple(nb)])
                if lab == 0 or lab in member_labels:
                    continue
                partner = int(cg.get_roots([cg.sv_ids[lab - 1]])[0])
                pos = ((c + nb + 1) * cg.cell_size // 2 * cg.resolution).tolist()
                sites.setdefault(str(partner), []).append([1, pos])
    return json_reply(
        request,
        {"contact_sites": sites, "contact_site_metadata": {"root_id": node_id, "units": "nm"}},
    )


# ------------------------------------------------------------------------------ edits
async def _locked(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an edit in a worker thread under the world lock (keeps the event loop free)."""
    world = request.app.state.world

    def run() -> Any:
        with world.lock:
            return fn(*args, **kwargs)

    return await run_in_threadpool(run)


def _op_reply(request: Request, op: Any) -> Response:
    return json_reply(
        request, {"operation_id": op.id, "new_root_ids": [int(r) for r in op.new_roots]}
    )


@router.post(V1 + "/merge")
async def merge(table_id: str, request: Request, user: User = Depends(_edit)) -> Response:
    """Merge two objects at two points ``[[id, x, y, z], [id, x, y, z]]`` (nm)."""
    cg = graph_of(request, table_id)
    points = two_points(
        await json_body(request),
        cg,
        "merge body must be exactly two points [node_id, x, y, z]",
        "merge points",
    )
    dist = query_int(request, "chebyshev_distance", 3)
    world = request.app.state.world

    def run() -> Any:
        with world.lock:
            a = cg.find_sv_in_node(int(points[0][0]), points[0][1:])
            b = cg.find_sv_in_node(int(points[1][0]), points[1][1:])
            ca = np.asarray(cg.get_chunk_coordinates(a))
            cb = np.asarray(cg.get_chunk_coordinates(b))
            if dist is not None and np.abs(ca - cb).max() > dist:
                raise PCGError(
                    400, f"Chebyshev distance between merge points exceeds {dist} chunks"
                )
            return cg.merge(points, user_id=user.id)

    return _op_reply(request, await run_in_threadpool(run))


async def _split_input(request: Request, cg: ChunkedGraph) -> tuple[list, list]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise PCGError(400, 'split body must be {"sources": [...], "sinks": [...]}')
    unknown = sorted(set(body) - {"sources", "sinks"})
    if unknown:
        raise PCGError(400, f"unknown key {unknown[0]!r} in split body")
    return voxel_points(body.get("sources"), cg, "sources"), voxel_points(
        body.get("sinks"), cg, "sinks"
    )


@router.post(V1 + "/split")
async def split(table_id: str, request: Request, user: User = Depends(_edit)) -> Response:
    """Split by min cut between sources and sinks (nm points)."""
    cg = graph_of(request, table_id)
    sources, sinks = await _split_input(request, cg)
    mincut = query_bool(request, "mincut", True)
    op = await _locked(request, cg.split, sources, sinks, user_id=user.id, mincut=mincut)
    return _op_reply(request, op)


@router.post(V1 + "/graph/split_preview")
async def split_preview(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Components a split would produce."""
    cg = graph_of(request, table_id)
    sources, sinks = await _split_input(request, cg)
    return json_reply(request, cg.preview_split(sources, sinks))


async def _op_id(request: Request) -> int:
    body = await json_body(request)
    if not isinstance(body, dict) or "operation_id" not in body:
        raise PCGError(400, 'body must be {"operation_id": n}')
    try:
        return int(body["operation_id"])
    except (TypeError, ValueError) as exc:
        raise PCGError(400, f"operation_id must be an int, got {body['operation_id']!r}") from exc


@router.post(V1 + "/undo")
async def undo(table_id: str, request: Request, user: User = Depends(_edit)) -> Response:
    """Undo an operation (mints new roots)."""
    cg = graph_of(request, table_id)
    op_id = await _op_id(request)
    return _op_reply(request, await _locked(request, cg.undo, op_id, user_id=user.id))


@router.post(V1 + "/redo")
async def redo(table_id: str, request: Request, user: User = Depends(_edit)) -> Response:
    """Redo an undone operation (mints new roots)."""
    cg = graph_of(request, table_id)
    op_id = await _op_id(request)
    return _op_reply(request, await _locked(request, cg.redo, op_id, user_id=user.id))


@router.post("/meshing/api/v1/table/{table_id}/remeshing")
async def remeshing(table_id: str, request: Request, user: User = Depends(_edit)) -> Response:
    """Accept a remeshing request (no meshes in the sandbox)."""
    graph_of(request, table_id)
    ids_field(await json_body(request), "new_lvl2_ids")
    return Response(b"", media_type="application/json")


# ------------------------------------------------------------------------------ history
@router.get(V1 + "/root/{root_id}/merge_log")
def merge_log(
    table_id: str, root_id: int, request: Request, user: User = Depends(_view)
) -> Response:
    """Merges in a root's history."""
    return json_reply(request, graph_of(request, table_id).merge_log(root_id))


@router.get(V1 + "/root/{root_id}/change_log")
def change_log(
    table_id: str, root_id: int, request: Request, user: User = Depends(_view)
) -> Response:
    """Summary of a root's history (``n_splits``, ``n_mergers``, ``operations_ids`` ...)."""
    cg = graph_of(request, table_id)
    return json_reply(request, cg.change_log(root_id, query_bool(request, "filtered", False)))


def _change_log_json(world: Any, cg: ChunkedGraph, root_id: int, filtered: bool) -> str:
    rows = cg.tabular_change_log(root_id, filtered)
    for row in rows:
        u = world.auth.user_by_id(row["user_id"])
        row["user_name"] = u.name if u else ""
        row["user_affiliation"] = ", ".join(u.affiliations) if u else ""
    cols = (
        ["operation_id", "timestamp", "user_id", "before_root_ids", "after_root_ids", "is_merge"]
        + ([] if filtered else ["in_neuron", "is_relevant"])
        + ["user_name", "user_affiliation"]
    )
    df = pd.DataFrame(rows, columns=cols)
    df["timestamp"] = pd.to_datetime(df["timestamp"].astype(float), unit="s", utc=True)
    return df.to_json()


@router.get(V1 + "/tabular_change_log_many")
async def tabular_change_log_many(
    table_id: str, request: Request, user: User = Depends(_view)
) -> Response:
    """Per-root change-log DataFrames as JSON strings (GET with a JSON body)."""
    cg = graph_of(request, table_id)
    ids = ids_field(await json_body(request), "root_ids")
    filtered = query_bool(request, "filtered", True)
    world = request.app.state.world
    return json_reply(
        request, {str(int(r)): _change_log_json(world, cg, int(r), filtered) for r in ids}
    )


def _lineage_reply(request: Request, cg: ChunkedGraph, root_ids: Any) -> Response:
    """Lineage graph of ``root_ids`` within the request's ``timestamp_past``/``_future``, as
    node-link JSON with ``links`` (the key the real service writes)."""
    g = cg.lineage_graph(
        root_ids, query_float(request, "timestamp_past"), query_float(request, "timestamp_future")
    )
    return json_reply(request, nx.node_link_data(g, edges="links"))


@router.post(V1 + "/lineage_graph_multiple")
async def lineage_graph_multiple(
    table_id: str, request: Request, user: User = Depends(_view)
) -> Response:
    """Lineage graph (node-link JSON with ``links``) of several roots."""
    cg = graph_of(request, table_id)
    return _lineage_reply(request, cg, ids_field(await json_body(request), "root_ids"))


@router.get(V1 + "/root/{root_id}/lineage_graph")
def lineage_graph(
    table_id: str, root_id: int, request: Request, user: User = Depends(_view)
) -> Response:
    """Lineage graph of one root."""
    return _lineage_reply(request, graph_of(request, table_id), [root_id])


@router.get(V1 + "/past_id_mapping")
async def past_id_mapping(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Past ids of roots at ``timestamp_past`` (GET with a JSON body)."""
    cg = graph_of(request, table_id)
    ids = ids_field(await json_body(request), "root_ids")
    past, future = cg.past_id_mapping(
        ids,
        query_float(request, "timestamp_past", 0.0),
        query_float(request, "timestamp_future", time.time()),
    )
    return json_reply(
        request,
        {
            "past_id_map": {str(k): v for k, v in past.items()},
            "future_id_map": {str(k): v for k, v in future.items()},
        },
    )


@router.get(V1 + "/delta_roots")
def delta_roots(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Roots created and replaced by operations in ``(timestamp_past, timestamp_future]``."""
    cg = graph_of(request, table_id)
    past = query_float(request, "timestamp_past")
    if past is None:
        raise PCGError(400, "timestamp_past is required")
    old, new = cg.delta_roots(past, query_float(request, "timestamp_future", time.time()))
    return json_reply(request, {"old_roots": id_list(old), "new_roots": id_list(new)})


@router.get(V1 + "/valid_nodes")
async def valid_nodes(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Ids written within ``[start_timestamp, end_timestamp]`` (GET with a JSON body)."""
    cg = graph_of(request, table_id)
    ids = ids_field(await json_body(request), "node_ids")
    valid = cg.valid_nodes(
        ids,
        query_float(request, "start_timestamp"),
        query_float(request, "end_timestamp", time.time()),
    )
    return json_reply(request, {"valid_roots": id_list(valid)})


def _operation_details(cg: ChunkedGraph, op_id: int) -> dict[str, Any]:
    op = cg.get_operation(op_id)
    d: dict[str, Any] = {
        "roots": [int(r) for r in op.new_roots],
        "user": str(op.user_id),
        "timestamp": iso_utc(op.ts),
        "operation_ts": iso_utc(op.ts),
        "operation_status": 0,
        "operation_exception": "",
    }
    if op.added_edges:
        d["added_edges"] = [list(e) for e in op.added_edges]
    if op.removed_edges:
        d["removed_edges"] = [list(e) for e in op.removed_edges]
    for key in (
        "source_ids",
        "sink_ids",
        "source_coords",
        "sink_coords",
        "bb_offset",
        "undo_operation_id",
        "redo_operation_id",
    ):
        if key in op.meta:
            d[key] = op.meta[key]
    return d


@router.get(V1 + "/operation_details")
def operation_details(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Operation-log entries keyed by operation id string (``operation_ids`` is a JSON list)."""
    cg = graph_of(request, table_id)
    raw = request.query_params.get("operation_ids")
    if raw is None:
        raise PCGError(400, "operation_ids is required")
    try:
        op_ids = [int(v) for v in orjson.loads(raw)]
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise PCGError(400, f"operation_ids must be a JSON list of ints, got {raw!r}") from exc
    return json_reply(request, {str(i): _operation_details(cg, i) for i in op_ids})


@router.get(V1 + "/user_operations")
def user_operations(table_id: str, request: Request, user: User = Depends(_admin)) -> Response:
    """Operations of a user in a time window as ``DataFrame.to_json()`` (superadmin)."""
    cg = graph_of(request, table_id)
    user_id = query_int(request, "user_id")
    start = query_float(request, "start_time", 0.0) or 0.0
    end = query_float(request, "end_time", time.time())
    include_undone = query_bool(request, "include_undone", False)
    rows = []
    for op in cg.operations:
        if user_id is not None and user_id > 0 and op.user_id != user_id:
            continue
        if not start <= op.ts <= (end if end is not None else np.inf):
            continue
        if op.undone and not include_undone:
            continue
        rows.append(
            {
                "operation_id": op.id,
                "timestamp": op.ts,
                "user_id": op.user_id,
                "operation_type": op.kind,
                "is_undone": op.undone,
            }
        )
    df = pd.DataFrame(
        rows, columns=["operation_id", "timestamp", "user_id", "operation_type", "is_undone"]
    )
    df["timestamp"] = pd.to_datetime(df["timestamp"].astype(float), unit="s", utc=True)
    return json_reply(request, orjson.loads(df.to_json()))


@router.get(V1 + "/oldest_timestamp")
def oldest_timestamp(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Earliest operation timestamp minus 0.5 s, as ISO text."""
    cg = graph_of(request, table_id)
    delimiter = request.query_params.get("delimiter", " ")
    iso = dt.datetime.fromtimestamp(cg.oldest_timestamp(), tz=dt.timezone.utc).isoformat(delimiter)
    return json_reply(request, {"iso": iso})


@router.post(V1 + "/graph/find_path")
async def find_path(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Shortest L2 path between two points of one root."""
    cg = graph_of(request, table_id)
    pts = two_points(
        await json_body(request),
        cg,
        "find_path body must be two points [root_id, x, y, z]",
        "find_path points",
    )
    if int(pts[0][0]) != int(pts[1][0]):
        raise PCGError(400, "find_path points must belong to the same root")
    return json_reply(request, cg.find_path(int(pts[0][0]), pts[0][1:], pts[1][1:]))
