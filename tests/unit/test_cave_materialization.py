"""Materialization client: request shapes, Arrow decoding, attrs, and partitioning at the limit."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import requests
import responses
from responses import matchers

from prefect_neurodata.clients.cave import endpoints
from prefect_neurodata.clients.cave._partition import plan_ranges, split_range
from prefect_neurodata.clients.cave.base import ServerIncompatibilityError
from prefect_neurodata.clients.cave.materializationengine import (
    MaterializationClient,
    MaterializationClientV2,
    MaterializationClientV3,
    QueryLimitError,
    concatenate_position_columns,
    convert_position_columns,
    convert_timestamp,
    deserialize_query_response,
    string_format_timestamp,
)

ME = "https://local.example.org"
DS = "test_stack"
V = 7
V3 = f"{ME}/materialize/api/v3/datastack/{DS}"
V2 = f"{ME}/materialize/api/v2/datastack/{DS}"
TOKEN = "a" * 32
QUERY_PARAMS = {
    "return_pyarrow": "True",
    "arrow_format": "True",
    "split_positions": "True",
    "direct_sql_pandas": "True",
}


def make_client(api_version: int = 3, **kwargs: Any) -> MaterializationClientV2:
    cls = MaterializationClientV3 if api_version == 3 else MaterializationClientV2
    eps = dict(endpoints.materialization_common)
    eps.update(endpoints.materialization_api_versions[api_version])
    return cls(
        ME,
        {"Authorization": f"Bearer {TOKEN}"},
        api_version,
        eps,
        "me_server_address",
        DS,
        version=kwargs.pop("version", V),
        **kwargs,
    )


def arrow_body(df: pd.DataFrame, codec: str | None = "zstd") -> bytes:
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=codec)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def synapse_frame(ids: list[int]) -> pd.DataFrame:
    n = len(ids)
    ids_arr = np.asarray(ids, dtype=np.int64)
    return pd.DataFrame(
        {
            "id": pd.array(ids_arr, dtype="Int64"),
            "valid": pd.array([True] * n, dtype="boolean"),
            "pre_pt_supervoxel_id": pd.array(ids_arr + 1000, dtype="Int64"),
            "pre_pt_root_id": pd.array(ids_arr % 3 + 100, dtype="Int64"),
            "post_pt_root_id": pd.array(ids_arr % 2 + 100, dtype="Int64"),
            "size": pd.array(ids_arr * 1.5, dtype="Float32"),
            "pre_pt_position_x": ids_arr * 10,
            "pre_pt_position_y": ids_arr * 20,
            "pre_pt_position_z": ids_arr * 30,
        }
    )


TABLE_META = {
    "id": 3,
    "table_name": "synapses",
    "schema_type": "synapse",
    "schema": "synapse",
    "valid": True,
    "reference_table": None,
    "description": "test synapses",
    "notice_text": None,
    "voxel_resolution_x": 4.0,
    "voxel_resolution_y": 4.0,
    "voxel_resolution_z": 40.0,
}


def add_metadata(rsps: responses.RequestsMock, table: str = "synapses", **extra: Any) -> None:
    rsps.get(
        f"{V3}/version/{V}/table/{table}/metadata",
        json={**TABLE_META, "table_name": table, **extra},
    )
    # table size, asked for unfiltered queries (small: no partitioning expected)
    rsps.get(f"{V2}/version/{V}/table/{table}/count", json=3)


def body_of(call: Any) -> dict[str, Any]:
    return json.loads(call.request.body)


# ---------------------------------------------------------------------------------------------
# request shapes
# ---------------------------------------------------------------------------------------------


@responses.activate
def test_query_table_pins_url_params_headers_and_nested_body() -> None:
    client = make_client()
    add_metadata(responses.mock)
    responses.get(f"{ME}/materialize/version", json="5.26.4")
    expected_body = {
        "filter_in_dict": {"synapses": {"pre_pt_root_id": [101, 102]}},
        "filter_notin_dict": {"synapses": {"post_pt_root_id": [0]}},
        "filter_equal_dict": {"synapses": {"valid": True}},
        "filter_greater_dict": {"synapses": {"size": 1}},
        "filter_less_equal_dict": {"synapses": {"id": 9}},
        "filter_spatial_dict": {"synapses": {"pre_pt_position": [[0, 0, 0], [100, 200, 300]]}},
        "filter_regex_dict": {"synapses": {"name": "^a.*"}},
        "select_columns": ["id", "pre_pt_root_id", "pre_pt_position"],
        "limit": 5,
        "offset": 2,
        "desired_resolution": [4.0, 4.0, 40.0],
    }
    responses.post(
        f"{V3}/version/{V}/table/synapses/query",
        body=arrow_body(synapse_frame([1, 2, 3])),
        content_type="data.arrow",
        headers={"dataframe_resolution": "4.0, 4.0, 40.0", "column_names": "{'synapses': {}}"},
        match=[
            matchers.query_param_matcher(QUERY_PARAMS),
            matchers.header_matcher(
                {
                    "Accept-Encoding": "zstd",
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {TOKEN}",
                }
            ),
            matchers.json_params_matcher(expected_body),
        ],
    )
    df = client.query_table(
        "synapses",
        filter_in_dict={"pre_pt_root_id": np.array([101, 102], dtype=np.uint64)},
        filter_out_dict={"post_pt_root_id": [0]},
        filter_equal_dict={"valid": True},
        filter_spatial_dict={"pre_pt_position": np.array([[0, 0, 0], [100, 200, 300]])},
        filter_regex_dict={"name": "^a.*"},
        filter_greater_dict={"size": 1},
        filter_less_equal_dict={"id": 9},
        select_columns=["id", "pre_pt_root_id", "pre_pt_position"],
        limit=5,
        offset=2,
        desired_resolution=[4, 4, 40],
    )
    assert list(df["id"]) == [1, 2, 3]
    assert str(df["id"].dtype) == "Int64"
    assert str(df["valid"].dtype) == "boolean"
    # positions merged into one array column, at the triple's place
    assert "pre_pt_position" in df.columns and "pre_pt_position_x" not in df.columns
    assert list(df.columns).index("pre_pt_position") == len(df.columns) - 1
    np.testing.assert_array_equal(df["pre_pt_position"].iloc[1], [20, 40, 60])
    assert df.attrs["table_voxel_resolution"] == [4.0, 4.0, 40.0]
    assert df.attrs["dataframe_resolution"] == [4.0, 4.0, 40.0]
    assert df.attrs["filters"]["exclusive"] == {"post_pt_root_id": [0]}
    assert df.attrs["filters"]["greater"] == {"size": 1}
    assert df.attrs["datastack_name"] == DS and df.attrs["join_query"] is False
    assert df.attrs["materialization_version"] == V
    assert df.attrs["column_names"] == "{'synapses': {}}"
    assert df.attrs["limit"] == 5 and df.attrs["offset"] == 2
    json.dumps(df.attrs)  # JSON-safe, so pd.concat of two results works


@responses.activate
@pytest.mark.parametrize("codec", [None, "zstd", "lz4"])
def test_arrow_bodies_compressed_or_not_decode_identically(codec: str | None) -> None:
    client = make_client()
    add_metadata(responses.mock)
    frame = synapse_frame([5, 6])
    responses.post(
        f"{V3}/version/{V}/table/synapses/query",
        body=arrow_body(frame, codec),
        content_type="data.arrow",
    )
    df = client.query_table("synapses", split_positions=True, metadata=False)
    pd.testing.assert_frame_equal(df, frame)


@responses.activate
def test_warning_header_is_logged_and_notice_kept(caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    add_metadata(responses.mock)
    responses.post(
        f"{V3}/version/{V}/table/synapses/query",
        body=arrow_body(synapse_frame([1])),
        content_type="data.arrow",
        headers={"Warning": "Table Owner Notice on synapses: beware, rows are provisional"},
    )
    with caplog.at_level(logging.WARNING, logger="prefect_neurodata.cave.materialize"):
        client.query_table("synapses")
    assert any("beware, rows are provisional" in r.getMessage() for r in caplog.records)


@responses.activate
def test_log_warning_false_keeps_the_server_warnings_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 5.25's log_warning argument of query_table, join_query, live_query and live_live_query
    client = make_client()
    add_metadata(responses.mock)
    add_metadata(responses.mock, "cells")
    notice = {"Warning": "Table Owner Notice on synapses: beware, rows are provisional"}
    for url in (f"{V3}/version/{V}/table/synapses/query", f"{V3}/version/{V}/query"):
        responses.post(
            url, body=arrow_body(synapse_frame([1])), content_type="data.arrow", headers=notice
        )
    join = [["synapses", "pre_pt_root_id"], ["cells", "pt_root_id"]]
    with caplog.at_level(logging.WARNING, logger="prefect_neurodata.cave.materialize"):
        client.query_table("synapses", log_warning=False)
        client.join_query(join, log_warning=False)
    assert not any("beware" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING, logger="prefect_neurodata.cave.materialize"):
        client.join_query(join)
    assert any("beware" in r.getMessage() for r in caplog.records)


@responses.activate
def test_return_df_false_asks_for_json_with_gzip() -> None:
    client = make_client()
    responses.post(
        f"{V3}/version/{V}/table/synapses/query",
        json=[{"id": 1, "pre_pt_root_id": 5}],
        match=[
            matchers.query_param_matcher(
                {**QUERY_PARAMS, "return_pyarrow": "False", "arrow_format": "False"}
            ),
            matchers.header_matcher({"Accept-Encoding": "gzip"}),
        ],
    )
    responses.get(f"{V2}/version/{V}/table/synapses/count", json=1)
    out = client.query_table("synapses", return_df=False, merge_reference=False)
    assert out == [{"id": 1, "pre_pt_root_id": 5}]


@responses.activate
def test_get_counts_and_random_sample_params() -> None:
    client = make_client()
    responses.post(
        f"{V3}/version/{V}/table/synapses/query",
        body=arrow_body(pd.DataFrame({"count": pd.array([42], dtype="Int64")})),
        content_type="data.arrow",
        match=[matchers.query_param_matcher({**QUERY_PARAMS, "count": "True"})],
    )
    df = client.query_table("synapses", get_counts=True, merge_reference=False)
    assert int(df["count"].iloc[0]) == 42
    responses.post(
        f"{V3}/version/{V}/table/synapses/query",
        body=arrow_body(synapse_frame([1, 2])),
        content_type="data.arrow",
        match=[matchers.query_param_matcher({**QUERY_PARAMS, "random_sample": "2"})],
    )
    df = client.query_table("synapses", random_sample=2, merge_reference=False, metadata=False)
    assert len(df) == 2


@responses.activate
def test_reference_table_becomes_a_join_v3() -> None:
    client = make_client()
    add_metadata(responses.mock, table="cell_types", reference_table="nuclei")
    add_metadata(responses.mock, table="nuclei")
    responses.post(
        f"{V3}/version/{V}/query",
        body=arrow_body(pd.DataFrame({"id": pd.array([1], dtype="Int64")})),
        content_type="data.arrow",
        match=[
            matchers.json_params_matcher(
                {
                    "filter_equal_dict": {"cell_types": {"cell_type": "basket"}},
                    "tables": [["cell_types", "target_id"], ["nuclei", "id"]],
                    "suffix_map": {"cell_types": "", "nuclei": "_ref"},
                    "select_column_map": {"cell_types": ["id", "cell_type"]},
                }
            )
        ],
    )
    df = client.query_table(
        "cell_types", filter_equal_dict={"cell_type": "basket"}, select_columns=["id", "cell_type"]
    )
    assert list(df["id"]) == [1]


@responses.activate
def test_join_query_body() -> None:
    client = make_client()
    add_metadata(responses.mock, table="a")
    add_metadata(responses.mock, table="b", voxel_resolution_z=45.0)
    responses.post(
        f"{V3}/version/{V}/query",
        body=arrow_body(pd.DataFrame({"id": pd.array([1, 2], dtype="Int64")})),
        content_type="data.arrow",
        match=[
            matchers.query_param_matcher(QUERY_PARAMS),
            matchers.json_params_matcher(
                {
                    "filter_in_dict": {"a": {"pt_root_id": [1, 2]}},
                    "filter_equal_dict": {"b": {"tag": "x"}},
                    "tables": [["a", "id"], ["b", "target_id"]],
                    "select_column_map": {"a": ["id"], "b": ["tag"]},
                    "suffix_map": {"a": "_a", "b": "_b"},
                }
            ),
        ],
    )
    df = client.join_query(
        [["a", "id"], ["b", "target_id"]],
        filter_in_dict={"a": {"pt_root_id": [1, 2]}},
        filter_equal_dict={"b": {"tag": "x"}},
        select_columns={"a": ["id"], "b": ["tag"]},
        suffixes={"a": "_a", "b": "_b"},
    )
    assert len(df) == 2
    assert df.attrs["join_query"] is True
    assert df.attrs["tables"]["b"]["join_column"] == "target_id"
    assert df.attrs["dataframe_resolution"] == "mixed_resolutions"


def test_join_query_rejects_bad_tables_before_sending() -> None:
    client = make_client()
    with responses.RequestsMock() as rsps, pytest.raises(ValueError, match="tables must be"):
        client.join_query(["a", "b"])
    assert len(rsps.calls) == 0


@responses.activate
def test_query_view_url_and_body() -> None:
    client = make_client()
    responses.get(f"{V3}/version/{V}/views/my_view/metadata", json={"voxel_resolution_x": 1})
    responses.post(
        f"{V3}/version/{V}/views/my_view/query",
        body=arrow_body(pd.DataFrame({"id": pd.array([1], dtype="Int64")})),
        content_type="data.arrow",
        match=[
            matchers.query_param_matcher(QUERY_PARAMS),
            matchers.json_params_matcher({"filter_in_dict": {"my_view": {"id": [1]}}}),
        ],
    )
    df = client.query_view("my_view", filter_in_dict={"id": [1]})
    assert list(df["id"]) == [1]


def test_query_view_needs_api_v3() -> None:
    client = make_client(api_version=2)
    assert not hasattr(client, "query_view")
    v3 = make_client()
    v3._api_version = 2
    with pytest.raises(ServerIncompatibilityError):
        v3.get_views()


@responses.activate
def test_live_live_query_body_and_params() -> None:
    client = make_client()
    add_metadata(responses.mock)
    ts = dt.datetime(2024, 6, 5, 10, 10, 1, 203215, tzinfo=dt.timezone.utc)
    responses.post(
        f"{V3}/query",
        body=arrow_body(synapse_frame([1, 2])),
        content_type="data.arrow",
        match=[
            matchers.query_param_matcher(
                {
                    "return_pyarrow": "True",
                    "arrow_format": "True",
                    "merge_reference": "False",
                    "allow_missing_lookups": "False",
                    "allow_invalid_root_ids": "True",
                    "direct_sql_pandas": "True",
                }
            ),
            matchers.header_matcher({"Accept-Encoding": "zstd"}),
            matchers.json_params_matcher(
                {
                    "table": "synapses",
                    "timestamp": "2024-06-05T10:10:01.203215+00:00",
                    "filter_equal_dict": {"synapses": {"post_pt_root_id": 101}},
                    "filter_regex_dict": {"synapses": {"name": "x"}},
                    "select_columns": {"synapses": ["id", "pre_pt_position"]},
                    "suffixes": {"synapses": ""},
                    "desired_resolution": [1.0, 1.0, 1.0],
                }
            ),
        ],
    )
    df = client.live_live_query(
        "synapses",
        ts,
        filter_equal_dict={"synapses": {"post_pt_root_id": 101}},
        filter_regex_dict={"synapses": {"name": "x"}},
        select_columns={"synapses": ["id", "pre_pt_position"]},
        suffixes={"synapses": ""},
        desired_resolution=[1, 1, 1],
        allow_invalid_root_ids=True,
    )
    assert len(df) == 2
    assert df.attrs["live_query"] is True
    assert df.attrs["timestamp"] == "2024-06-05T10:10:01.203215"


def test_live_live_query_rejects_unknown_table_in_filters() -> None:
    client = make_client()
    with pytest.raises(ValueError, match="not part of the query"):
        client.live_live_query(
            "synapses", dt.datetime.now(dt.timezone.utc), filter_in_dict={"other": {"id": [1]}}
        )


# ---------------------------------------------------------------------------------------------
# versions, metadata and the smaller endpoints
# ---------------------------------------------------------------------------------------------


@responses.activate
def test_versions_and_metadata_endpoints() -> None:
    client = make_client(version=None)
    responses.get(
        f"{V3}/versions",
        json=[3, 7, 5],
        match=[matchers.query_param_matcher({"expired": "False"})],
    )
    responses.get(
        f"{V3}/versions",
        json=[1, 3, 5, 7],
        match=[matchers.query_param_matcher({"expired": "True"})],
    )
    version_record = {
        "id": 1,
        "datastack": DS,
        "version": 7,
        "time_stamp": "2021-04-12T08:10:00.255735",
        "expires_on": None,
        "valid": True,
        "status": "AVAILABLE",
        "is_merged": True,
        "parent_version": None,
    }
    responses.get(f"{V3}/version/7", json=version_record)
    responses.get(
        f"{V3}/metadata",
        json=[version_record],
        match=[matchers.query_param_matcher({"expired": "False"})],
    )
    responses.get(f"{V2}/version/7/tables", json=["synapses"])
    responses.get(f"{V2}/version/7/table/synapses/count", json=1234)
    responses.get(f"{V3}/version/7/tables/metadata", json=[TABLE_META])
    responses.get(f"{V3}/table/synapses/unique_string_values", json={"tag": ["a", "b"]})
    responses.get(f"{V3}/version/7/views", json={"v1": {"id": 1}})
    responses.get(f"{V3}/version/7/views/v1/schema", json={"id": {"type": "integer"}})
    responses.get(f"{V3}/version/7/views/schemas", json={"v1": {"id": {"type": "integer"}}})

    assert client.most_recent_version() == 7
    assert client.version == 7
    assert client.get_versions(expired=True) == [1, 3, 5, 7]
    client.version = 5
    assert client.version == 5
    with pytest.raises(ValueError, match="not available"):
        client.version = 2
    client.version = 7
    meta = client.get_version_metadata()
    assert meta["time_stamp"] == dt.datetime(2021, 4, 12, 8, 10, 0, 255735, tzinfo=dt.timezone.utc)
    assert meta["expires_on"].year == pd.Timestamp.max.year
    assert client.get_timestamp(7) == meta["time_stamp"]
    assert client.get_versions_metadata()[0]["version"] == 7
    assert client.get_tables() == ["synapses"]
    assert client.get_annotation_count("synapses") == 1234
    assert client.get_tables_metadata()[0]["voxel_resolution"] == [4.0, 4.0, 40.0]
    assert client.get_unique_string_values("synapses") == {"tag": ["a", "b"]}
    assert client.get_views() == {"v1": {"id": 1}}
    assert client.get_view_schema("v1") == {"id": {"type": "integer"}}
    assert client.get_view_schemas() == {"v1": {"id": {"type": "integer"}}}
    assert client.homepage == f"{ME}/materialize/views/datastack/{DS}"


@responses.activate
def test_table_metadata_is_cached_and_resolution_folded() -> None:
    client = make_client()
    add_metadata(responses.mock)
    first = client.get_table_metadata("synapses")
    first["voxel_resolution"].append(99)  # a caller mutating the result must not poison the cache
    second = client.get_table_metadata("synapses")
    assert second["voxel_resolution"] == [4.0, 4.0, 40.0]
    assert "voxel_resolution_x" not in second
    assert len(responses.calls) == 1


@responses.activate
def test_ingest_and_lookup_supervoxels() -> None:
    client = make_client()
    base = f"{ME}/materialize/api/v2/materialize/run"
    responses.post(f"{base}/ingest_annotations/datastack/{DS}/synapses", json={"status": "ok"})
    responses.post(
        f"{base}/lookup_svid/datastack/{DS}/synapses",
        json={"status": "queued"},
        match=[matchers.json_params_matcher({"annotation_ids": [1, 2]})],
    )
    responses.post(
        f"{base}/lookup_svid/datastack/{DS}/synapses",
        json={"status": "queued"},
        match=[matchers.json_params_matcher({})],
    )
    assert client.ingest_annotation_table("synapses") == {"status": "ok"}
    assert client.lookup_supervoxel_ids("synapses", annotation_ids=np.array([1, 2])) == {
        "status": "queued"
    }
    assert client.lookup_supervoxel_ids("synapses") == {"status": "queued"}
    assert responses.calls[1].request.headers["Accept-Encoding"] == ""


@responses.activate
def test_inequality_filters_need_a_recent_server() -> None:
    client = make_client()
    responses.get(f"{ME}/materialize/version", json="4.30.0")
    with pytest.raises(ServerIncompatibilityError, match="filter_greater_dict"):
        client.query_table("synapses", filter_greater_dict={"id": 1})
    assert [c.request.method for c in responses.calls] == ["GET"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit must be a positive"),
        ({"on_limit": "truncate"}, "on_limit must be one of"),
        ({"filter_in_dict": {"id": 5}}, "must be a list"),
        ({"filter_spatial_dict": {"pt_position": [1, 2, 3]}}, "bounding box"),
        ({"filter_equal_dict": {"id": [1, 2]}}, "single value"),
        ({"select_columns": "id"}, "select_columns"),
        ({"desired_resolution": [1, 1]}, "desired_resolution"),
    ],
)
def test_bad_arguments_fail_before_any_request(kwargs: dict[str, Any], message: str) -> None:
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        add_metadata(rsps)
        with pytest.raises(ValueError, match=message):
            client.query_table("synapses", merge_reference=False, **kwargs)
        assert not [c for c in rsps.calls if c.request.method == "POST"]


@responses.activate
def test_v2_without_resolution_header_scales_client_side() -> None:
    client = make_client(api_version=2)
    responses.get(f"{V2}/version/{V}/table/synapses/metadata", json=TABLE_META)
    responses.get(f"{V2}/version/{V}/table/synapses/count", json=1)
    responses.post(
        f"{V2}/version/{V}/table/synapses/query",
        body=arrow_body(synapse_frame([1])),
        content_type="data.arrow",
    )
    df = client.query_table("synapses", desired_resolution=[1, 1, 1], split_positions=True)
    assert df["pre_pt_position_x"].iloc[0] == pytest.approx(40.0)
    assert df["pre_pt_position_z"].iloc[0] == pytest.approx(1200.0)
    assert df.attrs["dataframe_resolution"] == [1.0, 1.0, 1.0]


@responses.activate
def test_unknown_content_type_is_an_error() -> None:
    client = make_client()
    responses.post(f"{V3}/version/{V}/table/synapses/query", body=b"??", content_type="text/html")
    responses.get(f"{V2}/version/{V}/table/synapses/count", json=1)
    with pytest.raises(ValueError, match="Unknown response type"):
        client.query_table("synapses", merge_reference=False)


# ---------------------------------------------------------------------------------------------
# a fake server with a 5-row limit
# ---------------------------------------------------------------------------------------------


class FakeLimitedServer:
    """Applies in / >= / < filters on ``id`` and the count flag; answers at most 5 rows."""

    def __init__(self, ids: list[int], limit: int = 5, table: str = "synapses") -> None:
        self.frame = synapse_frame(ids)
        self.limit = limit
        self.table = table
        self.bodies: list[dict[str, Any]] = []
        self.counts = 0

    def __call__(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        body = json.loads(request.body)
        params = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        self.bodies.append(body)
        df = self.frame
        ge = (body.get("filter_greater_equal_dict") or {}).get(self.table, {})
        lt = (body.get("filter_less_dict") or {}).get(self.table, {})
        inn = (body.get("filter_in_dict") or {}).get(self.table, {})
        if "id" in ge:
            df = df[df["id"] >= ge["id"]]
        if "id" in lt:
            df = df[df["id"] < lt["id"]]
        for col, values in inn.items():
            df = df[df[col].isin(values)]
        if params.get("count") == "True":
            self.counts += 1
            self.bodies.pop()
            out = pd.DataFrame({"count": pd.array([len(df)], dtype="Int64")})
            return 200, {"Content-Type": "data.arrow"}, arrow_body(out)
        limit = min(body.get("limit") or self.limit, self.limit)
        df = df.iloc[body.get("offset") or 0 :].iloc[:limit]
        headers = {"Content-Type": "data.arrow"}
        if len(df) == limit:
            headers["Warning"] = f'201 - "Limited query to {limit} rows'
        if params.get("return_pyarrow") == "False":
            headers["Content-Type"] = "application/json"
            records = df[["id", "pre_pt_root_id"]].astype("int64").to_dict(orient="records")
            return 200, headers, json.dumps(records).encode()
        return 200, headers, arrow_body(df.reset_index(drop=True))


def serve(
    rsps: responses.RequestsMock, server: FakeLimitedServer, count: int | None = None
) -> None:
    rsps.add_callback(responses.POST, f"{V3}/version/{V}/table/synapses/query", callback=server)
    rsps.get(f"{ME}/materialize/version", json="5.26.4")
    rsps.get(f"{V3}/version/{V}/table/synapses/metadata", json=TABLE_META)
    rsps.get(
        f"{V2}/version/{V}/table/synapses/count",
        json=len(server.frame) if count is None else count,
    )


@pytest.mark.parametrize(
    "ids",
    [
        list(range(1, 24)),  # dense
        list(range(1, 11)) + list(range(1000, 1013)),  # two clusters
        [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 2_000_000],  # far outlier
    ],
)
def test_partitioning_returns_every_row_exactly_once(ids: list[int]) -> None:
    server = FakeLimitedServer(ids)
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        df = client.query_table("synapses", merge_reference=False, metadata=True)
        assert sorted(df["id"].tolist()) == sorted(ids)
        assert df["id"].is_unique
        assert df.attrs["truncated"] is False and df.attrs["partitions"] >= 3
        assert client.server_limit == 5
        # every partition request stays under the limit or was split further
        assert all("limit" not in b for b in server.bodies[1:])
        # a second query knows the limit and the table size: no wasted full query
        server.bodies.clear()
        df2 = client.query_table("synapses", merge_reference=False, metadata=False)
        assert sorted(df2["id"].tolist()) == sorted(ids)
        assert all(
            "filter_greater_equal_dict" in b or "filter_less_dict" in b for b in server.bodies
        )


def test_partitioning_keeps_user_filters_and_limit() -> None:
    ids = list(range(1, 30))
    server = FakeLimitedServer(ids)
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        df = client.query_table(
            "synapses",
            filter_in_dict={"post_pt_root_id": [100]},
            merge_reference=False,
            limit=9,
            metadata=False,
        )
    expected = [i for i in ids if i % 2 == 0]
    assert df["id"].tolist() == expected[:9]
    assert all(
        b["filter_in_dict"] == {"synapses": {"post_pt_root_id": [100]}} for b in server.bodies
    )


def test_json_answers_are_partitioned_too() -> None:
    ids = list(range(1, 14))
    server = FakeLimitedServer(ids)
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        records = client.query_table(
            "synapses", return_df=False, merge_reference=False, filter_in_dict={"id": ids}
        )
        assert sorted(r["id"] for r in records) == ids
        first = client.query_table(
            "synapses", return_df=False, merge_reference=False, limit=7, offset=2
        )
    assert len(first) == 7


def test_on_limit_raise() -> None:
    server = FakeLimitedServer(list(range(1, 12)))
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        with pytest.raises(QueryLimitError, match="row limit of 5") as info:
            client.query_table("synapses", merge_reference=False, on_limit="raise")
    assert info.value.limit == 5 and info.value.rows == 5


def test_user_limit_equal_to_answer_is_not_truncation() -> None:
    server = FakeLimitedServer(list(range(1, 12)))
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        df = client.query_table(
            "synapses", merge_reference=False, limit=3, on_limit="raise", metadata=False
        )
    assert df["id"].tolist() == [1, 2, 3]
    assert len(server.bodies) == 1


def test_random_sample_cut_at_limit_raises() -> None:
    server = FakeLimitedServer(list(range(1, 12)))
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        with pytest.raises(QueryLimitError, match="cannot be partitioned"):
            client.query_table("synapses", merge_reference=False, random_sample=8)


def test_partitioning_needs_inequality_support() -> None:
    server = FakeLimitedServer(list(range(1, 12)))
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.POST, f"{V3}/version/{V}/table/synapses/query", callback=server)
        rsps.get(f"{ME}/materialize/version", status=404, json={"message": "nope"})
        rsps.get(f"{V2}/version/{V}/table/synapses/count", json=11)
        with pytest.raises(QueryLimitError, match="inequality"):
            client.query_table("synapses", merge_reference=False)


def test_iter_query_table_partitions_streams_arrow() -> None:
    ids = list(range(1, 18))
    server = FakeLimitedServer(ids)
    client = make_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        parts = list(client.iter_query_table_partitions("synapses", merge_reference=False))
    assert all(isinstance(p, pa.Table) for p in parts)
    assert all(p.num_rows < 5 for p in parts)
    got = [i for p in parts for i in p.column("id").to_pylist()]
    assert got == ids  # ascending id ranges, no duplicates
    assert "pre_pt_position_x" in parts[0].column_names


def test_synapse_query_filters_and_autapses() -> None:
    server = FakeLimitedServer(list(range(1, 5)), limit=100)
    client = make_client(synapse_table="synapses")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        df = client.synapse_query(pre_ids=[100, 101, 102], post_ids=100, metadata=True)
    body = server.bodies[0]
    assert body["filter_in_dict"] == {"synapses": {"pre_pt_root_id": [100, 101, 102]}}
    assert body["filter_equal_dict"] == {"synapses": {"post_pt_root_id": 100}}
    assert (df["pre_pt_root_id"] != df["post_pt_root_id"]).all()
    assert df.attrs["remove_autapses"] is True


# ---------------------------------------------------------------------------------------------
# client-side live query
# ---------------------------------------------------------------------------------------------


class FakeChunkedGraph:
    """Root 100 split after the version into 200 (supervoxels < 1003) and 201."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def is_latest_roots(self, ids: Any, timestamp: Any = None) -> np.ndarray:
        self.calls.append("is_latest_roots")
        return np.array([int(i) not in (100,) for i in np.asarray(ids)], dtype=bool)

    def get_root_timestamps(self, ids: Any) -> np.ndarray:
        return np.array([dt.datetime(2021, 5, 1, tzinfo=dt.timezone.utc) for _ in ids])

    def get_past_ids(self, ids: Any, timestamp_past: Any = None, timestamp_future: Any = None):
        # like PyChunkedGraph, a split past id maps forward to only one of its pieces
        return {"past_id_map": {200: [100], 201: [100]}, "future_id_map": {100: 200}}

    def get_roots(self, svs: Any, timestamp: Any = None) -> np.ndarray:
        self.calls.append("get_roots")
        return np.array([200 if int(s) < 1003 else 201 for s in np.asarray(svs)], dtype=np.uint64)


