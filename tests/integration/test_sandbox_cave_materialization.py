"""The materialization stand-in over real HTTP (uvicorn), on SQLite and on a real Postgres."""

from __future__ import annotations

import datetime as dt
import gzip
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.integration._cave_helpers import (
    DATASTACK,
    SMALL_WORLD,
    CaveServer,
    arrow_frame,
    running_server,
)

V2 = f"/materialize/api/v2/datastack/{DATASTACK}"
V3 = f"/materialize/api/v3/datastack/{DATASTACK}"
SYN = "synapses"


def _postgres_database(postgres_url: str) -> str:
    """A fresh database on the session's Postgres server (other tests share the server)."""
    name = f"cave_mat_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def cave(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CaveServer]:
    workdir: Path = tmp_path_factory.mktemp(f"cave_mat_{request.param}")
    if request.param == "postgres":
        db_url = _postgres_database(request.getfixturevalue("postgres_url"))
    else:
        db_url = f"sqlite:///{workdir / 'cave.sqlite'}"
    with running_server(db_url, workdir, seed=SMALL_WORLD) as server:
        assert server.world.engine.dialect.name == (
            "postgresql" if request.param == "postgres" else "sqlite"
        )
        yield server


@pytest.fixture(scope="module")
def synapses_v3(cave: CaveServer) -> pd.DataFrame:
    return arrow_frame(cave.query(f"{V3}/version/3/table/{SYN}/query"))


def _posix(iso: str) -> float:
    return (
        dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%f")
        .replace(tzinfo=dt.timezone.utc)
        .timestamp()
    )


# ----------------------------------------------------------------------------- handshake / versions


def test_handshake_versions(cave: CaveServer) -> None:
    assert cave.get("/materialize/api/versions").json() == [2, 3]
    version = cave.get("/materialize/version").json()
    assert tuple(int(x) for x in version.split(".")) >= (5, 13, 0)


def test_versions_expiry_and_metadata(cave: CaveServer) -> None:
    valid = cave.get(f"{V3}/versions").json()
    every = cave.get(f"{V3}/versions", params={"expired": "True"}).json()
    assert valid[:2] == [2, 3] and 1 not in valid
    assert every[:3] == [1, 2, 3]
    meta = cave.get(f"{V3}/version/1").json()
    assert meta["valid"] is False and meta["status"] == "EXPIRED"
    meta2 = cave.get(f"{V2}/version/2").json()
    assert meta2["valid"] is True and meta2["status"] == "AVAILABLE" and meta2["is_merged"] is True
    # microseconds always present (the client's strptime requires them)
    for key in ("time_stamp", "expires_on"):
        dt.datetime.strptime(meta2[key], "%Y-%m-%dT%H:%M:%S.%f")
    listed = cave.get(f"{V3}/metadata").json()
    assert [m["version"] for m in listed][:2] == [2, 3]
    assert [m["version"] for m in cave.get(f"{V3}/metadata", params={"expired": "true"}).json()][
        :1
    ] == [1]
    # an expired version's data is gone: 410 like the real flat-model path
    gone = cave.query(f"{V3}/version/1/table/{SYN}/query")
    assert gone.status_code == 410
    assert gone.json() == {"message": "This materialization version is not available"}
    missing = cave.get(f"{V3}/version/99")
    assert missing.status_code == 404 and "version 99 not found" in missing.json()["message"]


def test_tables_counts_and_metadata(cave: CaveServer) -> None:
    tables = cave.get(f"{V2}/version/3/tables").json()
    assert {SYN, "nucleus_detection", "cell_type_local", "cell_type_ref", "neuron_tags"} <= set(
        tables
    )
    assert cave.get(f"{V2}/version/3/table/{SYN}/count").json() == SMALL_WORLD["synapses"]
    meta = cave.get(f"{V3}/version/3/table/{SYN}/metadata").json()
    assert meta["schema_type"] == "synapse" and meta["table_name"] == SYN
    assert [meta[f"voxel_resolution_{a}"] for a in "xyz"] == [4.0, 4.0, 40.0]
    assert meta["reference_table"] is None
    ref = cave.get(f"{V3}/version/3/table/cell_type_ref/metadata").json()
    assert ref["reference_table"] == "nucleus_detection"
    every = cave.get(f"{V3}/version/3/tables/metadata").json()
    assert {m["table_name"] for m in every} == set(tables)
    assert cave.get(f"{V3}/version/3/table/nope/metadata").status_code == 404


