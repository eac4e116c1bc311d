"""Contract tests over real HTTP: chunkedgraph, info, auth, schema, state and L2 cache clients
against the CAVE stand-in of the sandbox (``sandbox`` fixture).

Edits (merge + undo) run once, at the end of this module, on roots found through the API.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import requests

from prefect_neurodata.clients.cave import (
    AuthException,
    CAVEclient,
    CAVEclientFull,
    CAVEclientGlobal,
)
from prefect_neurodata.clients.cave.base import AuthorizationError
from prefect_neurodata.clients.http import RetryPolicy, ServiceError, TransportConfig

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def env(sandbox) -> dict[str, str]:
    return sandbox.env


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> None:
    """No real token file is read and the datastack map is written to a temporary HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture(scope="module")
def client(env) -> CAVEclientFull:
    c = CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
    )
    assert isinstance(c, CAVEclientFull)
    return c


@pytest.fixture(scope="module")
def patient_client(env) -> CAVEclientFull:
    """A client whose retries outlast the fault tests' 50 % fault rate.

    The default policy (3 retries) gives up on a request with probability 0.5**4 = 1/16 at
    that rate; with concurrent chunks the order of requests, and so which ones the seeded
    faults hit, varies between runs, so the default client would fail some runs by design.
    Thirty quick retries make giving up a 1e-9 event while every fault is still retried.
    """
    c = CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
        transport=TransportConfig(
            retry=RetryPolicy(max_retries=30, backoff_factor=0.01, backoff_max=0.05)
        ),
    )
    assert isinstance(c, CAVEclientFull)
    return c


@pytest.fixture(scope="module")
def history(client) -> dict:
    """Roots found through the chunkedgraph API: a latest root with its leaves, and an edited
    object's old and new roots."""
    cg = client.chunkedgraph
    oldest = cg.get_oldest_timestamp()
    old_roots, new_roots = cg.get_delta_roots(oldest, dt.datetime.now(UTC))
    assert new_roots.size > 0, "the sandbox chunkedgraph should have an edit history"
    latest_mask = cg.is_latest_roots(new_roots)
    latest = new_roots[latest_mask]
    assert latest.size > 0
    root = int(latest[0])
    leaves = cg.get_leaves(root)
    assert leaves.size > 0
    return {
        "oldest": oldest,
        "old_roots": old_roots,
        "new_roots": new_roots,
        "latest": latest,
        "root": root,
        "leaves": leaves,
    }


# -- info / topology -----------------------------------------------------------------------------


def test_datastack_record_and_local_server(client, env) -> None:
    assert client.local_server == env["NEURODATA_CAVE_LOCAL_URL"].rstrip("/")
    info = client.info.get_datastack_info()
    assert info["local_server"].rstrip("/") == client.local_server
    assert client.info.segmentation_source().startswith("graphene://")
    assert env["NEURODATA_CAVE_DATASTACK"] in client.info.get_datastacks()
    assert client.info.aligned_volume_name in client.info.get_aligned_volumes()
    assert env["NEURODATA_CAVE_DATASTACK"] in client.info.get_datastacks_by_aligned_volume()
    assert client.info.viewer_resolution().shape == (3,)
    assert client.info.server_version is not None


def test_global_client(env) -> None:
    g = CAVEclient(
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"], auth_token=env["NEURODATA_CAVE_TOKEN"]
    )
    assert isinstance(g, CAVEclientGlobal)
    assert env["NEURODATA_CAVE_DATASTACK"] in g.info.get_datastacks()


# -- auth ----------------------------------------------------------------------------------------


def test_bad_token_is_an_auth_error_without_the_token(env) -> None:
    bad = "0" * 32
    with pytest.raises(AuthException) as info:
        CAVEclient(
            env["NEURODATA_CAVE_DATASTACK"],
            server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
            auth_token=bad,
            write_server_cache=False,
        )
    assert bad not in str(info.value)


def test_missing_token_is_an_auth_error(env) -> None:
    with pytest.raises(AuthException):
        CAVEclient(
            env["NEURODATA_CAVE_DATASTACK"],
            server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
            write_server_cache=False,
        )


def test_auth_client_calls(client) -> None:
    tokens = client.auth.get_tokens()
    assert isinstance(tokens, list)
    users = client.auth.get_user_information([1])
    assert isinstance(users, list) and users and users[0]["id"] == 1


# -- schema --------------------------------------------------------------------------------------