def test_live_query_maps_filters_updates_roots_and_post_filters() -> None:
    ids = list(range(1, 7))
    frame = synapse_frame(ids)
    frame["pre_pt_root_id"] = pd.array([100] * 6, dtype="Int64")
    server = FakeLimitedServer(ids, limit=100)
    server.frame = frame
    client = make_client(cg_client=FakeChunkedGraph())
    version_record = {
        "version": V,
        "time_stamp": "2021-04-12T08:10:00.255735",
        "expires_on": None,
        "valid": True,
    }
    ts = dt.datetime(2021, 6, 1, tzinfo=dt.timezone.utc)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        rsps.get(f"{V3}/metadata", json=[version_record])
        add_metadata(rsps)
        df = client.live_query("synapses", ts, filter_equal_dict={"pre_pt_root_id": 200})
    # the root-id equality went out as an IN of the past ids
    assert server.bodies[0]["filter_in_dict"] == {"synapses": {"pre_pt_root_id": [100]}}
    assert "filter_equal_dict" not in server.bodies[0]
    # rows were moved to the new roots and post-filtered to the 200 piece
    assert df["id"].tolist() == [1, 2]
    assert set(df["pre_pt_root_id"]) == {200}
    assert df.attrs["live_query"] is True
    assert df.attrs["timestamp"] == "2021-06-01T00:00:00.000000"
    assert "pre_pt_position" in df.columns

    # an exclusion of a current root is applied after the roots moved forward, not sent back
    # to the version (where root 100 also holds the rows of 200, which are wanted)
    server.bodies.clear()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        serve(rsps, server)
        rsps.get(f"{V3}/metadata", json=[version_record])
        add_metadata(rsps)
        kept = client.live_query("synapses", ts, filter_out_dict={"pre_pt_root_id": [201]})
    assert "filter_notin_dict" not in server.bodies[0]
    assert kept["id"].tolist() == [1, 2]


