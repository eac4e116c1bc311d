"""Info service, schema service, JSON state service, L2 cache, format_utils and timeit."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from prefect_neurodata.clients.cave.auth import AuthClient
from prefect_neurodata.clients.cave.emannotationschemas import SchemaClient
from prefect_neurodata.clients.cave.format_utils import formatter, output_map
from prefect_neurodata.clients.cave.infoservice import InfoServiceClient
from prefect_neurodata.clients.cave.jsonservice import JSONService, neuroglancer_json_encoder
from prefect_neurodata.clients.cave.l2cache import L2CacheClient
from prefect_neurodata.clients.cave.timeit import TimeIt
from tests.cave_helpers import (
    AV,
    DATASTACK,
    GLOBAL,
    INFO_RECORD,
    LOCAL,
    TABLE,
    TOKEN,
    assert_auth,
    body_json,
    path,
    query,
)

pytestmark = pytest.mark.usefixtures("cave_fast_retries", "cave_home")

AUTH = AuthClient(token=TOKEN, server_address=GLOBAL)
BIG = 2**63 + 5


# -- info ----------------------------------------------------------------------------------------


@pytest.fixture
def info(cave_rsps):
    cave_rsps.get(f"{GLOBAL}/info/api/v2/datastack/full/{DATASTACK}", json=INFO_RECORD)
    return InfoServiceClient(GLOBAL, datastack_name=DATASTACK, auth_client=AUTH)


def test_info_lookups_are_cached_and_formatted(info, cave_rsps) -> None:
    assert info.api_version == 2
    assert info.get_datastack_info() == INFO_RECORD
    assert info.local_server() == LOCAL
    assert info.annotation_endpoint() == f"{LOCAL}/annotation"
    assert info.segmentation_source() == f"graphene://{LOCAL}/segmentation/table/{TABLE}"
    assert (
        info.segmentation_source(format_for="cave_explorer")
        == f"graphene://middleauth+{LOCAL}/segmentation/table/{TABLE}"
    )
    assert info.image_source() == "precomputed://gs://bucket/em"
    assert info.image_source(format_for="cloudvolume") == "precomputed://gs://bucket/em"
    assert info.viewer_site() == "https://ngl.test"
    assert info.viewer_resolution().tolist() == [4.0, 4.0, 40.0]
    assert info.aligned_volume_name == AV and info.aligned_volume_id == 7
    assert len(cave_rsps.calls) == 1
    assert_auth(cave_rsps.calls[0])
    info.get_datastack_info(use_stored=False)
    assert len(cave_rsps.calls) == 2


def test_info_listing_endpoints(info, cave_rsps) -> None:
    cave_rsps.get(f"{GLOBAL}/info/api/v2/datastacks", json=[DATASTACK])
    cave_rsps.get(f"{GLOBAL}/info/api/v2/aligned_volume", json=[AV])
    cave_rsps.get(f"{GLOBAL}/info/api/v2/aligned_volume/id/7", json={"id": 7, "name": AV})
    cave_rsps.get(f"{GLOBAL}/info/api/v2/aligned_volume/{AV}/datastacks", json=[DATASTACK])
    assert info.get_datastacks() == [DATASTACK]
    assert info.get_aligned_volumes() == [AV]
    assert info.get_aligned_volume_info_by_id() == {"id": 7, "name": AV}
    assert info.get_datastacks_by_aligned_volume() == [DATASTACK]
    info.get_aligned_volume_info_by_id(7)
    assert sum(1 for c in cave_rsps.calls if path(c).endswith("/id/7")) == 1


def test_info_without_datastack_raises_clearly(cave_rsps) -> None:
    client = InfoServiceClient(GLOBAL)
    with pytest.raises(ValueError, match="no datastack_name"):
        client.get_datastack_info()
    with pytest.raises(ValueError, match="Must specify aligned_volume"):
        client.get_datastacks_by_aligned_volume()
    assert len(cave_rsps.calls) == 0


# -- format_utils --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fmt", "expected"),
    [
        ("graphene://https://h/segmentation/table/t", "cloudvolume", None),
        ("graphene://https://h/segmentation/table/t", "neuroglancer", None),
        (
            "https://h/segmentation/table/t",
            "neuroglancer",
            "graphene://https://h/segmentation/table/t",
        ),
        (
            "https://h/segmentation/table/t",
            "cave-explorer",
            "graphene://middleauth+https://h/segmentation/table/t",
        ),
        (
            "gs://bucket/path",
            "cloudvolume",
            "precomputed://https://storage.googleapis.com/bucket/path",
        ),
        ("gs://bucket/path", "neuroglancer", "precomputed://gs://bucket/path"),
        ("precomputed://gs://bucket/path", "neuroglancer", "precomputed://gs://bucket/path"),
        (
            "precomputed://gs://bucket/path",
            "spelunker",
            "precomputed://https://storage.googleapis.com/bucket/path",
        ),
        (
            "https://storage.googleapis.com/bucket/path",
            "neuroglancer",
            "precomputed://gs://bucket/path",
        ),
        ("anything", "raw", "anything"),
        (None, "neuroglancer", "<none>"),
    ],
)
def test_format_utils(source, fmt, expected) -> None:
    result = output_map[fmt](source)
    if expected is None:
        assert result == source
    elif expected == "<none>":
        assert result is None
    else:
        assert result == expected


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="format_for='png'"):
        formatter("png")


# -- schema --------------------------------------------------------------------------------------


def test_schema_client(cave_rsps) -> None:
    cave_rsps.get(f"{GLOBAL}/schema/versions", json=[2])
    cave_rsps.get(f"{GLOBAL}/schema/api/v2/type", json=["synapse", "cell_type_local"])
    cave_rsps.get(f"{GLOBAL}/schema/api/v2/type/synapse", json={"$ref": "#/definitions/Synapse"})
    cave_rsps.post(f"{GLOBAL}/schema/api/v2/types", json={"synapse": {}, "bound_tag": {}})
    cave_rsps.get(f"{GLOBAL}/schema/api/v2/types_all", status=500, json={"message": "boom"})
    schema = SchemaClient(GLOBAL, auth_client=AUTH)
    assert schema.api_version == 2
    assert schema.get_schemas() == ["synapse", "cell_type_local"]
    assert schema.schema_definition("synapse") == {"$ref": "#/definitions/Synapse"}
    assert schema.schema_definition_multi(["synapse", "bound_tag"]) == {
        "synapse": {},
        "bound_tag": {},
    }
    multi = [c for c in cave_rsps.calls if path(c).endswith("/types")][0]
    assert multi.request.method == "POST"
    assert query(multi) == {"schema_names": ["synapse,bound_tag"]}
    assert schema.schema_definition_all() is None
    assert_auth(cave_rsps.calls[-1])


# -- state ---------------------------------------------------------------------------------------


@pytest.fixture
def state(cave_rsps):
    return JSONService(GLOBAL, auth_client=AUTH, ngl_url="https://ngl.test")


def test_upload_state_encodes_ids_as_strings_and_returns_id(state, cave_rsps) -> None:
    cave_rsps.post(
        f"{GLOBAL}/nglstate/api/v1/post",
        json=f"{GLOBAL}/nglstate/api/v1/5735371845632000",
    )
    value = {
        "layers": [{"segments": np.array([BIG, 7], dtype=np.uint64), "n": np.int64(3)}],
        "big": BIG,
        "small": 5,
        "scale": np.float32(0.5),
        "flag": True,
    }
    assert state.upload_state_json(value) == 5735371845632000
    sent = json.loads(cave_rsps.calls[0].request.body)
    assert sent == {
        "layers": [{"segments": [str(BIG), "7"], "n": "3"}],
        "big": str(BIG),
        "small": 5,
        "scale": 0.5,
        "flag": True,
    }
    assert_auth(cave_rsps.calls[0])


def test_upload_without_id_is_not_retried_with_id_is(state, cave_rsps) -> None:
    cave_rsps.post(f"{GLOBAL}/nglstate/api/v1/post", status=503)
    with pytest.raises(Exception, match="503"):
        state.upload_state_json({"a": 1})
    assert len(cave_rsps.calls) == 1
    cave_rsps.post(f"{GLOBAL}/nglstate/api/v1/post/42", status=503)
    cave_rsps.post(f"{GLOBAL}/nglstate/api/v1/post/42", json=f"{GLOBAL}/nglstate/api/v1/42")
    assert state.upload_state_json({"a": 1}, state_id=42) == 42
    assert len(cave_rsps.calls) == 3


def test_get_state_json_by_id_and_url(state, cave_rsps) -> None:
    cave_rsps.get(f"{GLOBAL}/nglstate/api/v1/12", json={"layers": []})
    cave_rsps.get("https://elsewhere.test/state.json", json={"x": 1})
    assert state.get_state_json(12) == {"layers": []}
    assert state.get_state_json("https://elsewhere.test/state.json") == {"x": 1}
    with pytest.raises(ValueError, match="state_id"):
        state.get_state_json("not-an-id")


def test_build_neuroglancer_url(state, cave_rsps) -> None:
    cave_rsps.get("https://ngl.test/version.json", json={"version": "2.40"})
    cave_rsps.get("https://old.test/version.json", status=404)
    assert (
        state.build_neuroglancer_url(12)
        == f"https://ngl.test/#!middleauth+{GLOBAL}/nglstate/api/v1/12"
    )
    assert "Authorization" not in cave_rsps.calls[0].request.headers  # no token to other hosts
    assert (
        state.build_neuroglancer_url(12, ngl_url="https://old.test/")
        == f"https://old.test/?json_url={GLOBAL}/nglstate/api/v1/12"
    )
    assert (
        state.build_neuroglancer_url(
            "https://s.test/a.json", target_site="seunglab", static_url=True
        )
        == "https://ngl.test/?json_url=https://s.test/a.json"
    )
    with pytest.raises(ValueError, match="target_site"):
        state.build_neuroglancer_url(1, target_site="bogus")


def test_save_state_json_local(state, tmp_path) -> None:
    target = tmp_path / "state.json"
    state.save_state_json_local({"segments": np.array([BIG], dtype=np.uint64)}, str(target))
    assert json.loads(target.read_text()) == {"segments": [str(BIG)]}
    with pytest.raises(ValueError, match="overwrite=True"):
        state.save_state_json_local({}, str(target))
    state.save_state_json_local({}, str(target), overwrite=True)
    assert json.loads(target.read_text()) == {}


def test_neuroglancer_json_encoder() -> None:
    assert neuroglancer_json_encoder(np.uint64(BIG)) == str(BIG)
    assert neuroglancer_json_encoder(np.array([1, 2])) == ["1", "2"]
    with pytest.raises(TypeError):
        neuroglancer_json_encoder(object())


# -- l2cache -------------------------------------------------------------------------------------


def test_l2cache(cave_rsps) -> None:
    big = 2**62 + 5  # above 2**53: a float detour would corrupt it
    l2 = L2CacheClient(LOCAL, table_name=TABLE, auth_client=AUTH)
    cave_rsps.post(
        f"{LOCAL}/l2cache/api/v1/table/{TABLE}/attributes",
        json={str(big): {"size_nm3": 10, "rep_coord_nm": [1, 2, 3]}, "5": {}},
    )
    cave_rsps.get(f"{LOCAL}/l2cache/api/v1/attribute_metadata", json={"size_nm3": "uint32"})
    cave_rsps.get(
        f"{LOCAL}/l2cache/api/v1/table_mapping",
        json={TABLE: {"l2cache_id": "l2cache_x", "cv_path": "graphene://x"}},
    )
    data = l2.get_l2data([big, 5], attributes=["size_nm3", "rep_coord_nm"])
    assert data[str(big)]["size_nm3"] == 10
    call = cave_rsps.calls[0]
    assert body_json(call) == {"l2_ids": [big, 5]}
    assert query(call) == {
        "int64_as_str": ["False"],
        "attribute_names": ["size_nm3,rep_coord_nm"],
    }
    assert_auth(call)
    assert l2.attributes == ["size_nm3"]
    assert l2.table_mapping()[TABLE]["l2cache_id"] == "l2cache_x"
    table = l2.get_l2data_table([big, 5])
    assert table.loc[big, "rep_coord_nm_y"] == 2
    assert table.index.dtype == np.int64  # like the chunkedgraph's node ids


# -- timeit --------------------------------------------------------------------------------------


def test_timeit_logs_start_and_end(caplog) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="prefect_neurodata.cave.timeit"),
        TimeIt("query materialize", 3) as timer,
    ):
        pass
    assert timer.elapsed is not None and timer.elapsed >= 0
    assert "start query materialize 3" in caplog.text
    assert "end query materialize 3" in caplog.text