def test_schema_service(client) -> None:
    names = client.schema.get_schemas()
    assert "synapse" in names
    definition = client.schema.schema_definition("synapse")
    assert "definitions" in definition
    multi = client.schema.schema_definition_multi(["synapse", "bound_tag"])
    assert multi is not None and set(multi) >= {"synapse", "bound_tag"}
    with pytest.raises(ServiceError) as info:
        client.schema.schema_definition("no_such_schema")
    assert info.value.status_code == 404


# -- state ---------------------------------------------------------------------------------------


def test_state_roundtrip(client) -> None:
    big = 2**60 + 12345
    state = {"layers": [{"type": "segmentation", "segments": [np.uint64(big)]}], "n": 3}
    state_id = client.state.upload_state_json(state)
    assert isinstance(state_id, int) and state_id > 0
    back = client.state.get_state_json(state_id)
    assert back["layers"][0]["segments"] == [str(big)]
    assert back["n"] == 3
    url = client.state.build_neuroglancer_url(state_id, target_site="mainline")
    assert url.endswith(f"/nglstate/api/v1/{state_id}")


# -- chunkedgraph --------------------------------------------------------------------------------


def test_roots_of_leaves_are_the_root(client, history) -> None:
    cg = client.chunkedgraph
    leaves = history["leaves"]
    roots = cg.get_roots(leaves)
    assert roots.dtype == np.uint64
    assert set(roots.tolist()) == {history["root"]}
    one = cg.get_root_id(int(leaves[0]))
    assert int(one) == history["root"]
    l2 = cg.get_root_id(int(leaves[0]), level2=True)
    assert int(l2) != history["root"]


def test_chunkedgraph_ids_concatenate_exactly_with_query_table_root_ids(client, history) -> None:
    """Issue 11 item 7: the chunkedgraph's id lists are int64 like caveclient 5.25's, so joining
    them with `query_table`'s root ids keeps every 18-digit id exact (uint64 + int64 would give
    float64 and merge neighbouring ids)."""
    cg = client.chunkedgraph
    table = client.materialize.query_table(
        "synapses", limit=50, select_columns=["id", "pre_pt_root_id"]
    )["pre_pt_root_id"]
    latest = cg.get_latest_roots(int(history["new_roots"][0]))
    _, new_roots = cg.get_delta_roots(history["oldest"], dt.datetime.now(UTC))
    one = cg.get_root_id(int(history["leaves"][0]))
    assert (latest.dtype, new_roots.dtype, type(one)) == (np.int64, np.int64, np.int64)
    pieces = [latest, new_roots, np.array([one]), history["leaves"]]
    expected = [int(v) for piece in pieces for v in piece] + [int(v) for v in table]
    assert all(len(str(v)) >= 17 for v in expected)  # beyond float64's 15-16 exact digits

    joined = np.concatenate([*pieces, table.to_numpy()])
    assert joined.dtype == np.int64
    assert joined.tolist() == expected
    frame = pd.concat([pd.Series(piece) for piece in pieces] + [table], ignore_index=True)
    assert frame.dtype.kind == "i"  # int64, or Int64 when the table column is nullable
    assert frame.tolist() == expected
    assert frame.nunique() == len(set(expected))