# ----------------------------------------------------------------------------- query content


def test_query_layout_types_and_root_ids(cave: CaveServer, synapses_v3: pd.DataFrame) -> None:
    df = synapses_v3
    assert len(df) == SMALL_WORLD["synapses"]
    assert list(df.columns) == [
        "id",
        "valid",
        "pre_pt_supervoxel_id",
        "pre_pt_root_id",
        "post_pt_supervoxel_id",
        "post_pt_root_id",
        "size",
        "pre_pt_position_x",
        "pre_pt_position_y",
        "pre_pt_position_z",
        "ctr_pt_position_x",
        "ctr_pt_position_y",
        "ctr_pt_position_z",
        "post_pt_position_x",
        "post_pt_position_y",
        "post_pt_position_z",
    ]
    assert str(df["id"].dtype) == "Int64" and str(df["pre_pt_root_id"].dtype) == "Int64"
    assert str(df["size"].dtype) == "Float32" and str(df["valid"].dtype) == "boolean"
    assert df["pre_pt_position_x"].dtype == np.int64
    assert df["id"].is_monotonic_increasing and df["valid"].all()
    cg = cave.world.chunkedgraph
    # supervoxels were looked up from positions; roots at each version's timestamp
    pos = df[["pre_pt_position_x", "pre_pt_position_y", "pre_pt_position_z"]].to_numpy()
    assert (
        cg.lookup_supervoxels(pos).astype(np.int64) == df["pre_pt_supervoxel_id"].to_numpy()
    ).all()
    for version in (2, 3):
        ts = _posix(cave.get(f"{V3}/version/{version}").json()["time_stamp"])
        frame = arrow_frame(cave.query(f"{V3}/version/{version}/table/{SYN}/query"))
        for side in ("pre", "post"):
            sv = frame[f"{side}_pt_supervoxel_id"].to_numpy().astype(np.uint64)
            expected = cg.get_roots(sv, ts).astype(np.int64)
            assert (frame[f"{side}_pt_root_id"].to_numpy() == expected).all()
    v2 = arrow_frame(cave.query(f"{V3}/version/2/table/{SYN}/query"))
    # the edit history between the two versions changed some roots
    assert (v2["pre_pt_root_id"].to_numpy() != df["pre_pt_root_id"].to_numpy()).any() or (
        v2["post_pt_root_id"].to_numpy() != df["post_pt_root_id"].to_numpy()
    ).any()


def test_every_filter_kind(cave: CaveServer, synapses_v3: pd.DataFrame) -> None:
    df = synapses_v3
    roots = [int(x) for x in df["pre_pt_root_id"].drop_duplicates().iloc[:3]]
    path = f"{V3}/version/3/table/{SYN}/query"

    def ids(body: dict) -> list[int]:
        return arrow_frame(cave.query(path, body))["id"].astype(int).tolist()

    def want(mask: pd.Series) -> list[int]:
        return df.loc[mask.fillna(False).astype(bool), "id"].astype(int).tolist()

    assert ids({"filter_in_dict": {SYN: {"pre_pt_root_id": roots}}}) == want(
        df.pre_pt_root_id.isin(roots)
    )
    assert ids({"filter_notin_dict": {SYN: {"pre_pt_root_id": roots}}}) == want(
        ~df.pre_pt_root_id.isin(roots)
    )
    assert ids({"filter_equal_dict": {SYN: {"pre_pt_root_id": roots[0]}}}) == want(
        df.pre_pt_root_id == roots[0]
    )
    med = float(df["size"].median())
    assert ids({"filter_greater_dict": {SYN: {"size": med}}}) == want(df["size"] > med)
    assert ids({"filter_less_dict": {SYN: {"size": med}}}) == want(df["size"] < med)
    assert ids({"filter_greater_equal_dict": {SYN: {"id": 4990}}}) == list(range(4990, 5001))
    assert ids({"filter_less_equal_dict": {SYN: {"id": 3}}}) == [1, 2, 3]
    x0, x1 = np.percentile(df.ctr_pt_position_x, [20, 60])
    box = [[int(x0), 0, 0], [int(x1), 10**6, 10**6]]
    expected = want((df.ctr_pt_position_x >= int(x0)) & (df.ctr_pt_position_x <= int(x1)))
    assert ids({"filter_spatial_dict": {SYN: {"ctr_pt_position": box}}}) == expected
    combined = {
        "filter_in_dict": {SYN: {"pre_pt_root_id": roots}},
        "filter_greater_dict": {SYN: {"size": med}},
    }
    assert ids(combined) == want(df.pre_pt_root_id.isin(roots) & (df["size"] > med))
    # regex on strings
    ct = arrow_frame(cave.query(f"{V3}/version/3/table/cell_type_local/query"))
    got = arrow_frame(
        cave.query(
            f"{V3}/version/3/table/cell_type_local/query",
            {"filter_regex_dict": {"cell_type_local": {"cell_type": "^[0-9]+P"}}},
        )
    )
    assert got["id"].tolist() == ct.loc[ct.cell_type.str.match(r"^[0-9]+P"), "id"].tolist()
    assert len(got) > 0


