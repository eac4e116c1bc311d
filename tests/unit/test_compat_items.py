"""Issue 11 drop-in items: what the official clients do, checked on ours request by request."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import responses
import sqlalchemy as sa

from prefect_neurodata.clients import http
from prefect_neurodata.clients.aind import document_db_ssh
from prefect_neurodata.clients.aind.document_db import MetadataDbClient
from prefect_neurodata.clients.aind.document_db_ssh import (
    DocumentDbSSHClient,
    DocumentDbSSHCredentials,
)
from prefect_neurodata.clients.aind.helpers import docdb as helpers_docdb
from prefect_neurodata.clients.aind.rds_tables import Client, RDSCredentials, resolve_drivername
from prefect_neurodata.clients.cave import ServerIncompatibilityError
from prefect_neurodata.clients.cave.auth import AuthClient
from prefect_neurodata.clients.cave.chunkedgraph import ChunkedGraphClient
from tests.cave_helpers import CG_V1, LOCAL, TABLE, TOKEN, add_cg_handshake, query

pytestmark = pytest.mark.usefixtures("cave_fast_retries", "cave_home")

REPO = Path(__file__).resolve().parents[2]
HOST = "api.example.org"
BASE = f"https://{HOST}/v1/metadata_index/data_assets"


@pytest.fixture
def docdb(monkeypatch: pytest.MonkeyPatch) -> MetadataDbClient:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-example")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    return MetadataDbClient(host=HOST, retry=http.RetryPolicy(max_retries=0))


# -- DocDB upserts: NaN / infinity refused before any request (issue 13.2) -------------------


@responses.activate
def test_upsert_one_with_nan_is_refused_before_any_request(docdb: MetadataDbClient) -> None:
    record = {"_id": "abc-123", "subject": {"weight": float("nan")}}
    with pytest.raises(ValueError, match=r"_id='abc-123'.*field subject\.weight is nan"):
        docdb.upsert_one_docdb_record(record)
    assert len(responses.calls) == 0


@responses.activate
def test_upsert_list_with_inf_is_refused_before_any_chunk(docdb: MetadataDbClient) -> None:
    records = [{"_id": f"id{i}", "qc": {"values": [1.0, 2.0]}} for i in range(5)]
    records[3]["qc"]["values"][1] = np.float64("-inf")
    with pytest.raises(ValueError, match=r"_id='id3' \(records\[3\]\): field qc\.values\[1\]"):
        docdb.upsert_list_of_docdb_records(records, max_payload_size=10)
    assert len(responses.calls) == 0


@responses.activate
def test_upsert_with_nan_in_numpy_array_is_refused(docdb: MetadataDbClient) -> None:
    with pytest.raises(ValueError, match=r"field trace\[2\] is"):
        docdb.upsert_one_docdb_record({"_id": "x", "trace": np.array([0.0, 1.0, np.nan])})
    assert len(responses.calls) == 0


@responses.activate
def test_finite_record_is_still_sent(docdb: MetadataDbClient) -> None:
    responses.post(f"{BASE}/update_one", json={"acknowledged": True})
    docdb.upsert_one_docdb_record({"_id": "abc", "weight": 21.5, "n": 3})
    assert len(responses.calls) == 1


@responses.activate
def test_upsert_one_without_id_is_refused_before_any_request(docdb: MetadataDbClient) -> None:
    with pytest.raises(ValueError, match="Record does not have an _id field"):
        docdb.upsert_one_docdb_record({"name": "no id"})
    assert len(responses.calls) == 0


@responses.activate
def test_upsert_list_without_id_is_refused_before_any_request(docdb: MetadataDbClient) -> None:
    with pytest.raises(ValueError, match=r"records\[1\]"):
        docdb.upsert_list_of_docdb_records([{"_id": "a"}, {"name": "b"}])
    assert len(responses.calls) == 0


# -- aind helpers ----------------------------------------------------------------------------


@responses.activate
def test_helpers_docdb_sends_the_find_of_1_10(docdb: MetadataDbClient) -> None:
    responses.get(f"{BASE}/find", json=[{"_id": "abc", "name": "asset_1"}])
    assert helpers_docdb.get_name_from_id(docdb, _id="abc") == "asset_1"
    sent = query(responses.calls[0])
    assert sent["filter"] == ['{"_id":"abc"}']
    assert sent["projection"] == ['{"name":1}']
    assert sent["limit"] == ["1"]


def test_helpers_data_schema_imports_with_the_helpers_extra() -> None:
    from prefect_neurodata.clients.aind.helpers import data_schema

    assert data_schema.QualityControl.__module__ == "aind_data_schema.core.quality_control"


# -- RDS default driver ----------------------------------------------------------------------


def test_default_drivername_is_the_shipped_psycopg2() -> None:
    assert resolve_drivername("postgresql") == "postgresql+psycopg2"
    assert resolve_drivername("postgresql+psycopg") == "postgresql+psycopg"
    client = Client(RDSCredentials(username="u", password="p", host="h", database="d"))
    assert client.drivername == "postgresql"
    # Building the engine imports the DBAPI: this is what failed with psycopg 3 missing.
    assert client._engine.dialect.driver == "psycopg2"
    assert isinstance(client._engine, sa.engine.Engine)


# -- DocumentDB SSH tunnel: agent and ~/.ssh keys as in 1.10 ------------------------------


class _RecordingForwarder:
    calls: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        type(self).calls.append(kwargs)


def test_tunnel_without_key_file_leaves_agent_and_home_keys_to_sshtunnel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(document_db_ssh, "SSHTunnelForwarder", _RecordingForwarder)
    _RecordingForwarder.calls = []
    creds = DocumentDbSSHCredentials(
        host="docdb", username="u", password="p", ssh_host="bastion", ssh_username="s",
        ssh_password="sp",
    )  # fmt: skip
    DocumentDbSSHClient(creds)._create_ssh_tunnel()
    kwargs = _RecordingForwarder.calls[0]
    # The arguments 1.10 passes, and nothing that would switch off sshtunnel's defaults
    # (allow_agent=True, host_pkey_directories=~/.ssh).
    assert set(kwargs) == {
        "ssh_address_or_host", "ssh_username", "ssh_password", "remote_bind_address",
        "local_bind_address",
    }  # fmt: skip
    assert kwargs["local_bind_address"] == ("localhost", 27017)


def test_tunnel_with_key_file_uses_only_that_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(document_db_ssh, "SSHTunnelForwarder", _RecordingForwarder)
    _RecordingForwarder.calls = []
    creds = DocumentDbSSHCredentials(
        host="docdb", username="u", password="p", ssh_host="bastion", ssh_username="s",
        ssh_pkey=str(tmp_path / "id_ed25519"),
    )  # fmt: skip
    DocumentDbSSHClient(creds)._create_ssh_tunnel()
    kwargs = _RecordingForwarder.calls[0]
    assert kwargs["allow_agent"] is False and kwargs["host_pkey_directories"] == []


# -- chunkedgraph: level2_chunk_graph bounds, get_roots bytes ---------------------------


@pytest.fixture
def cg(cave_rsps: responses.RequestsMock) -> Any:
    add_cg_handshake(cave_rsps)
    client = ChunkedGraphClient(
        LOCAL, table_name=TABLE, auth_client=AuthClient(token=TOKEN, server_address=LOCAL)
    )
    cave_rsps.calls.reset()
    return client


def test_level2_chunk_graph_sends_bounds_and_checks_used_bounds(cg, cave_rsps) -> None:
    root = 864691136812623475
    url = f"{CG_V1}/node/{root}/lvl2_graph"
    cave_rsps.get(url, json={"edge_graph": [[1, 2]]}, headers={"Used-Bounds": "True"})
    bounds = np.array([[83875, 85125], [82429, 83679], [20634, 20884]])
    assert cg.level2_chunk_graph(root, bounds=bounds) == [[1, 2]]
    assert query(cave_rsps.calls[0]) == {"bounds": ["83875-85125_82429-83679_20634-20884"]}
    cave_rsps.replace(responses.GET, url, json={"edge_graph": [[1, 2]]}, headers={})
    assert cg.level2_chunk_graph(root) == [[1, 2]]
    assert query(cave_rsps.calls[1]) == {}
    with pytest.raises(ValueError, match="Bounds were not used"):
        cg.level2_chunk_graph(root, bounds)


def test_level2_chunk_graph_bounds_need_server_2_15(cave_rsps) -> None:
    add_cg_handshake(cave_rsps)
    cave_rsps.replace(responses.GET, f"{LOCAL}/segmentation/api/version", json="1.0.0")
    old = ChunkedGraphClient(
        LOCAL, table_name=TABLE, auth_client=AuthClient(token=TOKEN, server_address=LOCAL)
    )
    cave_rsps.calls.reset()
    bounds = [[0, 1], [0, 1], [0, 1]]
    with pytest.raises(ServerIncompatibilityError):
        old.level2_chunk_graph(5, bounds=bounds)
    with pytest.raises(ServerIncompatibilityError):
        old.level2_chunk_graph(5, bounds)  # positionally too, as caveclient checks it
    assert len(cave_rsps.calls) == 0


def test_get_roots_sends_distinct_ids_in_the_callers_order(cg, cave_rsps) -> None:
    svids = np.array([97557743795364048, 75089979126506763], dtype=np.uint64)
    answer = np.array([864691135217871271, 864691135566275148], dtype=np.uint64)
    cave_rsps.post(f"{CG_V1}/roots_binary", body=answer.tobytes())
    assert cg.get_roots(svids).tolist() == answer.tolist()
    assert cave_rsps.calls[0].request.body == svids.tobytes()


# -- the compat tooling itself --------------------------------------------------------------


def test_alias_plugin_maps_official_names_to_ours() -> None:
    sys.path.insert(0, str(REPO / "compat"))
    try:
        import alias_plugin
    finally:
        sys.path.remove(str(REPO / "compat"))
    assert alias_plugin.target_name("caveclient") == "prefect_neurodata.clients.cave"
    assert (
        alias_plugin.target_name("aind_data_access_api.helpers.docdb")
        == "prefect_neurodata.clients.aind.helpers.docdb"
    )
    assert alias_plugin.target_name("caveclientx") is None
    import aind_data_access_api.helpers.docdb as aliased  # type: ignore[import-not-found]

    assert aliased is helpers_docdb
    for name in [n for n in sys.modules if alias_plugin.target_name(n)]:
        del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, alias_plugin.AliasFinder)]


def test_exclusion_list_names_only_accepted_kinds_with_covering_tests() -> None:
    import json

    doc = json.loads((REPO / "compat" / "exclusions.json").read_text())
    entries = [e for suite in doc["suites"].values() for e in suite]
    assert entries, "the list is read by compat/run.py"
    assert len(doc["suites"]["caveclient"]) <= 1
    for entry in entries:
        assert entry["kind"] in {"private-name", "transport-mock"}, entry
        assert entry["reason"] and entry["covered_by"], entry


def test_ssh_block_passes_host_key_fields_to_the_client() -> None:
    from prefect_neurodata.blocks import DocumentDbSshCredentials

    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    block = DocumentDbSshCredentials(
        host="docdb", username="u", password="p", ssh_host="bastion", ssh_username="s",
        ssh_password="sp", ssh_host_key=line, ssh_known_hosts="~/.ssh/known_hosts",
    )  # fmt: skip
    creds = block.get_client().credentials
    assert creds.ssh_host_key == line and creds.ssh_known_hosts == "~/.ssh/known_hosts"
    assert DocumentDbSshCredentials.model_fields["ssh_host_key"].default is None
    assert "not checked" in DocumentDbSshCredentials.model_fields["ssh_host_key"].description


def test_desired_resolution_is_assignable_before_materialize_is_built() -> None:
    from prefect_neurodata.clients.cave.frameworkclient import CAVEclientFull

    client = CAVEclientFull.__new__(CAVEclientFull)
    client._desired_resolution = None
    client.desired_resolution = (4, 4, 40)
    assert client.desired_resolution == [4, 4, 40]
    client.desired_resolution = None
    assert client.desired_resolution is None
