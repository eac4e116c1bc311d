"""Request parsing and replies of the chunkedgraph (PyChunkedGraph) stand-in's routes.

Query parameters as the real service reads them (booleans, numbers, bounds, timestamps), JSON and
binary bodies, node-id lists and ``[node_id, x, y, z]`` points, and the replies: JSON (optionally
with int64 values as strings), raw uint64 and gzip. The routes live in
`prefect_neurodata.sandbox.cave.chunkedgraph_api`; the L2 cache stand-in shares `maybe_gzip`.
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import Request, Response

from .chunkedgraph import ChunkedGraph
from .errors import PCGError, parse_json_body

_Number = TypeVar("_Number", int, float)


def graph_of(request: Request, table_id: str) -> ChunkedGraph:
    """The chunkedgraph behind ``table_id`` (404 for another table, as the service answers)."""
    world = request.app.state.world
    if table_id != world.config.pcg_table:
        raise PCGError(404, f"Table {table_id} not found")
    return world.require_chunkedgraph()


def query_bool(request: Request, name: str, default: bool) -> bool:
    """Query parameter ``name`` as a boolean (the spellings the service accepts; 400 otherwise)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    val = raw.strip().lower()
    if val in ("true", "1", "yes", "t", "y"):
        return True
    if val in ("false", "0", "no", "f", "n", "none", ""):
        return False
    raise PCGError(400, f"{name} must be a boolean, got {raw!r}")


def query_number(
    request: Request,
    name: str,
    parse: Callable[[str], _Number],
    expected: str,
    default: _Number | None,
) -> _Number | None:
    """Query parameter ``name`` read by ``parse``; missing or empty gives ``default``.

    Args:
        request: The request whose query string is read.
        name: The parameter.
        parse: Converts the raw text; its ``ValueError`` answers 400.
        expected: What the 400 message says the value must be.
        default: The value of a missing or empty parameter.
    """
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise PCGError(400, f"{name} must be {expected}, got {raw!r}") from exc


def query_float(request: Request, name: str, default: float | None = None) -> float | None:
    """Query parameter ``name`` as float POSIX seconds (``default`` when missing or empty)."""
    return query_number(request, name, float, "a float POSIX timestamp", default)


def query_int(request: Request, name: str, default: int | None = None) -> int | None:
    """Query parameter ``name`` as an integer (``default`` when missing or empty)."""
    return query_number(request, name, int, "an integer", default)


def leaf_layer(request: Request) -> int:
    """``stop_layer`` of a leaves lookup: missing, empty or 0 mean supervoxels (layer 1)."""
    return query_int(request, "stop_layer", 1) or 1


def query_bounds(request: Request) -> np.ndarray | None:
    """The ``bounds`` query parameter (``"x0-x1_y0-y1_z0-z1"``) as a 3x2 array, or None."""
    raw = request.query_params.get("bounds")
    if raw is None or raw == "":
        return None
    try:
        parts = [[float(v) for v in axis.split("-")] for axis in raw.split("_")]
        arr = np.asarray(parts, dtype=np.float64)
    except ValueError as exc:
        raise PCGError(400, f"bounds must look like x0-x1_y0-y1_z0-z1, got {raw!r}") from exc
    if arr.shape != (3, 2):
        raise PCGError(400, f"bounds must look like x0-x1_y0-y1_z0-z1, got {raw!r}")
    return arr


async def raw_body(request: Request) -> bytes:
    """The request body, gunzipped when sent with ``Content-Encoding: gzip``."""
    data = await request.body()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        try:
            data = gzip.decompress(data)
        except OSError as exc:
            raise PCGError(400, f"request body is not valid gzip: {exc}") from exc
    return data


async def json_body(request: Request) -> Any:
    """The request body parsed as JSON (400 naming the problem when it is not)."""
    return parse_json_body(await raw_body(request), PCGError)