def test_live_query_rejects_expired_roots() -> None:
    client = make_client(cg_client=FakeChunkedGraph())
    version_record = {"version": V, "time_stamp": "2021-04-12T08:10:00.255735", "valid": True}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(f"{V3}/metadata", json=[version_record])
        with pytest.raises(ValueError, match=r"expired.*\[100\]"):
            client.live_query(
                "synapses",
                dt.datetime(2021, 6, 1, tzinfo=dt.timezone.utc),
                filter_in_dict={"pre_pt_root_id": [100]},
            )
        with pytest.raises(ValueError, match="not recent enough"):
            client.live_query("synapses", dt.datetime(2020, 1, 1))


@pytest.mark.parametrize("bad", [-1, 2**63])
def test_live_query_refuses_root_ids_outside_int64_before_the_chunkedgraph(bad: int) -> None:
    cg = FakeChunkedGraph()
    client = make_client(cg_client=cg)
    version_record = {"version": V, "time_stamp": "2021-04-12T08:10:00.255735", "valid": True}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(f"{V3}/metadata", json=[version_record])
        with pytest.raises(ValueError, match=rf"non-negative node id below 2\*\*63, got {bad}\b"):
            client.live_query(
                "synapses",
                dt.datetime(2021, 6, 1, tzinfo=dt.timezone.utc),
                filter_in_dict={"pre_pt_root_id": [5, bad]},
            )
    assert cg.calls == []  # issue 11 item 7: refused before any chunkedgraph request


