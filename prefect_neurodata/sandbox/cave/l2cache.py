"""L2 cache of the CAVE stand-in (PCGL2Cache v1, reference §1.7, §6.2).

Attributes of each level-2 id are derived from the chunkedgraph model's cells (size, surface
area, representative coordinate in absolute nm, chunk-boundary counts, PCA of the cell centres).
Unknown ids answer ``{}``; an unknown attribute name answers 500 ``KeyError`` like the real one.

Example:
    >>> sorted(ATTRIBUTE_METADATA)[:2]
    ['area_nm2', 'chunk_intersect_count']
"""

from __future__ import annotations

import gzip
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response

from .auth import User, current_user, require
from .chunkedgraph import ChunkedGraph
from .chunkedgraph_requests import maybe_gzip
from .errors import CaveHTTPError

ATTRIBUTE_METADATA: dict[str, str] = dict(ChunkedGraph.L2_ATTRIBUTES)
router = APIRouter()
_L = "/l2cache/api/v1"
_view = require("view", namespace="table")


def _reply(request: Request, obj: Any) -> Response:
    return maybe_gzip(request, Response(orjson.dumps(obj), media_type="application/json"))


@router.get(_L + "/attribute_metadata")
def attribute_metadata(user: User = Depends(current_user)) -> dict[str, str]:
    """Attribute names and their numpy dtypes."""
    return ATTRIBUTE_METADATA


@router.get(_L + "/table_mapping")
def table_mapping(request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    """PCG tables that have an L2 cache."""
    world = request.app.state.world
    t = world.config.pcg_table
    return {
        t: {
            "cv_path": f"graphene://{world.local_url(request)}/segmentation/table/{t}",
            "l2cache_id": f"l2cache_{t}_v1",
        }
    }


@router.post(_L + "/table/{table_id}/attributes")
async def attributes(table_id: str, request: Request, user: User = Depends(_view)) -> Response:
    """Attributes of ``{"l2_ids": [...]}`` keyed by id string."""
    world = request.app.state.world
    if table_id != world.config.pcg_table:
        raise CaveHTTPError(404, f"no L2 cache for table {table_id}")
    cg = world.require_chunkedgraph()
    data = await request.body()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        data = gzip.decompress(data)
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CaveHTTPError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or "l2_ids" not in body:
        raise CaveHTTPError(400, 'body must be {"l2_ids": [...]}')
    try:
        ids = np.unique(np.asarray([int(v) for v in body["l2_ids"]], dtype=np.uint64))
    except (TypeError, ValueError, OverflowError) as exc:
        raise CaveHTTPError(400, f"l2_ids must be a list of uint64 ids: {exc}") from exc
    names_raw = request.query_params.get("attribute_names")
    names = [n for n in names_raw.split(",") if n] if names_raw else None
    try:
        result = cg.l2_attributes([int(i) for i in ids], names)
    except KeyError as exc:
        raise CaveHTTPError(500, body={"code": 500, "message": repr(exc), "traceback": []}) from exc
    if request.query_params.get("int64_as_str", "").lower() == "true":
        result = {
            k: {a: (str(v) if isinstance(v, int) else v) for a, v in d.items()}
            for k, d in result.items()
        }
    return _reply(request, result)