def test_not_in_null_semantics(cave: CaveServer) -> None:
    """SQL NOT IN: NULL values never match, and a NULL in the list matches nothing."""
    table = f"nulls_{uuid.uuid4().hex[:6]}"
    created = cave.post(
        f"/annotation/api/v2/aligned_volume/{cave.config.aligned_volume}/table",
        json={
            "schema_type": "bound_tag",
            "table_name": table,
            "metadata": {
                "description": "nulls",
                "voxel_resolution_x": 4,
                "voxel_resolution_y": 4,
                "voxel_resolution_z": 40,
            },
        },
    )
    assert created.status_code == 200, created.text
    pos, _ = cave.world.chunkedgraph.sample_points(3, np.random.default_rng(5))
    annos = [
        {"pt": {"position": [int(v) for v in p]}, "tag": t}
        for p, t in zip(pos, ["a", "b", "c"], strict=True)
    ]
    r = cave.post(
        f"/annotation/api/v2/aligned_volume/{cave.config.aligned_volume}/table/{table}/annotations",
        json={"annotations": annos},
    )
    assert r.status_code == 200, r.text
    version = cave.post("/__sandbox__/materialize", "admin", json={}).json()["version"]
    path = f"{V3}/version/{version}/table/{table}/query"
    ids = [int(i) for i in arrow_frame(cave.query(path))["id"]]
    assert len(ids) == 3
    # an id column never NULL: NOT IN with a NULL in the list gives no rows at all
    assert (
        len(arrow_frame(cave.query(path, {"filter_notin_dict": {table: {"id": [ids[0], None]}}})))
        == 0
    )
    notin = arrow_frame(cave.query(path, {"filter_notin_dict": {table: {"tag": ["a"]}}}))
    assert sorted(notin["tag"]) == ["b", "c"]
    # the newest valid version still holds the table
    assert cave.get(f"{V2}/version/{version}/table/{table}/count").json() == 3


def test_select_offset_limit_count(cave: CaveServer, synapses_v3: pd.DataFrame) -> None:
    path = f"{V3}/version/3/table/{SYN}/query"
    sel = arrow_frame(
        cave.query(path, {"select_columns": ["id", "pre_pt_root_id", "ctr_pt_position"]})
    )
    assert list(sel.columns) == [
        "id",
        "pre_pt_root_id",
        "ctr_pt_position_x",
        "ctr_pt_position_y",
        "ctr_pt_position_z",
    ]
    page = cave.query(path, {"offset": 100, "limit": 50})
    frame = arrow_frame(page)
    assert frame["id"].tolist() == synapses_v3["id"].iloc[100:150].tolist()
    assert page.headers["Warning"] == '201 - "Limited query to 50 rows'
    last = cave.query(path, {"offset": 4990, "limit": 50})
    assert len(arrow_frame(last)) == 10 and "Warning" not in last.headers
    counted = arrow_frame(
        cave.query(path, {"filter_less_dict": {SYN: {"id": 101}}}, params={"count": "True"})
    )
    assert counted["count"].tolist() == [100]
    bad = cave.query(path, {"select_columns": ["nope"]})
    assert bad.status_code == 400 and "nope" in bad.json()["message"]