# ---------------------------------------------------------------------------------------------
# module functions, factory, pure helpers
# ---------------------------------------------------------------------------------------------


def test_convert_and_format_timestamps() -> None:
    aware = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    assert convert_timestamp(dt.datetime(2024, 1, 2, 3, 4, 5, 6)) == aware
    assert convert_timestamp("2024-01-02T03:04:05.000006") == aware
    assert convert_timestamp(aware.timestamp()) == aware
    assert convert_timestamp(pd.Timestamp(aware)) == aware
    assert convert_timestamp("now").tzinfo is not None
    assert convert_timestamp(None).year == 9999
    assert string_format_timestamp(aware) == "2024-01-02T03:04:05.000006"
    with pytest.raises(ValueError):
        convert_timestamp("yesterday-ish")


def test_position_helpers() -> None:
    df = pd.DataFrame(
        {"a": [1, 2], "pt_position_x": [1, 2], "pt_position_y": [3, 4], "pt_position_z": [5, 6]}
    )
    merged = concatenate_position_columns(df)
    assert list(merged.columns) == ["a", "pt_position"]
    np.testing.assert_array_equal(merged["pt_position"].iloc[1], [2, 4, 6])
    assert "pt_position_x" in df.columns  # not in place
    scaled = convert_position_columns(df.copy(), [4, 4, 40], [1, 1, 1])
    assert scaled["pt_position_z"].tolist() == [200.0, 240.0]


