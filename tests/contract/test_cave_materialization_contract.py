"""Materialization client against the CAVE stand-in, over real HTTP.

Most tests use the session ``sandbox`` (seeded with ``SEED_SYNAPSES`` synapses). The row-limit
tests need a server whose ``QUERY_LIMIT_SIZE`` is small, so they start a second stand-in
in-process (same app, its own small SQLite world) on a loopback port with a 300-row limit.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import requests
import uvicorn

from prefect_neurodata.clients.cave import CAVEclient
from prefect_neurodata.clients.cave.materializationengine import QueryLimitError
from prefect_neurodata.sandbox.cave.app import create_app
from prefect_neurodata.sandbox.cave.world import CaveConfig
from tests.fixtures.sandbox import SEED_SYNAPSES

LIMIT = 300
LIMITED_SYNAPSES = 2_000


@pytest.fixture(scope="module")
def client(sandbox: Any) -> CAVEclient:
    env = sandbox.env
    return CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
    )


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CAVEclient]:
    """A client of an in-process stand-in whose row limit is `LIMIT`."""
    workdir = pathlib.Path(tmp_path_factory.mktemp("cave_limited"))
    config = CaveConfig(db_url=f"sqlite:///{workdir}/cave.sqlite", workdir=workdir)
    app = create_app(config, faults=False)
    app.state.world.query_limit_size = LIMIT
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the in-process CAVE stand-in did not start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    seeded = requests.post(
        f"{url}/__sandbox__/seed", json={"synapses": LIMITED_SYNAPSES, "seed": 5}, timeout=120
    )
    assert seeded.status_code == 200, seeded.text
    try:
        yield CAVEclient(
            config.datastack,
            server_address=url,
            auth_token=config.user_token,
            write_server_cache=False,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# the session sandbox
# ---------------------------------------------------------------------------------------------


def test_versions_tables_and_counts(client: CAVEclient) -> None:
    mat = client.materialize
    versions = mat.get_versions()
    assert versions and mat.most_recent_version() == max(versions)
    assert set(versions) <= set(mat.get_versions(expired=True))
    meta = mat.get_version_metadata(max(versions))
    assert meta["time_stamp"].tzinfo is not None
    assert mat.get_timestamp(max(versions)) == meta["time_stamp"]
    assert "synapses" in mat.get_tables()
    assert mat.get_annotation_count("synapses") == SEED_SYNAPSES
    table_meta = mat.get_table_metadata("synapses")
    assert table_meta["schema_type"] == "synapse"
    assert len(table_meta["voxel_resolution"]) == 3
    assert any(m["table_name"] == "synapses" for m in mat.get_tables_metadata())


def test_query_table_full_and_filtered(client: CAVEclient) -> None:
    mat = client.materialize
    df = mat.query_table("synapses", split_positions=True)
    assert len(df) == SEED_SYNAPSES and df["id"].is_unique
    assert str(df["pre_pt_root_id"].dtype) == "Int64"
    assert df.attrs["table_name"] == "synapses" and df.attrs["truncated"] is False
    root = int(df["post_pt_root_id"].value_counts().index[0])
    expected = df[df["post_pt_root_id"] == root]
    one = mat.query_table("synapses", filter_equal_dict={"post_pt_root_id": root})
    assert sorted(one["id"]) == sorted(expected["id"])
    assert isinstance(one["post_pt_position"].iloc[0], np.ndarray)
    count = mat.query_table("synapses", filter_in_dict={"post_pt_root_id": [root]}, get_counts=True)
    assert int(count["count"].iloc[0]) == len(expected)
    out = mat.query_table("synapses", filter_out_dict={"post_pt_root_id": [root]})
    assert len(out) == SEED_SYNAPSES - len(expected)
    big = mat.query_table(
        "synapses", filter_greater_dict={"size": 500}, select_columns=["id", "size"]
    )
    assert list(big.columns) == ["id", "size"] and (big["size"] > 500).all()
    assert len(big) == int((df["size"] > 500).sum())


def test_desired_resolution_rescales_positions(client: CAVEclient) -> None:
    mat = client.materialize
    native = mat.query_table(
        "synapses", limit=5, split_positions=True, select_columns=["id", "ctr_pt_position"]
    )
    nm = mat.query_table(
        "synapses",
        filter_in_dict={"id": native["id"].tolist()},
        split_positions=True,
        desired_resolution=[1, 1, 1],
        select_columns=["id", "ctr_pt_position"],
    )
    res = mat.get_table_metadata("synapses")["voxel_resolution"]
    merged = native.merge(nm, on="id", suffixes=("", "_nm"))
    for axis, scale in zip("xyz", res, strict=True):
        np.testing.assert_allclose(
            merged[f"ctr_pt_position_{axis}_nm"], merged[f"ctr_pt_position_{axis}"] * scale
        )
    assert nm.attrs["dataframe_resolution"] == [1.0, 1.0, 1.0]


def test_reference_merge_join_and_view(client: CAVEclient) -> None:
    mat = client.materialize
    merged = mat.query_table("cell_type_ref")
    assert any(c.endswith("_ref") for c in merged.columns)
    joined = mat.join_query(
        [["nucleus_detection", "id"], ["cell_type_ref", "target_id"]],
        suffixes={"nucleus_detection": "_nuc", "cell_type_ref": "_ct"},
    )
    assert len(joined) > 0 and joined.attrs["join_query"] is True
    views = mat.get_views()
    assert "large_synapses" in views
    view = mat.query_view("large_synapses")
    assert len(view) > 0
    assert "id" in mat.get_view_schema("large_synapses")


def test_live_queries_at_now(client: CAVEclient) -> None:
    mat = client.materialize
    now = dt.datetime.now(dt.timezone.utc)
    live = mat.live_live_query("synapses", now, limit=50)
    assert len(live) == 50 and live.attrs["live_query"] is True
    root = int(live["post_pt_root_id"].iloc[0])
    client_side = mat.query_table(
        "synapses", timestamp=now, filter_equal_dict={"post_pt_root_id": root}
    )
    assert len(client_side) > 0
    assert (client_side["post_pt_root_id"] == root).all()


# ---------------------------------------------------------------------------------------------
# a stand-in with a 300-row limit
# ---------------------------------------------------------------------------------------------


def test_query_beyond_the_limit_is_partitioned(limited: CAVEclient) -> None:
    mat = limited.materialize
    df = mat.query_table("synapses")
    assert len(df) == LIMITED_SYNAPSES
    assert df["id"].is_unique
    assert df.attrs["partitions"] > LIMITED_SYNAPSES // LIMIT
    assert mat.server_limit == LIMIT
    # the same answer through the server's count and a filtered partitioned query
    root = int(df["pre_pt_root_id"].value_counts().index[0])
    sub = mat.query_table("synapses", filter_greater_equal_dict={"size": 0})
    assert len(sub) == int((df["size"] >= 0).sum())
    assert int(df[df["pre_pt_root_id"] == root].shape[0]) == len(
        mat.query_table("synapses", filter_equal_dict={"pre_pt_root_id": root})
    )


def test_on_limit_raise(limited: CAVEclient) -> None:
    with pytest.raises(QueryLimitError, match=f"row limit of {LIMIT}"):
        limited.materialize.query_table("synapses", on_limit="raise")


def test_streaming_partitions(limited: CAVEclient) -> None:
    parts = list(limited.materialize.iter_query_table_partitions("synapses"))
    assert all(isinstance(p, pa.Table) and p.num_rows < LIMIT for p in parts)
    ids = [i for p in parts for i in p.column("id").to_pylist()]
    assert len(ids) == LIMITED_SYNAPSES == len(set(ids))


def test_live_live_query_partitioned(limited: CAVEclient) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    df = limited.materialize.live_live_query("synapses", now)
    assert len(df) == LIMITED_SYNAPSES and df["id"].is_unique


def test_client_and_server_live_queries_agree_between_versions(client: CAVEclient) -> None:
    """At a time between two versions (with edits in between), the client-side live query
    (past-id mapping + root updating) and the server's live query return the same rows."""
    mat = client.materialize
    metas = sorted(mat.get_versions_metadata(), key=lambda m: m["time_stamp"])
    assert len(metas) >= 2, "the seeded sandbox has at least two valid versions"
    ts = metas[-1]["time_stamp"] - dt.timedelta(seconds=1)
    server = mat.live_live_query("synapses", ts, split_positions=True)
    counts = server["post_pt_root_id"].value_counts()
    checked = 0
    for root in [int(r) for r in counts.index[:3]]:
        server_ids = sorted(server.loc[server["post_pt_root_id"] == root, "id"])
        local = mat.live_query("synapses", ts, filter_in_dict={"post_pt_root_id": [root]})
        assert sorted(local["id"]) == server_ids
        assert (local["post_pt_root_id"] == root).all()
        checked += 1
    assert checked == 3


def test_empty_results_keep_the_column_dtypes_of_non_empty_ones(client: CAVEclient) -> None:
    """Issue 11 item 8: a filter that matches nothing gives the same columns and dtypes."""
    mat = client.materialize
    some = mat.query_table("synapses", limit=5)
    none = mat.query_table("synapses", filter_equal_dict={"id": -1})
    assert len(some) == 5 and len(none) == 0
    assert list(none.columns) == list(some.columns)
    assert none.dtypes.astype(str).to_dict() == some.dtypes.astype(str).to_dict()
    now = dt.datetime.now(dt.timezone.utc)
    live_some = mat.query_table("synapses", timestamp=now, limit=5)
    live_none = mat.query_table("synapses", timestamp=now, filter_equal_dict={"id": -1})
    assert len(live_none) == 0
    assert live_none.dtypes.astype(str).to_dict() == live_some.dtypes.astype(str).to_dict()