def ids_field(body: Any, key: str) -> np.ndarray:
    """The node-id list under ``key`` of a JSON body, as uint64 (400 when missing or not ids)."""
    if not isinstance(body, dict) or key not in body:
        raise PCGError(400, f"JSON body needs the key {key!r}")
    unknown = sorted(set(body) - {key})
    if unknown:
        raise PCGError(400, f"unknown key {unknown[0]!r} in JSON body")
    try:
        return np.asarray([int(v) for v in body[key]], dtype=np.uint64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PCGError(400, f"{key} must be a list of uint64 ids: {exc}") from exc


def json_reply(
    request: Request, obj: Any, status: int = 200, headers: dict | None = None
) -> Response:
    """``obj`` as JSON (``int64_as_str`` honoured), gzipped when the client accepts it."""
    if query_bool(request, "int64_as_str", False):
        obj = stringify_ints(obj)
    body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return maybe_gzip(request, Response(body, status, headers, media_type="application/json"))


def maybe_gzip(request: Request, response: Response) -> Response:
    """``response`` gzipped (fast level) when the request accepts gzip and the body is worth it.

    The PyChunkedGraph and L2 cache services compress their replies alike, so both stand-ins
    send theirs through here.
    """
    if "gzip" in request.headers.get("accept-encoding", "") and len(response.body) > 512:
        response.body = gzip.compress(response.body, compresslevel=1)
        response.headers["Content-Encoding"] = "gzip"
        response.headers["Content-Length"] = str(len(response.body))
    return response


def stringify_ints(obj: Any) -> Any:
    """``obj`` with every integer as a decimal string (the ``int64_as_str`` reply form)."""
    if isinstance(obj, dict):
        return {k: stringify_ints(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [stringify_ints(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [str(v) for v in obj.tolist()] if obj.dtype.kind in "iu" else obj.tolist()
    if isinstance(obj, int | np.integer) and not isinstance(obj, bool):
        return str(int(obj))
    return obj


def id_list(arr: Any) -> list[int]:
    """Node ids as plain Python ints (exact above 2**53 in JSON)."""
    return [int(v) for v in np.asarray(arr, dtype=np.uint64).tolist()]


def roots_at(request: Request, cg: ChunkedGraph, ids: Any) -> np.ndarray:
    """Roots of ``ids`` at the request's ``timestamp`` (default now), or their ancestors at
    its ``stop_layer``: the query parameters every root lookup reads."""
    return cg.get_roots(ids, query_float(request, "timestamp"), query_int(request, "stop_layer"))


def uint64_reply(ids: np.ndarray) -> Response:
    """``ids`` as raw little-endian uint64 bytes (the binary form of the root lookups)."""
    return Response(ids.astype("<u8").tobytes(), media_type="application/octet-stream")


def voxel_points(raw: Any, cg: ChunkedGraph, name: str) -> list[list[float]]:
    """``[[id, x_nm, y_nm, z_nm], ...]`` -> ``[[id, x_vx, y_vx, z_vx], ...]``."""
    if not isinstance(raw, list) or not raw:
        raise PCGError(400, f"{name} must be a non-empty list of [node_id, x, y, z]")
    out = []
    for p in raw:
        if not isinstance(p, list | tuple) or len(p) != 4:
            raise PCGError(400, f"{name} entries must be [node_id, x, y, z], got {p!r}")
        try:
            node = int(p[0])
            xyz = np.asarray([float(v) for v in p[1:]]) / cg.resolution
        except (TypeError, ValueError) as exc:
            raise PCGError(400, f"{name} entries must be numbers, got {p!r}") from exc
        out.append([node, *xyz.tolist()])
    return out


def two_points(body: Any, cg: ChunkedGraph, shape_error: str, name: str) -> list[list[float]]:
    """The two ``[node_id, x_nm, y_nm, z_nm]`` points of a merge or path body, in voxels.

    Args:
        body: The parsed JSON body.
        cg: The chunkedgraph (its resolution converts nm to voxels).
        shape_error: The 400 message when ``body`` is not a list of exactly two entries.
        name: What the points are called in the messages about one entry.
    """
    if not isinstance(body, list) or len(body) != 2:
        raise PCGError(400, shape_error)
    return voxel_points(body, cg, name)


def iso_utc(ts: float) -> str:
    """POSIX seconds as the service writes a UTC time (``2025-01-01 00:00:00+00:00``)."""
    return str(dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc))