def test_server_row_limit_warning(cave: CaveServer) -> None:
    path = f"{V3}/version/3/table/{SYN}/query"
    assert cave.get("/__sandbox__/query_limit").json() == {"limit": 200_000}
    assert cave.put("/__sandbox__/query_limit", "user", json={"limit": 1000}).status_code == 403
    changed = cave.put("/__sandbox__/query_limit", "admin", json={"limit": 1000})
    assert changed.json() == {"limit": 1000}
    try:
        r = cave.query(path, {"limit": 5000})
        assert len(arrow_frame(r)) == 1000
        assert r.headers["Warning"] == '201 - "Limited query to 1000 rows'
        r = cave.query(path)
        assert len(arrow_frame(r)) == 1000 and "Limited query to 1000 rows" in r.headers["Warning"]
        assert cave.put("/__sandbox__/query_limit", "admin", json={"limit": 0}).status_code == 400
    finally:
        cave.put("/__sandbox__/query_limit", "admin", json={"limit": None})
    r = cave.query(path)
    assert len(arrow_frame(r)) == SMALL_WORLD["synapses"] and "Warning" not in r.headers


def test_desired_resolution_and_headers(cave: CaveServer, synapses_v3: pd.DataFrame) -> None:
    path = f"/version/3/table/{SYN}/query"
    r = cave.query(V3 + path, {"desired_resolution": [1, 1, 1], "limit": 20})
    frame = arrow_frame(r)
    assert r.headers["dataframe_resolution"] == "1.0, 1.0, 1.0"
    assert frame["ctr_pt_position_z"].dtype == np.float64
    assert (
        frame["ctr_pt_position_z"].to_numpy()
        == synapses_v3["ctr_pt_position_z"].iloc[:20].to_numpy() * 40
    ).all()
    assert (
        frame["pre_pt_position_x"].to_numpy()
        == synapses_v3["pre_pt_position_x"].iloc[:20].to_numpy() * 4
    ).all()
    default = cave.query(V3 + path, {"limit": 5})
    assert default.headers["dataframe_resolution"] == "4.0, 4.0, 40.0"
    assert arrow_frame(default)["ctr_pt_position_z"].dtype == np.int64
    # v2 servers never rescale (the client converts) and send no header
    v2 = cave.query(V2 + path, {"desired_resolution": [1, 1, 1], "limit": 5})
    assert "dataframe_resolution" not in v2.headers
    assert (
        arrow_frame(v2)["ctr_pt_position_z"].tolist()
        == synapses_v3["ctr_pt_position_z"].iloc[:5].tolist()
    )
    assert "column_names" in r.headers and r.headers["column_names"].startswith("{'synapses': {")
    bad = cave.query(V3 + path, {"desired_resolution": [1, 1]})
    assert bad.status_code == 400 and "desired_resolution" in bad.json()["message"]


def test_arrow_compression_and_json(cave: CaveServer, synapses_v3: pd.DataFrame) -> None:
    path = f"{V3}/version/3/table/{SYN}/query"
    zstd = cave.query(path, {"limit": 2000}, accept="zstd")
    plain = cave.query(path, {"limit": 2000}, accept="identity")
    assert len(zstd.content) < len(plain.content)
    pd.testing.assert_frame_equal(arrow_frame(zstd), arrow_frame(plain))
    reader = pa.ipc.open_stream(zstd.content)
    assert reader.read_next_batch().num_rows == 2000  # one record batch
    js = cave.query(
        path,
        {"limit": 3},
        accept="gzip",
        params={"return_pyarrow": "False", "arrow_format": "False"},
    )
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("application/json")
    assert js.headers.get("Content-Encoding") == "gzip"  # requests decoded it for us
    records = js.json()
    assert [r["id"] for r in records] == [1, 2, 3]
    assert records[0]["pre_pt_position_x"] == int(synapses_v3["pre_pt_position_x"].iloc[0])
    raw = cave.post(
        path,
        params={"return_pyarrow": "False", "split_positions": "True"},
        json={"limit": 1},
        headers={"Accept-Encoding": "gzip"},
        stream=True,
    )
    assert orjson.loads(gzip.decompress(raw.raw.read()))[0]["id"] == 1


