"""Chunkedgraph client: every endpoint's URL, method, params and body; uint64 exactness."""

from __future__ import annotations

import datetime as dt
import json

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

BIG = 2**63 + 2**40 + 7  # above 2**53 and 2**63: any float or int64 detour would corrupt it
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
    assert path(cave_rsps.calls[0]) == f"{LOCAL}/segmentation/api/versions"


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
    assert len(cave_rsps.calls) == 4
    stamps = {query(c)["timestamp"][0] for c in cave_rsps.calls}
    assert len(stamps) == 1


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
    assert root == np.uint64(BIG) and isinstance(root, np.uint64)
    assert query(cave_rsps.calls[0]) == {"timestamp": [ts(T0)], "stop_layer": ["2"]}


# -- hierarchy -----------------------------------------------------------------------------------


def test_get_leaves_with_bounds_and_stop_layer(cg, cave_rsps) -> None:
    cave_rsps.get(f"{CG_V1}/node/{BIG}/leaves", body=f'{{"leaf_ids": [{BIG2}, {BIG}]}}')
    leaves = cg.get_leaves(BIG, bounds=[[0, 10], [5, 15], [1, 2]], stop_layer=2)
    assert leaves.dtype == np.uint64 and leaves.tolist() == [BIG2, BIG]
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
    assert latest.dtype == np.uint64 and latest.tolist() == [BIG2]


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
