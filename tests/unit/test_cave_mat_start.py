"""Materialization client start: what `CAVEclient(...).materialize` asks, and when.

caveclient 5.25 asks the API versions, then (building the client) the server version, then
(at the first query) the version list: three serial round trips. The factory now asks the
three at once; the answers are the same requests, taken (or their errors raised) where the
client would have asked itself.
"""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import responses

from prefect_neurodata.clients.cave import CAVEclient
from prefect_neurodata.clients.cave.materializationengine import (
    MaterializationClient,
    MaterializationClientV2,
)
from prefect_neurodata.clients.http import ServiceError
from tests.cave_helpers import DATASTACK, GLOBAL, LOCAL, TOKEN, add_info, assert_auth, path
from tests.unit.test_cave_materialization import TABLE_META, arrow_body, synapse_frame

pytestmark = pytest.mark.usefixtures("cave_fast_retries", "cave_home")

V3 = f"{LOCAL}/materialize/api/v3/datastack/{DATASTACK}"
V2 = f"{LOCAL}/materialize/api/v2/datastack/{DATASTACK}"
API_VERSIONS = f"{LOCAL}/materialize/api/versions"
SERVER_VERSION = f"{LOCAL}/materialize/version"
FILTER = {"pre_pt_root_id": [100]}


def add_query(rsps: responses.RequestsMock, prefix: str = V3) -> None:
    rsps.get(f"{prefix}/version/7/table/synapses/metadata", json=TABLE_META)
    rsps.post(
        f"{prefix}/version/7/table/synapses/query",
        body=arrow_body(synapse_frame([1, 2])),
        content_type="data.arrow",
    )


def full_client() -> CAVEclient:
    return CAVEclient(DATASTACK, server_address=GLOBAL, auth_token=TOKEN, write_server_cache=False)


def test_filtered_query_asks_api_versions_server_version_and_versions_at_once(cave_rsps) -> None:
    # The three first answers wait for each other: asked one after the other, the barrier
    # breaks (later questions are answered at once).
    barrier = threading.Barrier(3, timeout=5)
    waited: list[str] = []

    def answer(body: str):
        def callback(request):
            if len(waited) < 3:
                waited.append(request.url)
                barrier.wait()
            return 200, {}, body

        return callback

    add_info(cave_rsps)
    cave_rsps.add_callback(responses.GET, API_VERSIONS, answer("[2, 3]"))
    cave_rsps.add_callback(responses.GET, SERVER_VERSION, answer('"4.35.0"'))
    cave_rsps.add_callback(responses.GET, f"{V3}/versions", answer("[5, 7]"))
    add_query(cave_rsps)
    client = full_client()
    df = client.materialize.query_table("synapses", filter_in_dict=FILTER)
    assert list(df["id"]) == [1, 2]
    calls = [(c.request.method, path(c)) for c in cave_rsps.calls]
    # Every request once: the info lookup, the three start questions in any order, then the
    # table's metadata and the query (caveclient 5.25's requests, in another order).
    assert calls[0] == ("GET", f"{GLOBAL}/info/api/v2/datastack/full/{DATASTACK}")
    assert sorted(calls[1:4]) == sorted(
        [("GET", API_VERSIONS), ("GET", f"{V3}/versions"), ("GET", SERVER_VERSION)]
    )
    assert calls[4:] == [
        ("GET", f"{V3}/version/7/table/synapses/metadata"),
        ("POST", f"{V3}/version/7/table/synapses/query"),
    ]
    versions_call = next(c for c in cave_rsps.calls if path(c) == f"{V3}/versions")
    assert versions_call.request.url.endswith("/versions?expired=False")
    for call in cave_rsps.calls[1:]:
        assert_auth(call)
    # Taken once: the answers asked at start are not reused for later questions.
    assert str(client.materialize.server_version) == "4.35.0"
    assert client.materialize.get_versions() == [5, 7]
    later = [path(c) for c in cave_rsps.calls[6:]]
    assert later == [f"{V3}/versions"]


@pytest.mark.parametrize("status", [500, 401])
def test_version_list_error_is_raised_at_the_first_query(cave_rsps, status) -> None:
    cave_rsps.get(API_VERSIONS, json=[2, 3])
    cave_rsps.get(SERVER_VERSION, json="4.35.0")
    cave_rsps.get(f"{V3}/versions", status=status, json={"message": "no"})
    client = MaterializationClient(LOCAL, DATASTACK, max_retries=0)  # builds fine, as before
    with pytest.raises(ServiceError) as info:
        client.query_table("synapses", filter_in_dict=FILTER)
    assert info.value.status_code == status


@pytest.mark.parametrize("status", [500, 401])
def test_server_version_error_is_raised_where_it_is_needed(cave_rsps, status) -> None:
    cave_rsps.get(API_VERSIONS, json=[2, 3])
    cave_rsps.get(SERVER_VERSION, status=status, json={"message": "no"})
    cave_rsps.get(f"{V3}/versions", json=[7])
    client = MaterializationClient(LOCAL, DATASTACK, max_retries=0)
    assert client.version == 7
    with pytest.raises(ServiceError) as info:
        client.server_version  # noqa: B018 - the property asks
    assert info.value.status_code == status


def test_fixed_version_asks_no_version_list(cave_rsps) -> None:
    cave_rsps.get(API_VERSIONS, json=[2, 3])
    cave_rsps.get(SERVER_VERSION, json="4.35.0")
    add_query(cave_rsps)
    client = MaterializationClient(LOCAL, DATASTACK, version=7)
    client.query_table("synapses", filter_in_dict=FILTER)
    assert f"{V3}/versions" not in [path(c) for c in cave_rsps.calls]


def test_api_v2_server_gets_its_own_version_list(cave_rsps) -> None:
    # The list asked at start used the newest API's URL; a v2 client asks its own.
    cave_rsps.get(API_VERSIONS, json=[2])
    cave_rsps.get(SERVER_VERSION, json="4.35.0")
    cave_rsps.get(f"{V3}/versions", status=404)
    cave_rsps.get(f"{V2}/versions", json=[7])
    client = MaterializationClient(LOCAL, DATASTACK)
    assert type(client) is MaterializationClientV2
    assert client.version == 7
    assert [path(c) for c in cave_rsps.calls].count(f"{V2}/versions") == 1


def test_explicit_api_v2_asks_the_v2_version_list_at_start(cave_rsps) -> None:
    cave_rsps.get(SERVER_VERSION, json="4.35.0")
    cave_rsps.get(f"{V2}/versions", json=[7])
    client = MaterializationClient(LOCAL, DATASTACK, api_version=2)
    assert type(client) is MaterializationClientV2
    assert client.version == 7
    assert sorted(path(c) for c in cave_rsps.calls) == sorted([SERVER_VERSION, f"{V2}/versions"])


def test_a_copy_asks_for_itself(cave_rsps) -> None:
    cave_rsps.get(API_VERSIONS, json=[2, 3])
    cave_rsps.get(SERVER_VERSION, json="4.35.0")
    cave_rsps.get(f"{V3}/versions", json=[5, 7])
    client = MaterializationClient(LOCAL, DATASTACK)
    for other in (copy.deepcopy(client), pickle.loads(pickle.dumps(client))):
        assert other.version == 7
    assert client.version == 7
    # the copies asked again; the original took its answer from the start
    assert [path(c) for c in cave_rsps.calls].count(f"{V3}/versions") == 3
