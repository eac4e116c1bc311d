"""Shared constants and helpers for the CAVE client unit tests (``responses``-based)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import responses

GLOBAL = "https://global.test"
LOCAL = "https://local.test"
DATASTACK = "test_stack"
TABLE = "test_v1"
AV = "test_av"
TOKEN = "0123456789abcdef0123456789abcdef"

INFO_RECORD: dict[str, Any] = {
    "aligned_volume": {
        "id": 7,
        "name": AV,
        "display_name": "Test AV",
        "description": "d",
        "image_source": "precomputed://gs://bucket/em",
    },
    "segmentation_source": f"graphene://{LOCAL}/segmentation/table/{TABLE}",
    "skeleton_source": None,
    "analysis_database": None,
    "viewer_site": "https://ngl.test",
    "synapse_table": "synapses",
    "soma_table": None,
    "local_server": LOCAL,
    "description": "test",
    "viewer_resolution_x": 4.0,
    "viewer_resolution_y": 4.0,
    "viewer_resolution_z": 40.0,
}

PCG_INFO: dict[str, Any] = {
    "scales": [{"resolution": [8, 8, 40]}],
    "graph": {"n_layers": 6, "chunk_size": [64, 64, 64]},
    "app": {"supported_api_versions": [0, 1]},
}

CG_V1 = f"{LOCAL}/segmentation/api/v1/table/{TABLE}"


def query(call: Any) -> dict[str, list[str]]:
    """Query parameters of a recorded call."""
    return parse_qs(urlsplit(call.request.url).query, keep_blank_values=True)


def path(call: Any) -> str:
    """Scheme, host and path of a recorded call (no query)."""
    parts = urlsplit(call.request.url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def body_json(call: Any) -> Any:
    """The JSON body of a recorded call, parsed exactly (orjson)."""
    body = call.request.body
    if isinstance(body, str):
        body = body.encode()
    return orjson.loads(body)


def assert_auth(call: Any, token: str = TOKEN) -> None:
    """The call carried the Bearer header and the middle_auth_token cookie."""
    headers = call.request.headers
    assert headers["Authorization"] == f"Bearer {token}"
    assert f"middle_auth_token={token}" in headers.get("Cookie", "")


def add_info(rsps: responses.RequestsMock, record: dict | None = None) -> None:
    """Register the info-service answers a CAVEclient construction needs."""
    rsps.get(f"{GLOBAL}/info/api/v2/datastack/full/{DATASTACK}", json=record or INFO_RECORD)
    rsps.get(f"{GLOBAL}/info/version", json="4.3.3")


def add_cg_handshake(rsps: responses.RequestsMock, versions: list[int] | None = None) -> None:
    """Register the chunkedgraph api/versions and version answers."""
    rsps.get(f"{LOCAL}/segmentation/api/versions", json=versions or [0, 1])
    rsps.get(f"{LOCAL}/segmentation/api/version", json="2.21.1")