def test_bulk_roots_chunked_match_single_request(client, history, monkeypatch) -> None:
    from prefect_neurodata.clients.cave import chunkedgraph

    cg = client.chunkedgraph
    svs = np.concatenate([history["leaves"], np.array([0], dtype=history["leaves"].dtype)])
    ts = dt.datetime.now(UTC)
    whole = cg.get_roots(svs, timestamp=ts)
    monkeypatch.setattr(chunkedgraph, "ROOTS_CHUNK_SIZE", max(1, len(svs) // 3))
    chunked = cg.get_roots(svs, timestamp=ts)
    assert whole.tolist() == chunked.tolist()
    assert whole[-1] == 0


def test_bulk_roots_chunks_are_in_flight_together_on_the_stand_in(
    client, history, sandbox, monkeypatch
) -> None:
    from prefect_neurodata.clients.cave import chunkedgraph

    cg = client.chunkedgraph
    svs = history["leaves"]
    ts = dt.datetime.now(UTC)
    whole = cg.get_roots(svs, timestamp=ts)
    size = max(1, len(svs) // 4)
    monkeypatch.setattr(chunkedgraph, "ROOTS_CHUNK_SIZE", size)
    requests_sent = min(chunkedgraph.ROOTS_MAX_WORKERS, len(svs) // size)
    assert requests_sent >= 4
    stats_url = f"{cg.server_address}/__sandbox__/stats"
    try:
        # Each request waits 300 ms on the stand-in, so requests sent together overlap there;
        # the stand-in's counters restart with this configuration.
        sandbox.faults("cave", latency_ms=300)
        chunked = cg.get_roots(svs, timestamp=ts)
        stats = requests.get(stats_url, timeout=10).json()
    finally:
        sandbox.faults("cave")
    assert chunked.dtype == np.uint64
    assert chunked.tolist() == whole.tolist()
    assert stats["requests"] == requests_sent
    assert stats["in_flight_peak"] == requests_sent  # all of them on the stand-in at once


def test_bulk_roots_chunked_under_faults_match_single_request(
    patient_client, history, sandbox, monkeypatch
) -> None:
    from prefect_neurodata.clients.cave import chunkedgraph

    cg = patient_client.chunkedgraph
    svs = np.concatenate([history["leaves"], np.array([0], dtype=history["leaves"].dtype)])
    ts = dt.datetime.now(UTC)
    whole = cg.get_roots(svs, timestamp=ts)
    monkeypatch.setattr(chunkedgraph, "ROOTS_CHUNK_SIZE", max(1, len(svs) // 4))
    try:
        sandbox.faults("cave", rate=0.5, statuses=[503, 502, 429], seed=5, retry_after=0)
        for _ in range(3):
            assert cg.get_roots(svs, timestamp=ts).tolist() == whole.tolist()
        stats = requests.get(f"{cg.server_address}/__sandbox__/stats", timeout=10).json()
    finally:
        sandbox.faults("cave")
    assert sum(stats["faults"].values()) > 0  # the faults did happen and were retried


def test_hierarchy(client, history) -> None:
    cg = client.chunkedgraph
    children = cg.get_children(history["root"])
    assert children.size > 0
    l2_ids = cg.get_leaves(history["root"], stop_layer=2)
    assert l2_ids.size > 0
    edges = cg.level2_chunk_graph(history["root"])
    assert isinstance(edges, list)
    assert cg.segmentation_info["graph"]["n_layers"] >= 3
    assert len(cg.base_resolution) == 3


def test_history_queries(client, history) -> None:
    cg = client.chunkedgraph
    root = int(history["new_roots"][0])
    graph = cg.get_lineage_graph(root, as_nx_graph=True)
    assert isinstance(graph, nx.DiGraph) and root in graph.nodes
    as_dict = cg.get_lineage_graph(root)
    assert {"nodes", "links"} <= set(as_dict)
    stamps = cg.get_root_timestamps([root])
    assert stamps[0].tzinfo is not None
    assert stamps[0] >= history["oldest"]
    latest = cg.get_latest_roots(root)
    assert latest.size > 0 and cg.is_latest_roots(latest).all()
    original = cg.get_original_roots(root)
    assert original.size > 0
    past = cg.get_past_ids([root], timestamp_past=history["oldest"])
    assert root in past["past_id_map"]
    log = cg.get_change_log(root)
    assert {"n_splits", "n_mergers", "operations_ids", "past_ids"} <= set(log)
    tabular = cg.get_tabular_change_log([root])
    assert root in tabular and "operation_id" in tabular[root].columns
    if log["operations_ids"]:
        details = cg.get_operation_details(log["operations_ids"][:2])
        assert str(log["operations_ids"][0]) in details
    merges = cg.get_merge_log(root)
    assert "merge_edges" in merges


def test_validity_queries(client, history) -> None:
    cg = client.chunkedgraph
    ids = [0, history["root"], int(history["leaves"][0])]
    valid = cg.is_valid_nodes(ids)
    assert valid.tolist() == [False, True, True]
    assert cg.is_latest_roots([history["root"]]).tolist() == [True]
    if history["old_roots"].size:
        assert not cg.is_latest_roots(history["old_roots"][:1])[0]


def test_faults_are_retried(patient_client, history, sandbox) -> None:
    cg = patient_client.chunkedgraph
    try:
        sandbox.faults("cave", rate=0.5, statuses=[503, 502, 429], seed=11, retry_after=0)
        for _ in range(5):
            roots = cg.get_roots(history["leaves"])
            assert set(roots.tolist()) == {history["root"]}
    finally:
        sandbox.faults("cave")


def test_version_pin_sets_the_default_timestamp(env, client, history) -> None:
    versions = client.materialize.get_versions()
    assert versions
    version = min(versions)
    pinned = CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
        version=version,
    )
    assert pinned.version == version
    stamp = client.materialize.get_timestamp(version)
    assert pinned.timestamp == stamp
    assert pinned.chunkedgraph.timestamp == stamp
    leaves = history["leaves"][:50]
    assert (
        pinned.chunkedgraph.get_roots(leaves).tolist()
        == client.chunkedgraph.get_roots(leaves, timestamp=stamp).tolist()
    )
    with pytest.raises(ValueError, match="not available"):
        pinned.version = 10**6


# -- l2cache -------------------------------------------------------------------------------------


def test_l2cache(client, history) -> None:
    l2 = client.l2cache
    assert l2.has_cache()
    assert "size_nm3" in l2.attributes
    l2_ids = client.chunkedgraph.get_leaves(history["root"], stop_layer=2)[:5]
    data = l2.get_l2data(l2_ids, attributes=["size_nm3", "rep_coord_nm"])
    assert set(data) == {str(int(i)) for i in l2_ids}


# -- edits (last: they change the world) ---------------------------------------------------------


def test_viewer_cannot_edit(env, history) -> None:
    viewer = CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_VIEWER_TOKEN"],
        write_server_cache=False,
    )
    with pytest.raises((AuthorizationError, ServiceError)) as info:
        viewer.chunkedgraph.undo_operation(1)
    assert info.value.status_code in (401, 403)
    assert env["NEURODATA_CAVE_VIEWER_TOKEN"] not in str(info.value)


def _close_pair(client, roots) -> tuple[list[int], np.ndarray]:
    """Two supervoxels of different latest roots whose L2 nodes lie close together, with their
    positions in base voxels (found through the chunkedgraph and the L2 cache)."""
    cg = client.chunkedgraph
    res = np.asarray(cg.base_resolution, dtype=float)
    chunk_nm = np.asarray(cg.segmentation_info["graph"]["chunk_size"], dtype=float) * res
    nodes = []
    for root in roots:
        l2_ids = cg.get_leaves(int(root), stop_layer=2)
        data = client.l2cache.get_l2data(l2_ids, attributes=["rep_coord_nm"])
        for l2 in l2_ids:
            coord = data.get(str(int(l2)), {}).get("rep_coord_nm")
            if coord is not None:
                nodes.append((int(root), int(l2), np.asarray(coord, dtype=float)))
    best = None
    for i, (root_a, l2_a, xyz_a) in enumerate(nodes):
        for root_b, l2_b, xyz_b in nodes[i + 1 :]:
            if root_a == root_b:
                continue
            distance = float(np.max(np.abs(xyz_a - xyz_b) / chunk_nm))
            if best is None or distance < best[0]:
                best = (distance, l2_a, xyz_a, l2_b, xyz_b)
    assert best is not None and best[0] < 2, "no two latest roots with nearby L2 nodes"
    _, l2_a, xyz_a, l2_b, xyz_b = best
    svs = [int(cg.get_leaves(l2_a)[0]), int(cg.get_leaves(l2_b)[0])]
    return svs, np.vstack([xyz_a, xyz_b]) / res


def test_preview_split_and_merge_then_undo(client, history) -> None:
    cg = client.chunkedgraph
    svs, coords = _close_pair(client, history["latest"][:20])
    before = cg.get_roots(svs)
    assert before[0] != before[1]
    preview = cg.preview_split(
        [coords[0] * np.asarray(cg.base_resolution)],
        [coords[1] * np.asarray(cg.base_resolution)],
        int(before[0]),
        source_supervoxels=[svs[0]],
        sink_supervoxels=[int(cg.get_leaves(int(before[0]))[-1])],
    )
    assert len(preview) == 3
    result = cg.do_merge(svs, coords, resolution=tuple(cg.base_resolution))
    assert result["new_root_ids"]
    new_root = int(result["new_root_ids"][0])
    assert cg.is_latest_roots([new_root]).tolist() == [True]
    assert set(cg.get_roots(svs).tolist()) == {new_root}
    assert not cg.is_latest_roots(before).any()
    undo = cg.undo_operation(result["operation_id"])
    assert len(undo["new_root_ids"]) == 2
    after = cg.get_roots(svs)
    assert after[0] != after[1]
    assert set(after.tolist()).isdisjoint(set(before.tolist()) | {new_root})


@pytest.fixture(scope="module", autouse=True)
def _faults_off(sandbox) -> Iterator[None]:
    yield
    sandbox.faults("cave")


def test_past_ids_answer_an_empty_future_map_like_pychunkedgraph(client, history) -> None:
    """The real service never fills future_id_map (issue 11 item 9); neither does the stand-in,
    even for a root whose lineage has edits."""
    cg = client.chunkedgraph
    candidates = [int(r) for r in history["new_roots"][:10]]
    edited = [r for r in candidates if cg.get_change_log(r)["operations_ids"]]
    assert edited, "the sandbox should have an edited root"
    past = cg.get_past_ids(edited[:3], timestamp_past=history["oldest"])
    assert past["future_id_map"] == {}
    for root in edited[:3]:
        assert len(past["past_id_map"][root]) >= 1
