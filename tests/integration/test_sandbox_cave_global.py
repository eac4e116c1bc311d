"""Raw-HTTP tests of the CAVE stand-in's global services, chunkedgraph and L2 cache.

The server runs as a real process (``python -m prefect_neurodata.sandbox.cave``) on two loopback
ports with a SQLite file in a temporary workdir; it is seeded small. A local copy of the
chunkedgraph model built from the same parameters is used only to pick coordinates.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import requests

from prefect_neurodata.sandbox.cave.chunkedgraph import ChunkedGraph
from prefect_neurodata.sandbox.cave.chunkedgraph_types import WorldParams

ADMIN = "a" * 32
USER = "b" * 32
VIEWER = "c" * 32
NOPERM = "d" * 32
TOS = "e" * 32
DS = "minnie_sandbox"
AV = "minnie_sandbox_av"
PCG = "minnie_sandbox_pcg"
BASE_TS = 1_750_000_000.0
SEED = {
    "synapses": 3000,
    "seed": 11,
    "neurons": 40,
    "neuron_length": 150,
    "merges": 6,
    "splits": 3,
    "base_timestamp": BASE_TS,
}
RES = np.array([4.0, 4.0, 40.0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cave:
    """Handle on the running server."""

    def __init__(self, workdir: Path, db_url: str | None = None) -> None:
        self.workdir = workdir
        self.db_url = db_url
        self.gport = _free_port()
        self.lport = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def g(self) -> str:
        return f"http://127.0.0.1:{self.gport}"

    @property
    def l(self) -> str:  # noqa: E743
        return f"http://127.0.0.1:{self.lport}"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            NEURODATA_SANDBOX_CAVE_WORKDIR=str(self.workdir),
            NEURODATA_SANDBOX_CAVE_ADMIN_TOKEN=ADMIN,
            NEURODATA_SANDBOX_CAVE_USER_TOKEN=USER,
            NEURODATA_SANDBOX_CAVE_VIEWER_TOKEN=VIEWER,
            NEURODATA_SANDBOX_CAVE_NOPERM_TOKEN=NOPERM,
            NEURODATA_SANDBOX_CAVE_TOS_TOKEN=TOS,
        )
        env.pop("NEURODATA_SANDBOX_CAVE_DB_URL", None)
        if self.db_url:
            env["NEURODATA_SANDBOX_CAVE_DB_URL"] = self.db_url
        env.pop("NEURODATA_SANDBOX_FAULTS_CAVE", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect_neurodata.sandbox.cave",
                "--host",
                "127.0.0.1",
                "--global-port",
                str(self.gport),
                "--local-port",
                str(self.lport),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "server.log", "ab"),  # noqa: SIM115
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "server.log").read_text())
            with contextlib.suppress(requests.ConnectionError):
                ok = [
                    requests.get(u + "/__sandbox__/health", timeout=2).status_code
                    for u in (self.g, self.l)
                ]
                if ok == [200, 200]:
                    return
            time.sleep(0.2)
        raise RuntimeError(
            "CAVE sandbox did not start: " + (self.workdir / "server.log").read_text()
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def cave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cave]:
    server = Cave(tmp_path_factory.mktemp("cave"))
    server.start()
    try:
        r = requests.post(server.g + "/__sandbox__/seed", json=SEED, timeout=300)
        assert r.status_code == 200, r.text
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def model() -> ChunkedGraph:
    """Same world as the server's (deterministic from the seed parameters)."""
    return ChunkedGraph.build(
        WorldParams(
            seed=11,
            n_neurons=40,
            neuron_length=150,
            n_merges=6,
            n_splits=3,
            base_timestamp=BASE_TS,
            history_span_s=20 * 86400.0,
        )
    )


def H(token: str = USER) -> dict[str, str]:  # noqa: N802
    return {"Authorization": f"Bearer {token}"}


def cg_url(cave: Cave, path: str) -> str:
    return f"{cave.l}/segmentation/api/v1/table/{PCG}{path}"


def nm(model: ChunkedGraph, svid: int) -> list[float]:
    return (model.sv_position(svid) * RES).tolist()


