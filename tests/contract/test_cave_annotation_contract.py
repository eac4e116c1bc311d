"""Annotation engine client and staged uploads against the CAVE stand-in, over real HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from prefect_neurodata.clients.cave import CAVEclient
from prefect_neurodata.clients.cave.tools.stage import AnnotationValidationError


@pytest.fixture(scope="module")
def client(sandbox: Any) -> CAVEclient:
    env = sandbox.env
    return CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
    )


@pytest.fixture
def table(client: CAVEclient) -> Any:
    name = f"contract_{uuid.uuid4().hex[:10]}"
    client.annotation.create_table(
        name,
        "bound_tag",
        "contract test table (deleted at the end)",
        [4, 4, 40],
        write_permission="PRIVATE",
    )
    yield name
    client.annotation.delete_table(name)


def point(i: int) -> list[int]:
    return [1000 + i, 2000 + i, 100 + i % 50]


def test_table_crud(client: CAVEclient, table: str) -> None:
    ann = client.annotation
    assert table in ann.get_tables()
    meta = ann.get_table_metadata(table)
    assert meta["schema_type"] == "bound_tag"
    assert meta["voxel_resolution"] == [4.0, 4.0, 40.0]
    ann.update_metadata(table, description="changed", notice_text="provisional data")
    assert ann.get_table_metadata(table)["notice_text"] == "provisional data"
    ann.update_metadata(table, notice_text="none")
    assert not ann.get_table_metadata(table)["notice_text"]
    with pytest.raises(ValueError, match="table_name"):
        ann.create_table("Bad Name", "bound_tag", "d", [4, 4, 40])


def test_post_get_update_delete(client: CAVEclient, table: str) -> None:
    ann = client.annotation
    ids = ann.post_annotation(
        table, [{"pt": {"position": point(i)}, "tag": f"t{i}"} for i in range(3)]
    )
    assert len(ids) == 3 and len(set(ids)) == 3
    got = ann.get_annotation(table, ids)
    assert sorted(a["tag"] for a in got) == ["t0", "t1", "t2"]
    mapping = ann.update_annotation(table, {"id": ids[0], "tag": "renamed"})
    new_id = mapping[str(ids[0])]
    assert new_id not in ids
    assert ann.get_annotation(table, new_id)[0]["tag"] == "renamed"
    assert sorted(ann.delete_annotation(table, [ids[1]])) == [ids[1]]
    assert ann.get_annotation_count(table) >= 2
    with pytest.raises(requests.HTTPError) as info:
        ann.post_annotation(table, [{"tag": "no point"}])
    assert info.value.response is not None and info.value.response.status_code == 422


def test_dataframe_upload_in_batches_over_10000(client: CAVEclient, table: str) -> None:
    n = 10_050
    df = pd.DataFrame(
        {
            "pt_position": [point(i) for i in range(n)],
            "tag": np.where(np.arange(n) % 2 == 0, "even", "odd"),
        }
    )
    ids = client.annotation.post_annotation_df(table, df, ["pt_position"])
    assert len(ids) == n and len(set(ids)) == n
    assert client.annotation.get_annotation_count(table) == n
    update = pd.DataFrame({"id": ids[:2], "pt_position": [point(0), point(1)], "tag": ["x", "y"]})
    mapping = client.annotation.update_annotation_df(table, update, ["pt_position"])
    assert set(mapping) == {str(ids[0]), str(ids[1])}


def test_staged_annotations_round_trip(client: CAVEclient, table: str) -> None:
    ann = client.annotation
    stage = ann.stage_annotations(table)
    assert set(stage.fields_required) == {"pt_position", "tag"}
    for i in range(4):
        stage.add(pt_position=point(i), tag=f"s{i}")
    with pytest.raises(AnnotationValidationError, match="field 'tag'"):
        stage.add(pt_position=point(9), tag=5)
    ids = ann.upload_staged_annotations(stage, batch_size=3)
    assert len(ids) == 4
    tracked = stage.to_dataframe(include_tracking=True)
    assert tracked["is_uploaded"].all() and tracked["new_id"].tolist() == ids
    assert ann.upload_staged_annotations(stage) == []
    fetched = {a["id"]: a["tag"] for a in ann.get_annotation(table, ids)}
    assert fetched == {i: f"s{k}" for k, i in enumerate(ids)}

    updates = ann.stage_annotations(table, update=True)
    updates.add(id=ids[0], pt_position=point(0), tag="updated")
    mapping = ann.upload_staged_annotations(updates)
    assert list(mapping) == [str(ids[0])]


def test_overlapping_batches_map_each_new_id_to_its_row(client: CAVEclient, table: str) -> None:
    ann = client.annotation
    assert ann.batches_in_flight > 1
    stage = ann.stage_annotations(table)
    n = 3_000
    for i in range(n):
        stage.add(pt_position=point(i), tag=f"row{i}")
    before = ann.get_annotation_count(table)
    ids = ann.upload_staged_annotations(stage, batch_size=250)  # 12 batches, 4 at a time
    assert len(ids) == n and len(set(ids)) == n
    assert ann.get_annotation_count(table) == before + n  # every row landed exactly once
    fetched = {a["id"]: a["tag"] for a in ann.get_annotation(table, ids)}
    assert [fetched[i] for i in ids] == [f"row{i}" for i in range(n)]