def test_strict_request_validation(cave: CaveServer) -> None:
    path = f"{V3}/version/3/table/{SYN}/query"
    unknown = cave.query(path, {"filter_out_dict": {SYN: {"id": [1]}}})
    assert unknown.status_code == 400 and "filter_out_dict" in unknown.json()["message"]
    assert cave.query(path, {"limit": 0}).status_code == 400
    other = cave.query(path, {"filter_in_dict": {"cell_type_local": {"id": [1]}}})
    assert other.status_code == 400 and "cell_type_local" in other.json()["message"]
    box = cave.query(
        path, {"filter_spatial_dict": {SYN: {"ctr_pt_position": [[5, 0, 0], [5, 9, 9]]}}}
    )
    assert box.status_code == 500 and "bounding box" in box.json()["message"]
    regex = cave.query(path, {"filter_regex_dict": {SYN: {"size": "1"}}})
    assert regex.status_code == 500 and "string" in regex.json()["message"]
    assert cave.query(f"{V3}/version/3/table/nope/query").status_code == 404
    assert cave.query(f"{V3}/version/42/table/{SYN}/query").status_code == 404


def test_auth_on_queries(cave: CaveServer) -> None:
    path = f"{V3}/version/3/table/{SYN}/query"
    assert len(arrow_frame(cave.query(path, {"limit": 5}, role="viewer"))) == 5
    denied = cave.query(path, {"limit": 5}, role="noperm")
    assert denied.status_code == 403 and denied.json()["error"] == "missing_permission"
    import requests

    anonymous = requests.post(
        cave.url + path, json={}, headers={"X-Requested-With": "x"}, timeout=30
    )
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "no_token"
    not_admin = cave.post("/__sandbox__/materialize", "user", json={})
    assert not_admin.status_code == 403


# ----------------------------------------------------------------------------- joins and views


def test_join_query_reference_merge(cave: CaveServer) -> None:
    body = {
        "tables": [["cell_type_ref", "target_id"], ["nucleus_detection", "id"]],
        "suffix_map": {"cell_type_ref": "", "nucleus_detection": "_ref"},
        "filter_in_dict": {"cell_type_ref": {"cell_type": ["BC", "MC"]}},
        "desired_resolution": [4, 4, 40],
    }
    r = cave.query(f"{V3}/version/3/query", body)
    frame = arrow_frame(r)
    assert {
        "id",
        "id_ref",
        "target_id",
        "pt_position_x",
        "pt_root_id",
        "volume",
        "valid",
        "valid_ref",
    } <= set(frame.columns)
    assert "pt_position_ref_x" not in frame.columns  # only colliding names get suffixes
    assert (frame["target_id"] == frame["id_ref"]).all()
    assert set(frame["cell_type"]) <= {"BC", "MC"} and len(frame) > 0
    assert r.headers["dataframe_resolution"] == "4.0, 4.0, 40.0"
    nuc = arrow_frame(cave.query(f"{V3}/version/3/table/nucleus_detection/query"))
    merged = nuc.set_index("id").loc[frame["id_ref"].astype(int)]
    assert (merged["pt_root_id"].to_numpy() == frame["pt_root_id"].to_numpy()).all()
    # v2 list-form suffixes still work, with a deprecation warning
    legacy = cave.query(
        f"{V2}/version/3/query",
        {**{k: v for k, v in body.items() if k != "suffix_map"}, "suffixes": ["", "_nuc"]},
    )
    assert "id_nuc" in arrow_frame(legacy).columns and "deprecated" in legacy.headers["Warning"]
    bad = cave.query(f"{V3}/version/3/query", {"tables": [["cell_type_ref", "target_id"]]})
    assert bad.status_code == 400


def test_views(cave: CaveServer, synapses_v3: pd.DataFrame) -> None:
    views = cave.get(f"{V3}/version/3/views").json()
    assert set(views) == {"large_synapses", "nucleus_cell_types"}
    assert views["large_synapses"]["datastack_name"] == DATASTACK
    meta = cave.get(f"{V3}/version/3/views/large_synapses/metadata").json()
    assert meta["voxel_resolution_z"] == 40.0 and meta["live_compatible"] is True
    schema = cave.get(f"{V3}/version/3/views/large_synapses/schema").json()
    assert schema["ctr_pt_position"] == {"type": "SpatialPoint"} and schema["size"] == {
        "type": "float"
    }
    assert set(cave.get(f"{V3}/version/3/views/schemas").json()) == set(views)
    frame = arrow_frame(cave.query(f"{V3}/version/3/views/large_synapses/query"))
    expected = synapses_v3.loc[synapses_v3["size"] > 500.0, "id"].astype(int).tolist()
    assert frame["id"].astype(int).tolist() == expected
    filtered = arrow_frame(
        cave.query(
            f"{V3}/version/3/views/large_synapses/query",
            {
                "filter_greater_dict": {"large_synapses": {"size": 1000.0}},
                "select_columns": ["id", "size"],
            },
        )
    )
    assert list(filtered.columns) == ["id", "size"] and (filtered["size"] > 1000).all()
    joined = arrow_frame(cave.query(f"{V3}/version/3/views/nucleus_cell_types/query"))
    assert {"id", "pt_root_id", "cell_type"} <= set(joined.columns) and len(joined) == 30
    assert cave.get(f"{V3}/version/3/views/nope/metadata").status_code == 404