def test_deserialize_query_response() -> None:
    response = responses.Response(method="POST", url="http://x")  # placeholder for type
    del response
    import requests

    r = requests.Response()
    r._content = arrow_body(synapse_frame([1, 2]))
    r.headers["Content-Type"] = "data.arrow"
    assert deserialize_query_response(r)["id"].tolist() == [1, 2]
    r.headers["Content-Type"] = "x-application/pyarrow"
    with pytest.raises(ValueError, match="pa.serialize"):
        deserialize_query_response(r)


@responses.activate
def test_factory_negotiates_version() -> None:
    responses.get(f"{ME}/materialize/api/versions", json=[2, 3])
    client = MaterializationClient(ME, DS, api_version="latest")
    assert isinstance(client, MaterializationClientV3) and client.api_version == 3
    # a server without the lookup falls back to API 2, as caveclient does
    responses.replace(responses.GET, f"{ME}/materialize/api/versions", status=404)
    fallback = MaterializationClient(ME, DS, max_retries=0)
    assert type(fallback) is MaterializationClientV2 and fallback.api_version == 2
    # a failing one (503 after the retries) is an outage, not an answer: no silent V2 client
    responses.replace(responses.GET, f"{ME}/materialize/api/versions", status=503)
    with pytest.raises(requests.HTTPError, match="503"):
        MaterializationClient(ME, DS, max_retries=0)


