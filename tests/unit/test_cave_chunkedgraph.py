"""Chunkedgraph client: every endpoint's URL, method, params and body; exact ids with
caveclient 5.25's dtypes; ids outside [0, 2**63) refused before any request."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from collections.abc import Callable

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import responses

from prefect_neurodata.clients.cave import ServerIncompatibilityError, chunkedgraph
from prefect_neurodata.clients.cave.auth import AuthClient
from prefect_neurodata.clients.cave.chunkedgraph import (
    ChunkedGraphClient,
    ChunkedGraphClientV1,
    package_bounds,
    package_split_data,
    package_timestamp,
    root_id_int_list_check,
)
from prefect_neurodata.clients.http import ServiceError
from tests.cave_helpers import (
    CG_V1,
    LOCAL,
    PCG_INFO,
    TABLE,
    TOKEN,
    add_cg_handshake,
    assert_auth,
    body_json,
    path,
    query,
)

pytestmark = pytest.mark.usefixtures("cave_fast_retries", "cave_home")

BIG = 2**62 + 2**40 + 7  # above 2**53: any float detour would corrupt it
BIG2 = 2**60 + 1
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
T1 = dt.datetime(2024, 6, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def cg(cave_rsps) -> ChunkedGraphClientV1:
    add_cg_handshake(cave_rsps)
    client = ChunkedGraphClient(
        LOCAL, table_name=TABLE, auth_client=AuthClient(token=TOKEN, server_address=LOCAL)
    )
    cave_rsps.calls.reset()
    return client


def ts(value: dt.datetime) -> str:
    return repr(value.timestamp())


def test_factory_negotiates_v1(cave_rsps) -> None:
    add_cg_handshake(cave_rsps, versions=[0, 1])
    client = ChunkedGraphClient(LOCAL, table_name=TABLE)
    assert isinstance(client, ChunkedGraphClientV1)
    assert client.api_version == 1
    assert client.table_name == TABLE
    assert client.default_url_mapping == {"cg_server_address": LOCAL, "table_id": TABLE}
    # The API versions and the server version are asked together: either may land first.
    assert sorted(path(c) for c in cave_rsps.calls) == [
        f"{LOCAL}/segmentation/api/version",
        f"{LOCAL}/segmentation/api/versions",
    ]


def test_factory_asks_api_versions_and_server_version_at_once(cave_rsps) -> None:
    # Both answers wait for each other: asked one after the other, the barrier would break.
    barrier = threading.Barrier(2, timeout=5)

    def answer(body: str):
        def callback(request):
            barrier.wait()
            return 200, {}, body

        return callback

    cave_rsps.add_callback(responses.GET, f"{LOCAL}/segmentation/api/versions", answer("[0, 1]"))
    cave_rsps.add_callback(responses.GET, f"{LOCAL}/segmentation/api/version", answer('"2.21.1"'))
    auth = AuthClient(token=TOKEN, server_address=LOCAL)
    client = ChunkedGraphClient(LOCAL, table_name=TABLE, auth_client=auth)
    assert client.api_version == 1
    assert str(client.server_version) == "2.21.1"
    assert len(cave_rsps.calls) == 2
    for call in cave_rsps.calls:
        assert_auth(call)


@pytest.mark.parametrize("status", [500, 401])
def test_factory_raises_the_server_version_error_when_built(cave_rsps, status) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/api/versions", json=[0, 1])
    cave_rsps.get(f"{LOCAL}/segmentation/api/version", status=status, json={"message": "no"})
    with pytest.raises(ServiceError) as info:
        ChunkedGraphClient(LOCAL, table_name=TABLE, max_retries=0)
    assert info.value.status_code == status


def test_factory_unknown_server_version_is_none(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/api/versions", json=[0, 1])
    cave_rsps.get(f"{LOCAL}/segmentation/api/version", status=404)
    assert ChunkedGraphClient(LOCAL, table_name=TABLE).server_version is None


# -- roots ---------------------------------------------------------------------------------------


def test_get_roots_binary_exact_unique_and_zero(cg, cave_rsps) -> None:
    def answer(request):
        ids = np.frombuffer(request.body, dtype="<u8")
        return 200, {}, (ids + np.uint64(1)).astype("<u8").tobytes()

    cave_rsps.add_callback(responses.POST, f"{CG_V1}/roots_binary", callback=answer)
    svs = [BIG, 0, 5, BIG, 5]
    roots = cg.get_roots(svs, timestamp=T0, stop_layer=2)
    assert roots.dtype == np.uint64
    assert roots.tolist() == [BIG + 1, 0, 6, BIG + 1, 6]
    call = cave_rsps.calls[0]
    assert np.frombuffer(call.request.body, dtype="<u8").tolist() == [5, BIG]
    assert call.request.headers["Content-Type"] == "application/octet-stream"
    assert call.request.headers["Accept-Encoding"] == "identity"
    assert query(call) == {"stop_layer": ["2"], "timestamp": [ts(T0)]}
    assert_auth(call)


def test_get_roots_chunks_concurrently_in_order_at_one_timestamp(
    cg, cave_rsps, monkeypatch
) -> None:
    monkeypatch.setattr(chunkedgraph, "ROOTS_CHUNK_SIZE", 3)

    def answer(request):
        ids = np.frombuffer(request.body, dtype="<u8")
        return 200, {}, (ids * np.uint64(10)).astype("<u8").tobytes()

    cave_rsps.add_callback(responses.POST, f"{CG_V1}/roots_binary", callback=answer)
    svs = np.arange(1, 11, dtype=np.uint64)[::-1]
    roots = cg.get_roots(svs)
    assert roots.tolist() == (svs * np.uint64(10)).tolist()
    assert len(cave_rsps.calls) == 3  # 10 // 3 chunks of at least 3 ids, all at once
    stamps = {query(c)["timestamp"][0] for c in cave_rsps.calls}
    assert len(stamps) == 1


def test_get_roots_sends_every_chunk_at_once_in_input_order(cg, cave_rsps, monkeypatch) -> None:
    monkeypatch.setattr(chunkedgraph, "ROOTS_CHUNK_SIZE", 3)
    # All four chunks must be in flight together: sent one after the other, the first
    # request would wait at the barrier alone and break it.
    barrier = threading.Barrier(4, timeout=5)

    def answer(request):
        ids = np.frombuffer(request.body, dtype="<u8")
        barrier.wait()
        return 200, {}, (ids + np.uint64(BIG)).astype("<u8").tobytes()

    cave_rsps.add_callback(responses.POST, f"{CG_V1}/roots_binary", callback=answer)
    svs = np.array([9, 3, 14, 1, 12, 7, 2, 13, 5, 11, 4, 8, 6, 10], dtype=np.uint64)
    roots = cg.get_roots(svs, timestamp=T0)
    assert roots.dtype == np.uint64
    assert roots.tolist() == [int(v) + BIG for v in svs]
    bodies = [np.frombuffer(c.request.body, dtype="<u8").tolist() for c in cave_rsps.calls]
    assert sorted(len(b) for b in bodies) == [3, 3, 4, 4]  # 14 // 3 = 4 near-equal chunks
    assert sorted(bodies) == sorted(
        [svs[:4].tolist(), svs[4:8].tolist(), svs[8:11].tolist(), svs[11:].tolist()]
    )
    for call in cave_rsps.calls:
        assert query(call) == {"timestamp": [ts(T0)]}
        assert call.request.headers["Content-Type"] == "application/octet-stream"


def test_get_roots_splits_from_twice_the_chunk_size_on(cg, cave_rsps, monkeypatch) -> None:
    monkeypatch.setattr(chunkedgraph, "ROOTS_CHUNK_SIZE", 3)

    def answer(request):
        ids = np.frombuffer(request.body, dtype="<u8")
        return 200, {}, (ids * np.uint64(2)).astype("<u8").tobytes()

    cave_rsps.add_callback(responses.POST, f"{CG_V1}/roots_binary", callback=answer)
    assert cg.get_roots([5, 4, 3, 2, 1]).tolist() == [10, 8, 6, 4, 2]
    assert len(cave_rsps.calls) == 1  # under two chunks' worth: one request, as caveclient
    cave_rsps.calls.reset()
    assert cg.get_roots([6, 5, 4, 3, 2, 1]).tolist() == [12, 10, 8, 6, 4, 2]
    assert sorted(len(c.request.body) // 8 for c in cave_rsps.calls) == [3, 3]


def test_get_roots_chunks_grow_instead_of_waiting_for_a_second_wave(cave_rsps, monkeypatch) -> None:
    add_cg_handshake(cave_rsps)
    auth = AuthClient(token=TOKEN, server_address=LOCAL)
    narrow = ChunkedGraphClient(LOCAL, table_name=TABLE, auth_client=auth, pool_maxsize=2)
    cave_rsps.calls.reset()
    monkeypatch.setattr(chunkedgraph, "ROOTS_CHUNK_SIZE", 1)
    barrier = threading.Barrier(2, timeout=5)

    def answer(request):
        ids = np.frombuffer(request.body, dtype="<u8")
        barrier.wait()
        return 200, {}, (ids + np.uint64(1)).astype("<u8").tobytes()

    cave_rsps.add_callback(responses.POST, f"{CG_V1}/roots_binary", callback=answer)
    svs = list(range(1, 11))
    assert narrow.get_roots(svs).tolist() == [v + 1 for v in svs]
    assert sorted(len(c.request.body) // 8 for c in cave_rsps.calls) == [5, 5]


def test_get_roots_retries_only_the_failed_chunk(cg, cave_rsps, monkeypatch) -> None:
    monkeypatch.setattr(chunkedgraph, "ROOTS_CHUNK_SIZE", 3)
    failed: list[list[int]] = []

    def answer(request):
        ids = np.frombuffer(request.body, dtype="<u8")
        if 4 in ids.tolist() and not failed:
            failed.append(ids.tolist())
            return 503, {"Retry-After": "0"}, b"busy"
        return 200, {}, (ids + np.uint64(100)).astype("<u8").tobytes()

    cave_rsps.add_callback(responses.POST, f"{CG_V1}/roots_binary", callback=answer)
    svs = [1, 2, 3, 4, 5, 6]
    assert cg.get_roots(svs).tolist() == [101, 102, 103, 104, 105, 106]
    bodies = [np.frombuffer(c.request.body, dtype="<u8").tolist() for c in cave_rsps.calls]
    assert failed == [[4, 5, 6]]
    assert sorted(bodies) == [[1, 2, 3], [4, 5, 6], [4, 5, 6]]  # only the failed chunk again


def test_get_roots_retries_transient_failure(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/roots_binary", status=503)
    cave_rsps.post(f"{CG_V1}/roots_binary", body=np.array([9], dtype="<u8").tobytes())
    assert cg.get_roots([4]).tolist() == [9]
    assert len(cave_rsps.calls) == 2


def test_get_roots_wrong_length_answer_raises(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/roots_binary", body=np.array([1], dtype="<u8").tobytes())
    with pytest.raises(ValueError, match="1 root ids for 2 supervoxels"):
        cg.get_roots([3, 4])


def test_get_roots_refuses_floats_and_negatives(cg, cave_rsps) -> None:
    with pytest.raises(ValueError, match="floats"):
        cg.get_roots(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="non-negative"):
        cg.get_roots([-1, 2])
    assert len(cave_rsps.calls) == 0


def test_get_roots_empty_and_all_zero_make_no_request(cg, cave_rsps) -> None:
    assert cg.get_roots([]).tolist() == []
    assert cg.get_roots([0, 0]).tolist() == [0, 0]
    assert len(cave_rsps.calls) == 0


def test_get_root_id(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/node/{BIG2}/root", body=f'{{"root_id": {BIG}}}')
    root = cg.get_root_id(BIG2, timestamp=T0, level2=True)
    assert root == BIG and isinstance(root, np.int64)
    assert query(cave_rsps.calls[0]) == {"timestamp": [ts(T0)], "stop_layer": ["2"]}


# -- hierarchy -----------------------------------------------------------------------------------


def test_get_leaves_with_bounds_and_stop_layer(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/node/{BIG}/leaves", body=f'{{"leaf_ids": [{BIG2}, {BIG}]}}')
    leaves = cg.get_leaves(BIG, bounds=[[0, 10], [5, 15], [1, 2]], stop_layer=2)
    assert leaves.dtype == np.int64 and leaves.tolist() == [BIG2, BIG]
    assert query(cave_rsps.calls[0]) == {"bounds": ["0-10_5-15_1-2"], "stop_layer": ["2"]}


def test_get_children_and_subgraph_and_l2_graph(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/node/{BIG}/children", body=f'{{"children_ids": [{BIG2}]}}')
    cave_rsps.get(
        f"{CG_V1}/node/{BIG}/subgraph",
        body=f'{{"nodes": [[{BIG2}, 3]], "affinities": [0.5], "areas": [7]}}',
    )
    cave_rsps.get(f"{CG_V1}/node/{BIG}/lvl2_graph", body=f'{{"edge_graph": [[{BIG2}, {BIG}]]}}')
    assert cg.get_children(BIG).tolist() == [BIG2]
    nodes, aff, areas = cg.get_subgraph(BIG, [[0, 1], [0, 1], [0, 1]])
    assert nodes.tolist() == [[BIG2, 3]] and aff.tolist() == [0.5] and areas.dtype == np.int32
    assert query(cave_rsps.calls[1]) == {"bounds": ["0-1_0-1_0-1"]}
    assert cg.level2_chunk_graph(BIG) == [[BIG2, BIG]]


def test_contact_sites_sends_root_in_body(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/node/5/contact_sites", json={"7": [[1, 2, 3]]})
    assert cg.get_contact_sites(5, [[0, 1], [0, 1], [0, 1]], calc_partners=True) == {7: [[1, 2, 3]]}
    assert body_json(cave_rsps.calls[0]) == [5]
    assert query(cave_rsps.calls[0])["partners"] == ["True"]


# -- edits ---------------------------------------------------------------------------------------


def test_do_merge_body_in_nm_and_never_retried(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/merge", status=503)
    with pytest.raises(ServiceError):
        cg.do_merge([BIG2, 9], [[1, 2, 3], [4, 5, 6]], resolution=(4, 4, 40))
    assert len(cave_rsps.calls) == 1
    call = cave_rsps.calls[0]
    assert body_json(call) == [[BIG2, 4, 8, 120], [9, 16, 20, 240]]
    assert query(call) == {"priority": ["False"]}
    assert_auth(call)


def test_do_merge_validates_before_sending(cg, cave_rsps) -> None:
    with pytest.raises(ValueError, match="exactly 2 supervoxels"):
        cg.do_merge([1, 2, 3], [[1, 2, 3]] * 3)
    assert len(cave_rsps.calls) == 0


def test_execute_split_and_preview(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/split", json={"operation_id": 11, "new_root_ids": [BIG]})
    cave_rsps.post(f"{CG_V1}/graph/split_preview", status=502)
    cave_rsps.post(
        f"{CG_V1}/graph/split_preview",
        json={"supervoxel_connected_components": [[1], [2], [3]], "illegal_split": False},
    )
    op, new = cg.execute_split([[1, 2, 3]], [[4, 5, 6]], BIG2, source_supervoxels=[7])
    assert (op, new) == (11, [BIG])
    assert body_json(cave_rsps.calls[0]) == {"sources": [[7, 1, 2, 3]], "sinks": [[BIG2, 4, 5, 6]]}
    assert query(cave_rsps.calls[0]) == {"priority": ["False"]}
    assert cg.preview_split([[1, 2, 3]], [[4, 5, 6]], 8, return_additional_ccs=True) == (
        [1],
        [2],
        True,
        [[3]],
    )
    assert len(cave_rsps.calls) == 3  # the preview (a read) was retried


def test_undo_operation(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/undo", json={"operation_id": 12, "new_root_ids": [1]})
    assert cg.undo_operation(11)["operation_id"] == 12
    assert body_json(cave_rsps.calls[0]) == {"operation_id": 11}


def test_remesh_level2_chunks(cg, cave_rsps) -> None:
    cave_rsps.post(f"{LOCAL}/meshing/api/v1/table/{TABLE}/remeshing", json={})
    cg.remesh_level2_chunks([BIG, 2])
    assert body_json(cave_rsps.calls[0]) == {"new_lvl2_ids": [BIG, 2]}


# -- history -------------------------------------------------------------------------------------


def test_change_logs(cg, cave_rsps) -> None:
    frame = pd.DataFrame(
        {
            "operation_id": [1, 2],
            "timestamp": [1_700_000_000_000, 1_700_000_100_000],
            "before_root_ids": [[BIG2], [BIG]],
            "is_merge": [True, False],
        }
    ).to_json()
    cave_rsps.get(f"{CG_V1}/root/{BIG}/change_log", json={"n_splits": 1, "n_mergers": 1})
    cave_rsps.get(f"{CG_V1}/root/{BIG}/merge_log", json={"merge_edges": []})
    cave_rsps.get(f"{CG_V1}/tabular_change_log_many", json={str(BIG): frame})
    assert cg.get_change_log(BIG) == {"n_splits": 1, "n_mergers": 1}
    assert query(cave_rsps.calls[0]) == {"filtered": ["True"]}
    assert cg.get_merge_log(BIG) == {"merge_edges": []}
    logs = cg.get_tabular_change_log([BIG], filtered=False)
    assert list(logs) == [BIG]
    assert logs[BIG]["operation_id"].tolist() == [1, 2]
    assert logs[BIG]["before_root_ids"].tolist() == [[BIG2], [BIG]]
    call = cave_rsps.calls[2]
    assert call.request.method == "GET"
    assert body_json(call) == {"root_ids": [BIG]}
    assert query(call) == {"filtered": ["False"]}


def test_user_operations_sends_include_undone_and_parses_ms(cg, cave_rsps) -> None:
    frame = pd.DataFrame({"operation_id": [3], "timestamp": [1_700_000_000_000]}).to_json()
    cave_rsps.get(f"{CG_V1}/user_operations", body=frame)
    df = cg.get_user_operations(5, T0, include_undo=False, timestamp_end=T1)
    assert query(cave_rsps.calls[0]) == {
        "user_id": ["5"],
        "include_undone": ["False"],
        "start_time": [ts(T0)],
        "end_time": [ts(T1)],
    }
    assert df["timestamp"].iloc[0] == pd.Timestamp(1_700_000_000_000, unit="ms", tz="UTC")


def test_operation_details_param_is_a_json_list(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/operation_details", json={"1": {"roots": [BIG]}})
    assert cg.get_operation_details([1, 2]) == {"1": {"roots": [BIG]}}
    assert json.loads(query(cave_rsps.calls[0])["operation_ids"][0]) == [1, 2]


LINEAGE = {
    "directed": True,
    "multigraph": False,
    "graph": {},
    "nodes": [
        {"id": 1, "timestamp": T0.timestamp() - 100, "operation_id": 5},
        {"id": BIG, "timestamp": T0.timestamp(), "operation_id": 6},
        {"id": BIG2, "timestamp": T1.timestamp() + 100},
    ],
    "links": [{"source": 1, "target": BIG}, {"source": BIG, "target": BIG2}],
}


def test_lineage_graph_dict_nx_and_exclusions(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/lineage_graph_multiple", json=LINEAGE)
    graph = cg.get_lineage_graph(BIG, timestamp_past=T0, timestamp_future=T1, as_nx_graph=True)
    assert isinstance(graph, nx.DiGraph)
    assert set(graph.nodes) == {1, BIG, BIG2}
    assert body_json(cave_rsps.calls[0]) == {"root_ids": [BIG]}
    assert query(cave_rsps.calls[0]) == {"timestamp_past": [ts(T0)], "timestamp_future": [ts(T1)]}
    trimmed = cg.get_lineage_graph(
        BIG,
        timestamp_past=T0,
        timestamp_future=T1,
        exclude_links_to_future=True,
        exclude_links_to_past=True,
    )
    assert [n["id"] for n in trimmed["nodes"]] == [BIG]
    assert trimmed["links"] == []


def test_lineage_graph_without_future_sends_no_stray_params(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/lineage_graph_multiple", json=LINEAGE)
    cg.get_lineage_graph(BIG)
    assert query(cave_rsps.calls[0]) == {}


def test_get_latest_roots_forward(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/root_timestamps", json={"timestamp": [T0.timestamp() - 100]})
    cave_rsps.post(f"{CG_V1}/lineage_graph_multiple", json=LINEAGE)
    latest = cg.get_latest_roots(1, timestamp=T1 + dt.timedelta(days=1))
    assert latest.dtype == np.int64 and latest.tolist() == [BIG2]


def test_get_original_roots(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/root_timestamps", json={"timestamp": [T1.timestamp() + 100]})
    cave_rsps.post(f"{CG_V1}/lineage_graph_multiple", json=LINEAGE)
    assert cg.get_original_roots(BIG2).tolist() == [1]


def test_past_ids_delta_roots_is_latest_timestamps(cg, cave_rsps) -> None:
    cave_rsps.get(
        f"{CG_V1}/past_id_mapping",
        body=f'{{"past_id_map": {{"{BIG}": [{BIG2}]}}, "future_id_map": {{}}}}',
    )
    cave_rsps.get(f"{CG_V1}/delta_roots", body=f'{{"old_roots": [{BIG2}], "new_roots": [{BIG}]}}')
    cave_rsps.post(f"{CG_V1}/is_latest_roots", json={"is_latest": [True, False]})
    cave_rsps.post(f"{CG_V1}/root_timestamps", json={"timestamp": [T0.timestamp()]})
    assert cg.get_past_ids([BIG], timestamp_past=T0) == {
        "future_id_map": {},
        "past_id_map": {BIG: [BIG2]},
    }
    assert body_json(cave_rsps.calls[0]) == {"root_ids": [BIG]}
    assert query(cave_rsps.calls[0]) == {"timestamp_past": [ts(T0)]}
    old, new = cg.get_delta_roots(T0, T1)
    assert old.tolist() == [BIG2] and new.tolist() == [BIG]
    assert query(cave_rsps.calls[1]) == {"timestamp_past": [ts(T0)], "timestamp_future": [ts(T1)]}
    assert cg.is_latest_roots([BIG, 3], timestamp=T1).tolist() == [True, False]
    assert body_json(cave_rsps.calls[2]) == {"node_ids": [BIG, 3]}
    assert query(cave_rsps.calls[2]) == {"timestamp": [ts(T1)]}
    stamps = cg.get_root_timestamps(BIG)
    assert stamps.tolist() == [T0]
    assert body_json(cave_rsps.calls[3]) == {"node_ids": [BIG]}


def test_is_valid_nodes_answers_zero_locally(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/valid_nodes", body=f'{{"valid_roots": [{BIG}]}}')
    valid = cg.is_valid_nodes([0, BIG, 5], start_timestamp=T0, end_timestamp=T1)
    assert valid.tolist() == [False, True, False]
    assert body_json(cave_rsps.calls[0]) == {"node_ids": [BIG, 5]}
    assert query(cave_rsps.calls[0]) == {"start_timestamp": [ts(T0)], "end_timestamp": [ts(T1)]}


def test_oldest_timestamp_and_info(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/oldest_timestamp", json={"iso": "2020-01-02 03:04:05.000000+00:00"})
    cave_rsps.get(f"{LOCAL}/segmentation/table/{TABLE}/info", json=PCG_INFO)
    assert cg.get_oldest_timestamp() == dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert cg.base_resolution == [8, 8, 40]
    assert cg.segmentation_info["graph"]["n_layers"] == 6
    assert len(cave_rsps.calls) == 2  # info fetched once
    assert cg.cloudvolume_path == f"graphene://{LOCAL}/segmentation/api/v1/{TABLE}"


def test_find_path(cg, cave_rsps) -> None:
    cave_rsps.post(
        f"{CG_V1}/graph/find_path",
        body=f'{{"centroids_list": [[1, 2, 3]], "l2_path": [{BIG}], "failed_l2_ids": []}}',
    )
    centroids, path_ids, failed = cg.find_path(BIG, [1, 2, 3], [4, 5, 6], precision_mode=True)
    assert centroids.tolist() == [[1, 2, 3]] and path_ids.tolist() == [BIG]
    assert failed.dtype == np.uint64
    assert body_json(cave_rsps.calls[0]) == [[BIG, 1, 2, 3], [BIG, 4, 5, 6]]
    assert query(cave_rsps.calls[0]) == {"precision_mode": ["True"]}


def test_suggest_latest_roots(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/root_timestamps", json={"timestamp": [T0.timestamp() - 100]})
    lineage = {
        "directed": True,
        "multigraph": False,
        "graph": {},
        "nodes": [
            {"id": 1, "timestamp": T0.timestamp() - 100},
            {"id": 2, "timestamp": T0.timestamp()},
            {"id": 3, "timestamp": T0.timestamp()},
        ],
        "links": [{"source": 1, "target": 2}, {"source": 1, "target": 3}],
    }
    cave_rsps.post(f"{CG_V1}/lineage_graph_multiple", json=lineage)
    cave_rsps.get(f"{LOCAL}/segmentation/table/{TABLE}/info", json=PCG_INFO)
    cave_rsps.get(f"{CG_V1}/node/1/leaves", json={"leaf_ids": [10, 11, 12, 13]})
    cave_rsps.get(f"{CG_V1}/node/2/leaves", json={"leaf_ids": [10, 99]})
    cave_rsps.get(f"{CG_V1}/node/3/leaves", json={"leaf_ids": [11, 12, 13]})
    best, fraction = cg.suggest_latest_roots(1, timestamp=T1, return_fraction_overlap=True)
    assert best == 3 and fraction == 0.75
    assert type(best) is np.int64  # caveclient: an element of the int64 latest roots
    assert query(cave_rsps.calls[3]) == {"stop_layer": ["2"]}  # n_layers 6 - 4
    assert cg.suggest_latest_roots(1, timestamp=T1, stop_layer=2, return_all=True).tolist() == [
        3,
        2,
    ]


def test_minimal_covering_nodes_guard_raises_before_request(cg, cave_rsps) -> None:
    cave_rsps.replace(responses.GET, f"{LOCAL}/segmentation/api/version", json="2.17.0")
    # The server version is read when the client is built (as in caveclient 5.25).
    old_server = ChunkedGraphClient(
        LOCAL, table_name=TABLE, auth_client=AuthClient(token=TOKEN, server_address=LOCAL)
    )
    guarded = cave_rsps.post(f"{CG_V1}/minimal_covering_nodes", body=b"")
    with pytest.raises(ServerIncompatibilityError):
        old_server.get_minimal_covering_nodes([1, 2])
    assert guarded.call_count == 0


def test_client_timestamp_is_used_by_default(cave_rsps) -> None:
    add_cg_handshake(cave_rsps)
    client = ChunkedGraphClient(LOCAL, table_name=TABLE, timestamp=T0)
    cave_rsps.post(f"{CG_V1}/is_latest_roots", json={"is_latest": [True]})
    client.is_latest_roots([5])
    assert query(cave_rsps.calls[-1]) == {"timestamp": [ts(T0)]}


# -- helpers -------------------------------------------------------------------------------------


def test_package_helpers() -> None:
    assert package_bounds(np.array([[0, 10], [5, 15], [1, 2]])) == "0-10_5-15_1-2"
    with pytest.raises(ValueError, match="3x2"):
        package_bounds([[0, 1, 2]])
    naive = dt.datetime(2024, 5, 1, 12)
    assert package_timestamp(naive) == {"timestamp": T0.timestamp()}
    assert package_timestamp(None) == {}
    assert package_timestamp(T1, name="end_time") == {"end_time": T1.timestamp()}
    eastern = T0.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert package_timestamp(eastern) == {"timestamp": T0.timestamp()}
    with pytest.raises(ValueError, match="datetime"):
        package_timestamp(1234.5)
    data = package_split_data(BIG, [[1, 2, 3]], [[4, 5, 6], [7, 8, 9]], None, [None, 5])
    assert data == {"sources": [[BIG, 1, 2, 3]], "sinks": [[BIG, 4, 5, 6], [5, 7, 8, 9]]}
    with pytest.raises(ValueError, match="sink_supervoxels has 1"):
        package_split_data(1, [[1, 2, 3]], [[4, 5, 6], [7, 8, 9]], None, [3])


def test_root_id_int_list_check() -> None:
    assert root_id_int_list_check(BIG) == [BIG]
    assert root_id_int_list_check(np.uint64(BIG)) == [BIG]
    assert root_id_int_list_check(str(BIG)) == [BIG]
    checked = root_id_int_list_check([BIG, 3, 3], make_unique=True)
    assert checked.dtype == np.uint64 and checked.tolist() == [3, BIG]
    assert root_id_int_list_check(pd.Series([1, 2])).tolist() == [1, 2]
    with pytest.raises(ValueError, match="list or uint64"):
        root_id_int_list_check(1.5)
    with pytest.raises(ValueError, match="cannot be converted"):
        root_id_int_list_check("abc")


# -- id dtypes as caveclient 5.25 (issue 11 item 7) ------------------------------------------------

ROOT_A, ROOT_B = 864691135000000001, 864691135000000002  # 18 digits: float64 would merge them


def test_every_id_return_has_caveclient_525s_type(cg, cave_rsps) -> None:
    cave_rsps.post(f"{CG_V1}/roots_binary", body=np.array([ROOT_A], dtype="<u8").tobytes())
    cave_rsps.get(f"{CG_V1}/node/5/root", body=f'{{"root_id": {ROOT_A}}}')
    cave_rsps.get(f"{CG_V1}/node/{ROOT_A}/leaves", body=f'{{"leaf_ids": [{BIG}, 7]}}')
    cave_rsps.get(f"{CG_V1}/node/{ROOT_A}/children", body=f'{{"children_ids": [{BIG}]}}')
    cave_rsps.get(
        f"{CG_V1}/node/{ROOT_A}/subgraph",
        body=f'{{"nodes": [[{BIG}, 3]], "affinities": [0.5], "areas": [7]}}',
    )
    cave_rsps.get(f"{CG_V1}/node/{ROOT_A}/lvl2_graph", body=f'{{"edge_graph": [[{BIG}, 3]]}}')
    cave_rsps.get(f"{CG_V1}/node/{ROOT_A}/contact_sites", json={str(BIG): [[1, 2, 3]]})
    cave_rsps.post(
        f"{CG_V1}/graph/find_path",
        body=f'{{"centroids_list": [[1, 2, 3]], "l2_path": [{BIG}], "failed_l2_ids": [{BIG}]}}',
    )
    cave_rsps.get(
        f"{CG_V1}/delta_roots", body=f'{{"old_roots": [{ROOT_A}], "new_roots": [{ROOT_B}]}}'
    )
    cave_rsps.get(
        f"{CG_V1}/past_id_mapping",
        body=f'{{"past_id_map": {{"{ROOT_B}": [{ROOT_A}]}}, "future_id_map": {{}}}}',
    )
    cave_rsps.post(f"{CG_V1}/minimal_covering_nodes", body=np.array([BIG], dtype="<u8").tobytes())

    roots = cg.get_roots([5])
    assert roots.dtype == np.uint64 and roots.tolist() == [ROOT_A]  # caveclient: np.uint64
    root = cg.get_root_id(5)
    assert type(root) is np.int64 and root == ROOT_A
    leaves = cg.get_leaves(ROOT_A)
    assert leaves.dtype == np.int64 and leaves.tolist() == [BIG, 7]
    children = cg.get_children(ROOT_A)
    assert children.dtype == np.int64 and children.tolist() == [BIG]
    nodes, _, _ = cg.get_subgraph(ROOT_A, [[0, 1], [0, 1], [0, 1]])
    assert nodes.dtype == np.int64 and nodes.tolist() == [[BIG, 3]]
    edges = cg.level2_chunk_graph(ROOT_A)
    assert edges == [[BIG, 3]] and all(type(i) is int for i in edges[0])
    contacts = cg.get_contact_sites(ROOT_A, [[0, 1], [0, 1], [0, 1]])
    assert list(contacts) == [BIG] and type(next(iter(contacts))) is int
    _, l2_path, failed = cg.find_path(ROOT_A, [1, 2, 3], [4, 5, 6])
    assert l2_path.dtype == np.int64 and l2_path.tolist() == [BIG]
    assert failed.dtype == np.uint64 and failed.tolist() == [BIG]  # caveclient: np.uint64
    old, new = cg.get_delta_roots(T0, T1)
    assert (old.dtype, new.dtype) == (np.int64, np.int64)
    assert (old.tolist(), new.tolist()) == ([ROOT_A], [ROOT_B])
    past = cg.get_past_ids([ROOT_B], timestamp_past=T0)
    assert past["past_id_map"] == {ROOT_B: [ROOT_A]}
    assert type(next(iter(past["past_id_map"]))) is int
    assert type(past["past_id_map"][ROOT_B][0]) is int
    covering = cg.get_minimal_covering_nodes([BIG])
    assert covering.dtype == np.int64 and covering.tolist() == [BIG]


def test_empty_id_answers_are_int64(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/delta_roots", json={"old_roots": [], "new_roots": []})
    cave_rsps.get(f"{CG_V1}/node/9/children", json={"children_ids": []})
    old, new = cg.get_delta_roots(T0, T1)
    assert (old.dtype, new.dtype) == (np.int64, np.int64)  # not np.array([])'s float64
    assert cg.get_children(9).dtype == np.int64


def test_lineage_roots_are_int64_and_concatenate_exactly_with_query_ids(cg, cave_rsps) -> None:
    lineage = {
        "directed": True,
        "multigraph": False,
        "graph": {},
        "nodes": [
            {"id": ROOT_A, "timestamp": T0.timestamp()},
            {"id": ROOT_B, "timestamp": T0.timestamp() + 10},
        ],
        "links": [{"source": ROOT_A, "target": ROOT_B}],
    }
    cave_rsps.post(f"{CG_V1}/root_timestamps", json={"timestamp": [T0.timestamp()]})
    cave_rsps.post(f"{CG_V1}/lineage_graph_multiple", json=lineage)
    latest = cg.get_latest_roots(ROOT_A, timestamp=T1)
    original = cg.get_original_roots(ROOT_B)
    assert (latest.dtype, original.dtype) == (np.int64, np.int64)
    query_ids = np.array([ROOT_A + 2], dtype=np.int64)  # query_table's root-id dtype
    joined = np.concatenate([latest, original, query_ids])
    assert joined.dtype == np.int64
    assert joined.tolist() == [ROOT_B, ROOT_A, ROOT_A + 2]
    frame = pd.concat([pd.Series(latest), pd.Series(query_ids)], ignore_index=True)
    assert frame.dtype == np.int64 and frame.nunique() == 2


def test_suggest_latest_roots_types_as_caveclient(cg, cave_rsps) -> None:
    unchanged = {
        "directed": True,
        "multigraph": False,
        "graph": {},
        "nodes": [{"id": 4, "timestamp": T0.timestamp()}],
        "links": [],
    }
    cave_rsps.post(f"{CG_V1}/root_timestamps", json={"timestamp": [T0.timestamp()]})
    cave_rsps.post(f"{CG_V1}/lineage_graph_multiple", json=unchanged)
    # A current root answers itself: caveclient returns it as given, with 1 (lists with return_all).
    best = cg.suggest_latest_roots(4, timestamp=T1)
    assert best == 4 and type(best) is int
    assert cg.suggest_latest_roots(4, timestamp=T1, return_fraction_overlap=True) == (4, 1)
    every = cg.suggest_latest_roots(4, timestamp=T1, return_all=True)
    assert type(every) is list and every == [4]
    both = cg.suggest_latest_roots(4, timestamp=T1, return_all=True, return_fraction_overlap=True)
    assert both == ([4], [1]) and type(both[0]) is list


OUT_OF_RANGE = [2**63, 2**64 - 1, -1]


def _id_calls(bad: int) -> dict[str, Callable[[ChunkedGraphClientV1], object]]:
    """Every chunkedgraph call taking ids, given ``bad`` where the id goes."""
    pts = [[1, 2, 3]]
    box = [[0, 1], [0, 1], [0, 1]]
    array = np.array([5, bad], dtype=np.int64 if bad < 0 else np.uint64)
    return {
        "get_roots": lambda cg: cg.get_roots([5, bad]),
        "get_roots_array": lambda cg: cg.get_roots(array),
        "get_root_id": lambda cg: cg.get_root_id(bad),
        "get_leaves": lambda cg: cg.get_leaves(bad),
        "get_children": lambda cg: cg.get_children(bad),
        "get_contact_sites": lambda cg: cg.get_contact_sites(bad, box),
        "get_subgraph": lambda cg: cg.get_subgraph(bad, box),
        "level2_chunk_graph": lambda cg: cg.level2_chunk_graph(bad),
        "remesh_level2_chunks": lambda cg: cg.remesh_level2_chunks([bad]),
        "do_merge": lambda cg: cg.do_merge([bad, 5], [[1, 2, 3], [4, 5, 6]]),
        "execute_split": lambda cg: cg.execute_split(pts, [[4, 5, 6]], bad),
        "preview_split": lambda cg: cg.preview_split(pts, [[4, 5, 6]], 5, sink_supervoxels=[bad]),
        "get_merge_log": lambda cg: cg.get_merge_log(bad),
        "get_change_log": lambda cg: cg.get_change_log(bad),
        "get_tabular_change_log": lambda cg: cg.get_tabular_change_log([bad]),
        "get_lineage_graph": lambda cg: cg.get_lineage_graph(bad),
        "get_latest_roots": lambda cg: cg.get_latest_roots(bad),
        "get_original_roots": lambda cg: cg.get_original_roots(bad),
        "get_past_ids": lambda cg: cg.get_past_ids([bad]),
        "is_latest_roots": lambda cg: cg.is_latest_roots([5, bad]),
        "get_root_timestamps": lambda cg: cg.get_root_timestamps([bad]),
        "suggest_latest_roots": lambda cg: cg.suggest_latest_roots(bad),
        "find_path": lambda cg: cg.find_path(bad, [1, 2, 3], [4, 5, 6]),
        "get_minimal_covering_nodes": lambda cg: cg.get_minimal_covering_nodes([bad]),
    }


@pytest.mark.parametrize("bad", OUT_OF_RANGE)
@pytest.mark.parametrize("method", sorted(_id_calls(0)))
def test_ids_outside_int64_range_raise_naming_the_value_before_any_request(
    cg, cave_rsps, method: str, bad: int
) -> None:
    message = rf"must be a non-negative node id below 2\*\*63, got {bad}\b"
    with pytest.raises(ValueError, match=message):
        _id_calls(bad)[method](cg)
    assert len(cave_rsps.calls) == 0


def test_is_valid_nodes_raises_at_2_63_and_answers_negatives_false_locally(cg, cave_rsps) -> None:
    with pytest.raises(ValueError, match=rf"^node_ids\[1\] must be .* got {2**63}:"):
        cg.is_valid_nodes([5, 2**63])
    # caveclient's own suite pins -1 as "not valid" (it sends it wrapped to 2**64 - 1).
    assert cg.is_valid_nodes([0, -1]).tolist() == [False, False]
    assert cg.is_valid_nodes(np.array([-7], dtype=np.int64)).tolist() == [False]
    assert len(cave_rsps.calls) == 0


def test_out_of_range_error_names_the_argument_and_position(cg, cave_rsps) -> None:
    with pytest.raises(ValueError, match=rf"^supervoxel_ids\[1\] must be .* got {2**63}:"):
        cg.get_roots([5, 2**63])
    with pytest.raises(ValueError, match=rf"^supervoxel_ids\[2\] must be .* got {2**63 + 9}:"):
        cg.get_roots(np.array([5, 6, 2**63 + 9], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"^root_id must be .* got -3:"):
        cg.get_leaves(-3)
    assert len(cave_rsps.calls) == 0


def test_ids_just_below_2_63_go_out_as_caveclients_uint64_bytes(cg, cave_rsps) -> None:
    top = 2**63 - 1
    cave_rsps.post(f"{CG_V1}/roots_binary", body=np.array([top, 9], dtype="<u8").tobytes())
    cg.get_roots([top, 3])
    assert cave_rsps.calls[0].request.body == np.array([top, 3], dtype=np.uint64).tobytes()


def test_a_server_id_beyond_int64_raises_instead_of_wrapping(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/node/5/leaves", body=f'{{"leaf_ids": [7, {2**63}]}}')
    cave_rsps.get(
        f"{CG_V1}/node/5/subgraph",
        body=f'{{"nodes": [[7, {2**64 - 1}]], "affinities": [0.5], "areas": [7]}}',
    )
    with pytest.raises(ValueError, match=rf"answered node id {2**63}, which does not fit"):
        cg.get_leaves(5)
    with pytest.raises(ValueError, match=rf"answered node id {2**64 - 1}, which does not fit"):
        cg.get_subgraph(5, [[0, 1], [0, 1], [0, 1]])


def test_client_start_does_not_import_networkx() -> None:
    # networkx costs ~80 ms to import; only lineage graphs (as_nx_graph=True) need it.
    code = (
        "import sys\n"
        "from prefect_neurodata.clients.cave import CAVEclient\n"
        "print('networkx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