# ----------------------------------------------------------------------------- live query


def test_live_live_query(cave: CaveServer) -> None:
    av = cave.config.aligned_volume
    table = f"live_{uuid.uuid4().hex[:6]}"
    r = cave.post(
        f"/annotation/api/v2/aligned_volume/{av}/table",
        json={
            "schema_type": "bound_tag",
            "table_name": table,
            "metadata": {
                "description": "live",
                "voxel_resolution_x": 4,
                "voxel_resolution_y": 4,
                "voxel_resolution_z": 40,
            },
        },
    )
    assert r.status_code == 200, r.text
    cg = cave.world.chunkedgraph
    pos, svs = cg.sample_points(4, np.random.default_rng(11))
    annos = [{"pt": {"position": [int(v) for v in p]}, "tag": f"t{i}"} for i, p in enumerate(pos)]
    url = f"/annotation/api/v2/aligned_volume/{av}/table/{table}/annotations"
    ids = cave.post(url, json={"annotations": annos}).json()
    cave.post("/__sandbox__/materialize", "admin", json={})
    before_changes = dt.datetime.now(dt.timezone.utc).isoformat()
    # changes after the version: one update, one delete
    # One {old_id: new_id} per annotation, in a list, as the real service answers.
    (mapping,) = cave.put(url, json={"annotations": [{"id": ids[0], "tag": "changed"}]}).json()
    assert cave.delete(url, json={"annotation_ids": [ids[1]]}).json() == [ids[1]]
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    live_params = {
        "merge_reference": "False",
        "allow_missing_lookups": "False",
        "allow_invalid_root_ids": "False",
    }
    r = cave.query(f"{V3}/query", {"table": table, "timestamp": now}, params=live_params)
    frame = arrow_frame(r)
    assert sorted(frame["tag"]) == ["changed", "t2", "t3"]
    assert mapping[str(ids[0])] in frame["id"].astype(int).tolist()
    roots = cg.get_roots(svs.astype(np.uint64)).astype(np.int64)
    by_tag = dict(zip(frame["tag"], frame["pt_root_id"].astype(int), strict=True))
    assert by_tag["t2"] == roots[2] and by_tag["changed"] == roots[0]
    assert r.headers["dataframe_resolution"] == "4.0, 4.0, 40.0"
    # root-id filters must be valid at T
    valid_root = int(roots[3])
    body = {
        "table": table,
        "timestamp": now,
        "filter_in_dict": {table: {"pt_root_id": [valid_root]}},
        "select_columns": {table: ["id", "tag", "pt_root_id"]},
    }
    one = arrow_frame(cave.query(f"{V3}/query", body, params=live_params))
    assert list(one.columns) == ["id", "tag", "pt_root_id"] and "t3" in set(one["tag"])
    superseded = [rid for rid, info in cg.roots.items() if info.superseded_ts is not None]
    assert superseded, "the seeded history has split/merged roots"
    body["filter_in_dict"] = {table: {"pt_root_id": [valid_root, int(superseded[0])]}}
    assert cave.query(f"{V3}/query", body, params=live_params).status_code == 400
    lenient = cave.query(
        f"{V3}/query", body, params={**live_params, "allow_invalid_root_ids": "True"}
    )
    assert "t3" in set(arrow_frame(lenient)["tag"]) and "not valid" in lenient.headers["Warning"]
    # state at a time between the version and the changes, from the version forwards and (once a
    # newer version exists) from that newer version backwards
    for _ in range(2):
        back = cave.query(
            f"{V3}/query", {"table": table, "timestamp": before_changes}, params=live_params
        )
        assert sorted(arrow_frame(back)["tag"]) == ["t0", "t1", "t2", "t3"]
        cave.post("/__sandbox__/materialize", "admin", json={})
    # an unchanged table is answered from its frozen rows, with roots recomputed at T
    syn = arrow_frame(
        cave.query(
            f"{V3}/query", {"table": SYN, "timestamp": now, "limit": 200}, params=live_params
        )
    )
    assert len(syn) == 200
    sv = syn["post_pt_supervoxel_id"].to_numpy().astype(np.uint64)
    assert (syn["post_pt_root_id"].to_numpy() == cg.get_roots(sv).astype(np.int64)).all()
    # a timestamp before the table existed sees nothing of it
    early = cave.query(
        f"{V3}/query",
        {"table": "synapses", "timestamp": "2000-01-01T00:00:00", "limit": 3},
        params=live_params,
    )
    assert early.status_code == 200 and len(arrow_frame(early)) == 0
    joined = cave.query(
        f"{V3}/query",
        {
            "table": "cell_type_ref",
            "timestamp": now,
            "join_tables": [["cell_type_ref", "target_id", "nucleus_detection", "id"]],
            "suffixes": {"cell_type_ref": "", "nucleus_detection": "_nuc"},
        },
        params=live_params,
    )
    jf = arrow_frame(joined)
    assert len(jf) == 30 and "id_nuc" in jf.columns
    assert cave.query(f"{V3}/query", {"table": table}, params=live_params).status_code == 400