def test_plan_and_split_ranges_cover_every_id() -> None:
    ranges = plan_ranges(total=1_000_000, lo=1, hi=1_000_001, limit=200_000)
    assert ranges[0] == (None, 1) and ranges[-1] == (1_000_001, None)
    for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False):
        assert hi == lo
    bounded = ranges[1:-1]
    assert len(bounded) == 9
    assert all(b - a <= 120_000 for a, b in bounded)
    assert split_range((10, 20), 5) == [(10, 13), (13, 16), (16, 19), (19, 20)]
    assert split_range((None, 20), 5) == [(None, 10), (10, 20)]
    assert split_range((None, 20), 5, span=(3, 30)) == [(None, 3), (3, 20)]
    assert split_range((20, None), 5) == [(20, 30), (30, None)]
    assert split_range((20, None), 5, span=(3, 50)) == [(20, 50), (50, None)]
    with pytest.raises(QueryLimitError):
        split_range((7, 8), 1)


SYNAPSE_SCHEMA = {
    "$ref": "#/definitions/Synapse",
    "definitions": {
        "Synapse": {
            "properties": {
                **{
                    pt: {"$ref": "#/definitions/BoundSpatialPoint"}
                    for pt in ("pre_pt", "ctr_pt", "post_pt")
                },
                "size": {"type": "float"},
            }
        }
    },
}