def roots_of(cave: Cave, svids: list[int], ts: float | None = None) -> list[int]:
    params = {"timestamp": ts if ts is not None else time.time()}
    r = requests.post(
        cg_url(cave, "/roots_binary"),
        params=params,
        headers=H(),
        data=np.asarray(svids, dtype="<u8").tobytes(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, dtype="<u8").astype(np.uint64).tolist()


# ------------------------------------------------------------------------------ handshake / info
def test_version_endpoints(cave: Cave) -> None:
    assert requests.get(cave.g + "/info/version", timeout=5).json() == "4.3.3"
    assert requests.get(cave.g + "/schema/versions", timeout=5).json() == [2]
    assert requests.get(cave.l + "/segmentation/api/versions", timeout=5).json() == [0, 1]
    assert requests.get(cave.l + "/segmentation/api/version", timeout=5).json() == "2.21.1"
    assert requests.get(cave.g + "/nglstate/api/v1/version", timeout=5).json() == "0.4.0"


def test_info_service(cave: Cave) -> None:
    assert requests.get(cave.g + "/info/api/v2/datastacks", headers=H(), timeout=5).json() == [DS]
    rec = requests.get(cave.g + f"/info/api/v2/datastack/full/{DS}", headers=H(), timeout=5).json()
    assert rec["local_server"] == cave.l
    assert rec["segmentation_source"] == f"graphene://{cave.l}/segmentation/table/{PCG}"
    assert rec["aligned_volume"]["name"] == AV
    assert rec["synapse_table"] == "synapses"
    assert rec["viewer_resolution_z"] == 40.0
    assert rec["viewer_site"].startswith(cave.g)
    mirror = requests.get(
        cave.g + f"/info/api/v2/datastack/full/{DS}",
        params={"image_source_name": "mirror"},
        headers=H(),
        timeout=5,
    ).json()
    assert mirror["aligned_volume"]["image_source"] != rec["aligned_volume"]["image_source"]
    assert requests.get(cave.g + "/info/api/v2/aligned_volume", headers=H(), timeout=5).json() == [
        AV
    ]
    av = requests.get(cave.g + f"/info/api/v2/aligned_volume/{AV}", headers=H(), timeout=5).json()
    assert av["id"] == 1
    assert requests.get(cave.g + "/info/api/v2/aligned_volume/id/1", timeout=5).json() == av
    assert requests.get(
        cave.g + f"/info/api/v2/aligned_volume/{AV}/datastacks", headers=H(), timeout=5
    ).json() == [DS]
    srcs = requests.get(
        cave.g + f"/info/api/v2/datastack/{DS}/image_sources", headers=H(), timeout=5
    ).json()
    assert {s["name"] for s in srcs} == {"default", "mirror"}
    r = requests.get(cave.g + "/info/api/v2/datastack/full/nope", headers=H(), timeout=5)
    assert r.status_code == 404 and "nope" in r.json()["message"]


# ------------------------------------------------------------------------------ auth
def test_auth_errors(cave: Cave) -> None:
    url = cave.g + f"/info/api/v2/datastack/full/{DS}"
    r = requests.get(url, headers={"Origin": "http://x"}, timeout=5)
    assert r.status_code == 401
    assert r.json() == {"error": "no_token", "message": "Unauthorized - No Token Provided"}
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="')
    r = requests.get(url, timeout=5, allow_redirects=False)
    assert r.status_code == 302 and "/auth/api/v1/authorize?redirect=" in r.headers["Location"]
    followed = requests.get(url, timeout=5)
    assert followed.history and followed.history[0].status_code == 302
    r = requests.get(url, headers=H("f" * 32), timeout=5)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = requests.get(url, headers={"Authorization": f"Token {USER}"}, timeout=5)
    assert r.status_code == 400 and r.json()["error"] == "bad_auth_header"
    assert "WWW-Authenticate" in r.headers
    r = requests.get(url, headers=H(NOPERM), timeout=5)
    assert r.status_code == 403
    assert r.json() == {
        "error": "missing_permission",
        "message": f"Missing permission: view for dataset {DS}",
        "data": {"required_permission": "view", "auth_dataset": DS},
    }
    r = requests.get(url, headers=H(TOS), timeout=5)
    assert r.status_code == 403 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == "missing_tos" and body["data"]["tos_form_url"].startswith(cave.g)
    # token by cookie and by query parameter
    assert requests.get(url, cookies={"middle_auth_token": USER}, timeout=5).status_code == 200
    assert requests.get(url, params={"middle_auth_token": USER}, timeout=5).status_code == 200


def test_viewer_refused_on_writes_and_admin_routes(cave: Cave, model: ChunkedGraph) -> None:
    sv = int(model.sv_ids[0])
    root = roots_of(cave, [sv])[0]
    body = [[root, *nm(model, sv)], [root, *nm(model, sv)]]
    r = requests.post(cg_url(cave, "/merge"), json=body, headers=H(VIEWER), timeout=10)
    assert r.status_code == 403
    assert r.json()["error"] == "missing_permission"
    assert r.json()["data"]["required_permission"] == "edit"
    r = requests.get(cg_url(cave, "/user_operations"), headers=H(USER), timeout=10)
    assert r.status_code == 403 and r.text == "Requires superadmin privilege."
    r = requests.get(
        f"{cave.l}/segmentation/api/v1/table/other_table/node/{sv}/root", headers=H(), timeout=5
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_table_id"


def test_auth_endpoints(cave: Cave) -> None:
    blob = requests.get(cave.g + "/auth/api/v1/user/cache", headers=H(VIEWER), timeout=5).json()
    assert blob["permissions_v2"] == {DS: ["view"]} and blob["admin"] is False
    toks = requests.get(cave.g + "/auth/api/v1/user/token", headers=H(), timeout=5).json()
    assert toks[0]["token"] == USER and toks[0]["user_id"] == 2
    users = requests.get(
        cave.g + "/auth/api/v1/user", params={"id": "1,3"}, headers=H(), timeout=5
    ).json()
    assert [u["id"] for u in users] == [1, 3] and "email" not in users[0]
    users = requests.get(
        cave.g + "/auth/api/v1/user", params={"id": "2"}, headers=H(ADMIN), timeout=5
    ).json()
    assert users[0]["email"] and "admin" in users[0]
    r = requests.get(cave.g + "/auth/api/v1/group/1/user", headers=H(), timeout=5)
    assert r.status_code == 403
    members = requests.get(cave.g + "/auth/api/v1/group/1/user", headers=H(ADMIN), timeout=5)
    assert {m["id"] for m in members.json()} == {1, 2, 5}


def test_strict_paths_and_methods(cave: Cave) -> None:
    r = requests.get(cave.g + "/info/api/v2/nothing", headers=H(), timeout=5)
    assert r.status_code == 404 and "message" in r.json()
    r = requests.delete(cave.g + "/info/api/v2/datastacks", headers=H(), timeout=5)
    assert r.status_code == 405 and "message" in r.json()
    r = requests.get(
        cave.g + "/info/api/v2/datastacks/", headers=H(), timeout=5, allow_redirects=False
    )
    assert r.status_code == 404  # no trailing-slash redirects


# ------------------------------------------------------------------------------ schema
def test_schema_service(cave: Cave) -> None:
    names = requests.get(cave.g + "/schema/api/v2/type", timeout=5).json()
    for needed in (
        "synapse",
        "cell_type_local",
        "bound_tag",
        "bound_double_tag",
        "nucleus_detection",
        "representative_point",
        "reference_tag",
    ):
        assert needed in names
    syn = requests.get(cave.g + "/schema/api/v2/type/synapse", timeout=5).json()
    assert syn["$ref"] == "#/definitions/SynapseSchema"
    cls = syn["definitions"]["SynapseSchema"]
    assert cls["required"] == ["ctr_pt", "post_pt", "pre_pt"]
    assert cls["properties"]["pre_pt"] == {
        "type": "object",
        "$ref": "#/definitions/BoundSpatialPoint",
    }
    bsp = syn["definitions"]["BoundSpatialPoint"]
    assert bsp["additionalProperties"] is False and bsp["required"] == ["position"]
    multi = requests.post(
        cave.g + "/schema/api/v2/types",
        params={"schema_names": "bound_tag,reference_tag"},
        timeout=5,
    ).json()
    assert set(multi) == {"bound_tag", "reference_tag"}
    assert (
        "target_id" in multi["reference_tag"]["definitions"]["ReferenceTagAnnotation"]["required"]
    )
    everything = requests.get(cave.g + "/schema/api/v2/types_all", timeout=5).json()
    assert set(everything) == set(names)
    assert requests.get(cave.g + "/schema/api/v2/type/nope", timeout=5).status_code == 404


# ------------------------------------------------------------------------------ state
def test_state_service(cave: Cave) -> None:
    raw = b'{"layers": [{"segments": ["864691135217871271"]}], "n": 1.5}'
    r = requests.post(cave.g + "/nglstate/api/v1/post", data=raw, headers=H(), timeout=5)
    assert r.status_code == 200
    url = r.json()
    assert url.startswith(cave.g + "/nglstate/api/v1/")
    sid = int(url.rsplit("/", 1)[1])
    assert len(str(sid)) == 16
    got = requests.get(cave.g + f"/nglstate/api/v1/{sid}", headers=H(), timeout=5)
    assert got.content == raw
    r = requests.post(cave.g + "/nglstate/api/v1/post/1234", data=raw, headers=H(), timeout=5)
    assert r.status_code == 403
    r = requests.post(cave.g + "/nglstate/api/v1/post/1234", data=raw, headers=H(ADMIN), timeout=5)
    assert r.json().endswith("/nglstate/api/v1/1234")
    assert requests.get(cave.g + "/nglstate/api/v1/1234", headers=H(), timeout=5).content == raw
    assert requests.get(cave.g + "/nglstate/api/v1/999", headers=H(), timeout=5).status_code == 404
    r = requests.post(cave.g + "/nglstate/api/v1/post", data=b"{nope", headers=H(), timeout=5)
    assert r.status_code == 400
    props = b'{"@type": "neuroglancer_segment_properties", "inline": {"ids": ["1"]}}'
    r = requests.post(cave.g + "/nglstate/api/v1/property/post", data=props, headers=H(), timeout=5)
    pid = int(r.json().rsplit("/", 1)[1])
    got = requests.get(cave.g + f"/nglstate/api/v1/property/{pid}/info", headers=H(), timeout=5)
    assert got.content == props


# ------------------------------------------------------------------------------ chunkedgraph
def test_table_info(cave: Cave, model: ChunkedGraph) -> None:
    info = requests.get(f"{cave.l}/segmentation/table/{PCG}/info", headers=H(), timeout=5).json()
    assert info["graph"]["n_layers"] == model.n_layers
    assert info["scales"][0]["resolution"] == [4.0, 4.0, 40.0]
    assert info["graph"]["spatial_bit_masks"]["1"] == 10
    assert info["app"]["supported_api_versions"] == [0, 1]


def test_roots_binary_and_json(cave: Cave, model: ChunkedGraph) -> None:
    rng = np.random.default_rng(0)
    _, svs = model.sample_points(5000, rng)
    ids = np.concatenate([svs, np.array([0, 12345], dtype=np.uint64)])
    ts = time.time()
    got = np.asarray(roots_of(cave, ids.tolist(), ts), dtype=np.uint64)
    assert (got[-2:] == 0).all()
    assert np.array_equal(got[:-2], model.get_roots(svs, ts))
    past = BASE_TS + 1
    assert np.array_equal(
        np.asarray(roots_of(cave, svs.tolist(), past), dtype=np.uint64), model.get_roots(svs, past)
    )
    r = requests.post(
        cg_url(cave, "/roots_binary"),
        params={"timestamp": ts, "stop_layer": 2},
        headers={**H(), "Accept-Encoding": "gzip"},
        data=svs[:100].astype("<u8").tobytes(),
        timeout=10,
    )
    l2 = np.frombuffer(r.content, dtype="<u8")
    assert (l2 >> 56 == 2).all()
    r = requests.post(cg_url(cave, "/roots_binary"), headers=H(), data=b"123", timeout=5)
    assert r.status_code == 400 and set(r.json()) == {
        "timestamp",
        "duration",
        "code",
        "message",
        "traceback",
    }
    sv = int(svs[0])
    one = requests.get(
        cg_url(cave, f"/node/{sv}/root"), params={"timestamp": ts}, headers=H(), timeout=5
    ).json()
    assert one == {"root_id": int(got[0])}
    many = requests.post(
        cg_url(cave, "/roots"),
        json={"node_ids": [int(x) for x in svs[:10]]},
        headers=H(),
        timeout=5,
    ).json()
    assert many["root_ids"] == [int(x) for x in got[:10]]
    as_str = requests.post(
        cg_url(cave, "/roots"),
        params={"int64_as_str": True},
        json={"node_ids": [sv]},
        headers=H(),
        timeout=5,
    ).json()
    assert as_str["root_ids"] == [str(int(got[0]))]
    # a gzip request body is accepted
    r = requests.post(
        cg_url(cave, "/roots"),
        data=gzip.compress(json.dumps({"node_ids": [sv]}).encode()),
        headers={**H(), "Content-Encoding": "gzip"},
        timeout=5,
    )
    assert r.json()["root_ids"] == [int(got[0])]


def test_hierarchy_endpoints(cave: Cave, model: ChunkedGraph) -> None:
    sv = int(model.sv_ids[3])
    root = roots_of(cave, [sv])[0]
    leaves = requests.get(cg_url(cave, f"/node/{root}/leaves"), headers=H(), timeout=5).json()
    assert sv in leaves["leaf_ids"]
    l2 = requests.get(
        cg_url(cave, f"/node/{root}/leaves"), params={"stop_layer": 2}, headers=H(), timeout=5
    ).json()["leaf_ids"]
    children = requests.get(cg_url(cave, f"/node/{root}/children"), headers=H(), timeout=5).json()[
        "children_ids"
    ]
    assert sorted(children) == sorted(l2)
    svs_of_l2 = requests.get(
        cg_url(cave, f"/node/{l2[0]}/children"), headers=H(), timeout=5
    ).json()["children_ids"]
    assert set(svs_of_l2) <= set(leaves["leaf_ids"])
    assert requests.get(cg_url(cave, f"/node/{sv}/children"), headers=H(), timeout=5).json() == {
        "children_ids": []
    }
    lo = model.sv_bbox_min[model.sv_index([sv])[0]]
    hi = model.sv_bbox_max[model.sv_index([sv])[0]]
    bounds = "_".join(f"{a}-{b}" for a, b in zip(lo, hi, strict=True))
    bounded = requests.get(
        cg_url(cave, f"/node/{root}/leaves"), params={"bounds": bounds}, headers=H(), timeout=5
    ).json()["leaf_ids"]
    assert sv in bounded and len(bounded) <= len(leaves["leaf_ids"])
    lm = requests.post(
        cg_url(cave, "/node/leaves_many"), json={"node_ids": [root]}, headers=H(), timeout=5
    ).json()
    assert lm == {str(root): leaves["leaf_ids"]}
    mcn = requests.post(
        cg_url(cave, "/minimal_covering_nodes"),
        params={"as_array": True},
        json={"node_ids": [sv]},
        headers=H(),
        timeout=5,
    )
    assert np.frombuffer(mcn.content, dtype="<u8").tolist() == [
        int(model.get_roots([sv], stop_layer=2)[0])
    ]
    sub = requests.get(cg_url(cave, f"/node/{root}/subgraph"), headers=H(), timeout=5).json()
    assert set(sub) == {"nodes", "affinities", "areas"} and len(sub["nodes"]) == len(
        sub["affinities"]
    )
    r = requests.get(cg_url(cave, f"/node/{root}/lvl2_graph"), headers=H(), timeout=5)
    assert r.headers["Used-Bounds"] == "False"
    g = nx.Graph()
    g.add_nodes_from(l2)
    g.add_edges_from(tuple(e) for e in r.json()["edge_graph"])
    assert nx.is_connected(g)
    r = requests.get(
        cg_url(cave, f"/node/{root}/lvl2_graph"), params={"bounds": bounds}, headers=H(), timeout=5
    )
    assert r.headers["Used-Bounds"] == "True"
    cs = requests.get(cg_url(cave, f"/node/{root}/contact_sites"), headers=H(), timeout=5).json()
    assert "contact_sites" in cs
    a_pt, b_pt = nm(model, int(leaves["leaf_ids"][0])), nm(model, int(leaves["leaf_ids"][-1]))
    path = requests.post(
        cg_url(cave, "/graph/find_path"),
        json=[[root, *a_pt], [root, *b_pt]],
        headers=H(),
        timeout=10,
    ).json()
    assert path["l2_path"][0] in l2 and path["l2_path"][-1] in l2
    assert len(path["centroids_list"]) == len(path["l2_path"])


def test_history_endpoints_on_seeded_edits(cave: Cave, model: ChunkedGraph) -> None:
    op = next(o for o in model.operations if o.kind == "merge")
    new = op.new_roots[0]
    details = requests.get(
        cg_url(cave, "/operation_details"),
        params={"operation_ids": json.dumps([op.id])},
        headers=H(),
        timeout=5,
    ).json()
    d = details[str(op.id)]
    assert d["added_edges"] == [list(e) for e in op.added_edges] and d["roots"] == [new]
    assert d["operation_status"] == 0 and d["user"] == str(op.user_id)
    lin = requests.post(
        cg_url(cave, "/lineage_graph_multiple"),
        json={"root_ids": [new]},
        params={"timestamp_past": BASE_TS - 10, "timestamp_future": time.time()},
        headers=H(),
        timeout=5,
    ).json()
    g = nx.node_link_graph(lin, edges="links")
    for old in op.old_roots:
        assert g.has_edge(old, new)
        assert g.nodes[old]["operation_id"] == op.id
    single = requests.get(cg_url(cave, f"/root/{new}/lineage_graph"), headers=H(), timeout=5)
    assert single.status_code == 200 and "links" in single.json()
    past = requests.get(
        cg_url(cave, "/past_id_mapping"),
        json={"root_ids": [new]},
        params={"timestamp_past": op.ts - 1, "timestamp_future": op.ts + 1},
        headers=H(),
        timeout=5,
    ).json()
    assert sorted(past["past_id_map"][str(new)]) == sorted(op.old_roots)
    latest = requests.post(
        cg_url(cave, "/is_latest_roots"), json={"node_ids": op.old_roots}, headers=H(), timeout=5
    ).json()
    assert latest == {"is_latest": [False] * len(op.old_roots)}
    latest_then = requests.post(
        cg_url(cave, "/is_latest_roots"),
        params={"timestamp": op.ts - 1},
        json={"node_ids": op.old_roots},
        headers=H(),
        timeout=5,
    ).json()
    assert all(latest_then["is_latest"])
    ts = requests.post(
        cg_url(cave, "/root_timestamps"), json={"node_ids": [new]}, headers=H(), timeout=5
    ).json()
    assert ts["timestamp"][0] == pytest.approx(op.ts)
    ts_latest = requests.post(
        cg_url(cave, "/root_timestamps"),
        params={"latest": True, "timestamp": time.time()},
        json={"node_ids": op.old_roots[:1]},
        headers=H(),
        timeout=5,
    ).json()
    assert ts_latest["timestamp"][0] == pytest.approx(op.ts)
    delta = requests.get(
        cg_url(cave, "/delta_roots"),
        params={"timestamp_past": op.ts - 0.0005, "timestamp_future": op.ts},
        headers=H(),
        timeout=5,
    ).json()
    assert new in delta["new_roots"] and set(op.old_roots) <= set(delta["old_roots"])
    r = requests.get(cg_url(cave, "/delta_roots"), headers=H(), timeout=5)
    assert r.status_code == 400 and "timestamp_past" in r.json()["message"]
    valid = requests.get(
        cg_url(cave, "/valid_nodes"),
        json={"node_ids": [new, 5]},
        params={"start_timestamp": op.ts - 1, "end_timestamp": op.ts + 1},
        headers=H(),
        timeout=5,
    ).json()
    assert valid == {"valid_roots": [new]}
    cl = requests.get(cg_url(cave, f"/root/{new}/change_log"), headers=H(), timeout=5).json()
    assert set(cl) == {"n_splits", "n_mergers", "user_info", "operations_ids", "past_ids"}
    assert op.id in cl["operations_ids"]
    tab = requests.get(
        cg_url(cave, "/tabular_change_log_many"),
        json={"root_ids": [new]},
        params={"filtered": False},
        headers=H(),
        timeout=5,
    ).json()
    df = pd.DataFrame(json.loads(tab[str(new)]))
    assert op.id in df["operation_id"].tolist()
    assert {"user_name", "user_affiliation", "in_neuron", "is_relevant", "is_merge"} <= set(
        df.columns
    )
    assert int(df["timestamp"].max()) == int(op.ts * 1000)  # epoch milliseconds
    ml = requests.get(cg_url(cave, f"/root/{new}/merge_log"), headers=H(), timeout=5).json()
    assert [list(e) for e in op.added_edges] in ml["merge_edges"]
    uo = requests.get(
        cg_url(cave, "/user_operations"),
        params={"include_undone": True},
        headers=H(ADMIN),
        timeout=5,
    ).json()
    assert op.id in [int(v) for v in uo["operation_id"].values()]
    oldest = requests.get(cg_url(cave, "/oldest_timestamp"), headers=H(), timeout=5).json()
    assert oldest["iso"].startswith("20")


def _contact_pair(cave: Cave, model: ChunkedGraph) -> tuple[int, int, int, int]:
    for ca, cb in model._contacts:
        a = int(model.sv_ids[model.labels[tuple(ca)] - 1])
        b = int(model.sv_ids[model.labels[tuple(cb)] - 1])
        ra, rb = roots_of(cave, [a, b])
        if ra != rb:
            return a, b, ra, rb
    raise AssertionError("no contact")


def test_edits_over_http_and_restart(cave: Cave, model: ChunkedGraph) -> None:
    a, b, ra, rb = _contact_pair(cave, model)
    merge = requests.post(
        cg_url(cave, "/merge"),
        params={"priority": False},
        json=[[ra, *nm(model, a)], [rb, *nm(model, b)]],
        headers=H(),
        timeout=10,
    )
    assert merge.status_code == 200, merge.text
    m = merge.json()
    assert set(m) == {"operation_id", "new_root_ids"} and len(m["new_root_ids"]) == 1
    new = m["new_root_ids"][0]
    assert roots_of(cave, [a, b]) == [new, new]
    again = requests.post(
        cg_url(cave, "/merge"),
        json=[[new, *nm(model, a)], [new, *nm(model, b)]],
        headers=H(),
        timeout=10,
    )
    assert again.status_code == 400
    split_body = {"sources": [[new, *nm(model, a)]], "sinks": [[new, *nm(model, b)]]}
    prev = requests.post(
        cg_url(cave, "/graph/split_preview"), json=split_body, headers=H(), timeout=10
    ).json()
    assert prev["illegal_split"] is False and a in prev["supervoxel_connected_components"][0]
    s = requests.post(cg_url(cave, "/split"), json=split_body, headers=H(), timeout=10).json()
    ra2, rb2 = roots_of(cave, [a, b])
    assert ra2 != rb2 and {ra2, rb2} <= set(s["new_root_ids"])
    bad = requests.post(
        cg_url(cave, "/split"), json={**split_body, "extra": 1}, headers=H(), timeout=10
    )
    assert bad.status_code == 400 and "extra" in bad.json()["message"]
    u = requests.post(
        cg_url(cave, "/undo"), json={"operation_id": s["operation_id"]}, headers=H(), timeout=10
    ).json()
    assert roots_of(cave, [a, b]) == [u["new_root_ids"][0]] * 2
    assert (
        requests.post(
            cg_url(cave, "/undo"), json={"operation_id": s["operation_id"]}, headers=H(), timeout=10
        ).status_code
        == 400
    )
    rd = requests.post(
        cg_url(cave, "/redo"), json={"operation_id": s["operation_id"]}, headers=H(), timeout=10
    ).json()
    after = roots_of(cave, [a, b])
    assert after[0] != after[1] and set(after) <= set(rd["new_root_ids"])
    remesh = requests.post(
        f"{cave.l}/meshing/api/v1/table/{PCG}/remeshing",
        json={"new_lvl2_ids": []},
        headers=H(),
        timeout=5,
    )
    assert remesh.status_code == 200
    # a restarted server rebuilds the same world, API edits included
    rng = np.random.default_rng(5)
    _, svs = model.sample_points(2000, rng)
    before = roots_of(cave, svs.tolist())
    ops_before = requests.get(cave.g + "/__sandbox__/world", timeout=5).json()["operations"]
    cave.stop()
    cave.start()
    assert roots_of(cave, svs.tolist()) == before
    assert roots_of(cave, [a, b]) == after
    assert requests.get(cave.g + "/__sandbox__/world", timeout=5).json()["operations"] == ops_before


# ------------------------------------------------------------------------------ l2cache
def test_l2cache(cave: Cave, model: ChunkedGraph) -> None:
    meta = requests.get(cave.l + "/l2cache/api/v1/attribute_metadata", headers=H(), timeout=5)
    assert set(meta.json()) >= {"size_nm3", "area_nm2", "rep_coord_nm", "pca", "pca_val"}
    mapping = requests.get(cave.l + "/l2cache/api/v1/table_mapping", headers=H(), timeout=5).json()
    assert mapping[PCG]["cv_path"] == f"graphene://{cave.l}/segmentation/table/{PCG}"
    sv = int(model.sv_ids[7])
    root = roots_of(cave, [sv])[0]
    l2 = requests.get(
        cg_url(cave, f"/node/{root}/leaves"), params={"stop_layer": 2}, headers=H(), timeout=5
    ).json()["leaf_ids"]
    url = cave.l + f"/l2cache/api/v1/table/{PCG}/attributes"
    data: dict[str, Any] = requests.post(
        url, json={"l2_ids": l2[:5] + [l2[0], 77]}, headers=H(), timeout=5
    ).json()
    assert set(data) == {str(x) for x in l2[:5]} | {"77"}
    assert data["77"] == {}
    first = data[str(l2[0])]
    assert first["size_nm3"] > 0 and len(first["rep_coord_nm"]) == 3
    assert len(first["chunk_intersect_count"]) == 2
    picked = requests.post(
        url,
        params={"attribute_names": "size_nm3,area_nm2"},
        json={"l2_ids": l2[:1]},
        headers=H(),
        timeout=5,
    ).json()
    assert set(picked[str(l2[0])]) == {"size_nm3", "area_nm2"}
    bad = requests.post(
        url, params={"attribute_names": "nope"}, json={"l2_ids": l2[:1]}, headers=H(), timeout=5
    )
    assert bad.status_code == 500


# ------------------------------------------------------------------------------ postgres
def test_postgres_backend_persists_world_and_states(
    postgres_url: str, tmp_path: Path, model: ChunkedGraph
) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS cave_global_it"))
        conn.execute(sa.text("CREATE DATABASE cave_global_it"))
    admin.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/cave_global_it"
    server = Cave(tmp_path, db_url=url)
    server.start()
    try:
        seed = {**SEED, "synapses": 500}
        r = requests.post(server.g + "/__sandbox__/seed", json=seed, timeout=300)
        assert r.status_code == 200, r.text
        a, b, ra, rb = _contact_pair(server, model)
        m = requests.post(
            cg_url(server, "/merge"),
            json=[[ra, *nm(model, a)], [rb, *nm(model, b)]],
            headers=H(),
            timeout=10,
        ).json()
        raw = b'{"k": "1"}'
        sid = int(
            requests.post(server.g + "/nglstate/api/v1/post", data=raw, headers=H(), timeout=5)
            .json()
            .rsplit("/", 1)[1]
        )
        server.stop()
        assert not list(tmp_path.glob("*.sqlite"))  # nothing went to the SQLite default
        server.start()
        assert roots_of(server, [a, b]) == m["new_root_ids"] * 2
        got = requests.get(server.g + f"/nglstate/api/v1/{sid}", headers=H(), timeout=5)
        assert got.content == raw
    finally:
        server.stop()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n_ops = conn.execute(sa.text("SELECT count(*) FROM cave_cg_operations")).scalar_one()
    engine.dispose()
    assert n_ops == 1


# ------------------------------------------------------------------------------ faults
def test_fault_injection_is_mounted(cave: Cave) -> None:
    url = cave.g + "/__sandbox__/faults"
    assert requests.get(url, timeout=5).json() == {}
    cfg = {"rate": 1.0, "statuses": [503], "seed": 1, "retry_after": 2}
    assert requests.put(url, json=cfg, timeout=5).status_code == 200
    try:
        r = requests.get(cave.l + "/segmentation/api/version", timeout=5)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert r.json()["code"] == 503
        # admin routes are never faulted
        assert requests.get(cave.g + "/__sandbox__/health", timeout=5).json()["seeded"] is True
    finally:
        assert requests.put(url, json={}, timeout=5).status_code == 200
    assert requests.get(cave.l + "/segmentation/api/version", timeout=5).status_code == 200