def test_admin_materialize_and_expire(cave: CaveServer) -> None:
    before = cave.get(f"{V3}/versions").json()
    meta = cave.post("/__sandbox__/materialize", "admin", json={"days_to_expire": 2}).json()
    assert meta["version"] == max(before) + 1 and meta["valid"] is True
    stamp = dt.datetime.strptime(meta["time_stamp"], "%Y-%m-%dT%H:%M:%S.%f")
    expires = dt.datetime.strptime(meta["expires_on"], "%Y-%m-%dT%H:%M:%S.%f")
    assert expires - stamp == dt.timedelta(days=2) - dt.timedelta(hours=1)
    expired = cave.post(f"/__sandbox__/versions/{before[0]}/expire", "admin").json()
    assert expired["status"] == "EXPIRED"
    assert before[0] not in cave.get(f"{V3}/versions").json()
    assert cave.query(f"{V3}/version/{before[0]}/table/{SYN}/query").status_code == 410
    bad = cave.post("/__sandbox__/materialize", "admin", json={"when": 1})
    assert bad.status_code == 400 and "when" in bad.json()["message"]
    assert re.match(r"\d+\.\d+\.\d+", cave.get("/materialize/version").json())


def test_random_sample_notices_and_unique_strings(cave: CaveServer) -> None:
    path = f"{V3}/version/3/table/{SYN}/query"
    sample = arrow_frame(cave.query(path, params={"random_sample": "100"}))
    assert len(sample) == 100 and sample["id"].is_monotonic_increasing
    assert sample["id"].nunique() == 100
    everything = arrow_frame(cave.query(path, params={"random_sample": "100000"}))
    assert len(everything) == SMALL_WORLD["synapses"]  # N >= row count: ignored
    tags = cave.query(f"{V3}/version/3/table/neuron_tags/query")
    assert "Table Owner Notice on neuron_tags: Tags are provisional." in tags.headers["Warning"]
    unique = cave.get(f"{V3}/table/cell_type_local/unique_string_values").json()
    frame = arrow_frame(cave.query(f"{V3}/version/3/table/cell_type_local/query"))
    assert unique["cell_type"] == sorted(set(frame["cell_type"]))
    assert unique["classification_system"] == ["aibs_coarse"]


def test_run_endpoints(cave: CaveServer) -> None:
    base = "/materialize/api/v2/materialize/run"
    ok = cave.post(f"{base}/ingest_annotations/datastack/{DATASTACK}/{SYN}", "admin")
    assert ok.status_code == 200
    # the seeded synapse table is PRIVATE-write, owned by the admin
    assert (
        cave.post(f"{base}/ingest_annotations/datastack/{DATASTACK}/{SYN}", "user").status_code
        == 401
    )
    looked = cave.post(
        f"{base}/lookup_svid/datastack/{DATASTACK}/{SYN}",
        "admin",
        json={},
        headers={"Accept-Encoding": ""},
    )
    assert looked.status_code == 200 and "0 annotations" in looked.json()
    bad = cave.post(f"{base}/lookup_svid/datastack/{DATASTACK}/{SYN}", "admin", json={"x": 1})
    assert bad.status_code == 400