@responses.activate
def test_tables_manager_builds_filters() -> None:
    # The manager of a bare client, from the metadata and schemas `client.tables` fetches
    # (tests/unit/test_cave_tables.py covers the fetching through a full CAVEclient).
    from prefect_neurodata.clients.cave._tables import TableManager

    client = make_client()
    add_metadata(responses.mock)
    metas = [TABLE_META, {**TABLE_META, "table_name": "nuclei"}]
    client._tables_manager = TableManager(client, metas, {"synapse": SYNAPSE_SCHEMA}, dict)
    responses.post(
        f"{V3}/version/{V}/table/synapses/query",
        body=arrow_body(synapse_frame([1])),
        content_type="data.arrow",
        match=[
            matchers.json_params_matcher(
                {
                    "filter_in_dict": {"synapses": {"pre_pt_root_id": [1, 2]}},
                    "filter_equal_dict": {"synapses": {"post_pt_root_id": 3}},
                    "filter_greater_equal_dict": {"synapses": {"size": 5}},
                }
            )
        ],
    )
    responses.get(f"{ME}/materialize/version", json="5.26.4")
    assert "synapses" in dir(client.tables) and len(client.tables) == 2
    query = client.tables.synapses(pre_pt_root_id=[1, 2], post_pt_root_id=3, size={">=": 5})
    df = query.query(metadata=False)
    assert df["id"].tolist() == [1]
    with pytest.raises(AttributeError):
        client.tables.no_such_table  # noqa: B018
