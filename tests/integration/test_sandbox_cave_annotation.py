"""The annotation engine stand-in over real HTTP (uvicorn on 127.0.0.1, SQLite)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from prefect_neurodata.sandbox.cave import store
from tests.integration._cave_helpers import DATASTACK, CaveServer, arrow_frame, running_server

SEED = {"synapses": 500, "neurons": 20, "neuron_length": 80, "merges": 2, "splits": 1}


@pytest.fixture(scope="module")
def cave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaveServer]:
    workdir: Path = tmp_path_factory.mktemp("cave_anno")
    with running_server(f"sqlite:///{workdir / 'cave.sqlite'}", workdir, seed=SEED) as server:
        yield server


def _base(cave: CaveServer) -> str:
    return f"/annotation/api/v2/aligned_volume/{cave.config.aligned_volume}"


def _metadata(**extra: object) -> dict[str, object]:
    return {
        "description": "test table",
        "voxel_resolution_x": 4,
        "voxel_resolution_y": 4,
        "voxel_resolution_z": 40,
        **extra,
    }


def _new_table(
    cave: CaveServer, schema: str = "bound_tag", role: str = "user", **md: object
) -> str:
    name = f"t_{uuid.uuid4().hex[:8]}"
    r = cave.post(
        f"{_base(cave)}/table",
        role,
        json={"schema_type": schema, "table_name": name, "metadata": _metadata(**md)},
    )
    assert r.status_code == 200, r.text
    assert r.text == name  # plain-text table name, as the client reads it
    return name


def _points(cave: CaveServer, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return cave.world.chunkedgraph.sample_points(n, np.random.default_rng(seed))


def _tags(pos: np.ndarray) -> list[dict[str, object]]:
    return [{"pt": {"position": [int(v) for v in p]}, "tag": f"tag{i}"} for i, p in enumerate(pos)]


def test_create_list_get_table(cave: CaveServer) -> None:
    name = _new_table(cave, notice_text="read me")
    assert name in cave.get(f"{_base(cave)}/table").json()
    r = cave.get(f"{_base(cave)}/table/{name}")
    assert r.status_code == 201  # the real quirk
    meta = r.json()
    assert meta["schema_type"] == "bound_tag" and meta["user_id"] == "2"
    assert meta["read_permission"] == "PUBLIC" and meta["write_permission"] == "PRIVATE"
    assert meta["voxel_resolution_z"] == 40.0 and meta["valid"] is True and meta["deleted"] is None
    assert r.headers["Warning"] == "Table Owner Notice: read me"
    assert set(cave.get(f"{_base(cave)}/table").json()) >= {"synapses", "cell_type_ref", name}


def test_create_table_errors(cave: CaveServer) -> None:
    url = f"{_base(cave)}/table"
    bad_name = cave.post(
        url, json={"schema_type": "bound_tag", "table_name": "Bad-Name", "metadata": _metadata()}
    )
    assert bad_name.status_code == 400 and "Table name error" in bad_name.json()["message"]
    dup = cave.post(
        url, json={"schema_type": "bound_tag", "table_name": "synapses", "metadata": _metadata()}
    )
    assert dup.status_code == 400 and "already exists" in dup.json()["message"]
    no_desc = cave.post(
        url,
        json={
            "schema_type": "bound_tag",
            "table_name": "x_nodesc",
            "metadata": {
                "voxel_resolution_x": 4,
                "voxel_resolution_y": 4,
                "voxel_resolution_z": 40,
            },
        },
    )
    assert no_desc.status_code == 404  # (sic) as the real engine
    bad_schema = cave.post(
        url, json={"schema_type": "nope", "table_name": "x_schema", "metadata": _metadata()}
    )
    assert bad_schema.status_code == 400 and "nope" in bad_schema.json()["message"]
    bad_perm = cave.post(
        url,
        json={
            "schema_type": "bound_tag",
            "table_name": "x_perm",
            "metadata": _metadata(read_permission="EVERYONE"),
        },
    )
    assert bad_perm.status_code == 400 and "read_permission" in bad_perm.json()["message"]
    no_ref = cave.post(
        url,
        json={"schema_type": "cell_type_reference", "table_name": "x_ref", "metadata": _metadata()},
    )
    assert no_ref.status_code == 400 and "reference_table" in no_ref.json()["message"]
    viewer = cave.post(
        url,
        "viewer",
        json={"schema_type": "bound_tag", "table_name": "x_v", "metadata": _metadata()},
    )
    assert viewer.status_code == 403 and viewer.json()["error"] == "missing_permission"
    assert "x_nodesc" not in cave.get(url).json()


def test_post_get_count_and_supervoxels(cave: CaveServer) -> None:
    name = _new_table(cave)
    pos, svs = _points(cave, 25, seed=1)
    url = f"{_base(cave)}/table/{name}/annotations"
    annos = _tags(pos)
    annos[0]["pt"]["supervoxel_id"] = 12345  # discarded: the engine looks it up itself
    annos[1]["extra_key"] = "dropped"  # unknown top-level keys are dropped
    ids = cave.post(url, json={"annotations": annos}).json()
    assert ids == list(range(1, 26))
    more = cave.post(url, json={"annotations": _tags(pos[:2])}).json()
    assert more == [26, 27]
    assert cave.get(f"{_base(cave)}/table/{name}/count").json() == 27
    got = cave.get(url, params={"annotation_ids": "1,2,26"}).json()
    assert [g["id"] for g in got] == [1, 2, 26]
    assert got[0]["pt_position"] == [int(v) for v in pos[0]] and got[0]["tag"] == "tag0"
    assert got[0]["valid"] is True and got[0]["deleted"] is None and "extra_key" not in got[1]
    # materialized supervoxels come from the positions, roots from the chunkedgraph
    version = cave.post("/__sandbox__/materialize", "admin", json={}).json()["version"]
    frame = arrow_frame(
        cave.query(
            f"/materialize/api/v3/datastack/{DATASTACK}/version/{version}/table/{name}/query"
        )
    )
    assert frame["pt_supervoxel_id"].astype(np.int64).tolist()[:25] == svs.astype(np.int64).tolist()
    roots = cave.world.chunkedgraph.get_roots(svs).astype(np.int64)
    assert frame["pt_root_id"].astype(np.int64).tolist()[:25] == roots.tolist()


def _raw_rows(cave: CaveServer, table_name: str) -> list[dict[str, Any]]:
    """Every stored row of a live table as the database holds it (no SQLAlchemy type decoding)."""
    with cave.world.engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT * FROM {store.sql_name(table_name)} ORDER BY id")
        return [dict(zip(result.keys(), row, strict=True)) for row in result]


def test_post_stores_every_column(cave: CaveServer) -> None:
    name = _new_table(cave)
    url = f"{_base(cave)}/table/{name}/annotations"
    pos, svs = _points(cave, 6, seed=3)
    annos = _tags(pos)
    annos[0]["tag"] = ""
    annos[1]["id"] = 40  # supplied ids are kept; fresh ids start above the largest one
    annos[2]["pt"]["supervoxel_id"] = 1  # discarded: looked up from the position
    annos[3]["id"] = 5
    annos[4]["pt"]["position"] = [float(v) for v in pos[4]]
    annos[5]["extra_key"] = "dropped"
    ids = cave.post(url, json={"annotations": annos}).json()
    assert ids == [41, 40, 42, 5, 43, 44]
    rows = _raw_rows(cave, name)
    created = rows[0]["created"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", created)
    by_id = sorted(zip(ids, annos, pos.tolist(), svs.tolist(), strict=True))
    assert rows == [
        {
            "id": ident,
            "created": created,
            "deleted": None,
            "superceded_id": None,
            "valid": 1,
            "pt_position_x": float(p[0]),
            "pt_position_y": float(p[1]),
            "pt_position_z": float(p[2]),
            "pt_supervoxel_id": int(sv),
            "tag": anno["tag"],
        }
        for ident, anno, p, sv in by_id
    ]
    # The same rows written through SQLAlchemy's own executemany are stored identically.
    fields = store.table_fields(_table_meta(cave, name))
    twin = store.live_table(f"{name}_twin", fields)
    with cave.world.engine.begin() as conn:
        twin.create(conn)
        typed = conn.execute(sa.select(store.live_table(name, fields))).mappings().all()
        conn.execute(twin.insert(), [dict(row) for row in typed])
    assert _raw_rows(cave, f"{name}_twin") == rows


def _table_meta(cave: CaveServer, table_name: str) -> dict[str, Any]:
    """The metadata row of an annotation table, read from the stand-in's database."""
    with cave.world.engine.connect() as conn:
        meta = store.table_meta_row(conn, cave.world.config.aligned_volume, table_name)
    assert meta is not None
    return meta


def test_concurrent_posts_to_one_table(cave: CaveServer) -> None:
    name = _new_table(cave)
    url = f"{_base(cave)}/table/{name}/annotations"
    pos, _ = _points(cave, 3000, seed=4)
    batches = [
        [{"pt": {"position": [int(v) for v in p]}, "tag": f"b{b}_{i}"} for i, p in enumerate(part)]
        for b, part in enumerate(np.array_split(pos, 3))
    ]
    with ThreadPoolExecutor(len(batches)) as pool:
        answers = list(pool.map(lambda annos: cave.post(url, json={"annotations": annos}), batches))
    assert [r.status_code for r in answers] == [200] * len(batches)
    id_lists = [r.json() for r in answers]
    for ids in id_lists:  # each POST got one unbroken run of ids
        assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert sorted(i for ids in id_lists for i in ids) == list(range(1, 3001))
    expected = {
        ident: anno["tag"]
        for ids, annos in zip(id_lists, batches, strict=True)
        for ident, anno in zip(ids, annos, strict=True)
    }
    assert {row["id"]: row["tag"] for row in _raw_rows(cave, name)} == expected
    assert cave.get(f"{_base(cave)}/table/{name}/count").json() == 3000


def test_post_validation_and_limits(cave: CaveServer) -> None:
    name = _new_table(cave)
    url = f"{_base(cave)}/table/{name}/annotations"
    missing = cave.post(url, json={"annotations": [{"pt": {"position": [1, 2, 3]}}]})
    assert missing.status_code == 422 and "tag" in missing.json()["message"]
    bad_pos = cave.post(url, json={"annotations": [{"pt": {"position": [1, 2]}, "tag": "x"}]})
    assert bad_pos.status_code == 422 and "pt.position" in bad_pos.json()["message"]
    second = cave.post(
        url,
        json={
            "annotations": [
                {"pt": {"position": [1, 2, 3]}, "tag": "ok"},
                {"pt": {"position": [1, 2, 3]}, "tag": 5},
            ]
        },
    )
    assert second.status_code == 422 and "annotation 1" in second.json()["message"]
    assert cave.get(f"{_base(cave)}/table/{name}/count").json() == 0  # nothing written
    too_many = [{"pt": {"position": [1, 2, 3]}, "tag": "x"}] * 10_001
    over = cave.post(url, json={"annotations": too_many})
    assert over.status_code == 413
    ok = cave.post(url, json={"annotations": too_many[:10_000]})
    assert ok.status_code == 200 and len(ok.json()) == 10_000
    assert cave.post(url, json={"wrong": []}).status_code == 400
    assert (
        cave.post(f"{_base(cave)}/table/nope/annotations", json={"annotations": []}).status_code
        == 404
    )


def test_update_and_delete(cave: CaveServer) -> None:
    name = _new_table(cave)
    url = f"{_base(cave)}/table/{name}/annotations"
    pos, _ = _points(cave, 3, seed=2)
    ids = cave.post(url, json={"annotations": _tags(pos)}).json()
    r = cave.put(url, json={"annotations": [{"id": ids[0], "tag": "renamed"}]})
    assert r.status_code == 200
    # The real service answers one {old_id: new_id} per annotation, in a list (issue 11.3).
    (mapping,) = r.json()
    assert list(mapping) == [str(ids[0])]
    new_id = mapping[str(ids[0])]
    assert new_id not in ids
    old, new = cave.get(url, params={"annotation_ids": f"{ids[0]},{new_id}"}).json()
    assert old["valid"] is False and old["deleted"] is not None and old["superceded_id"] == new_id
    assert (
        new["tag"] == "renamed"
        and new["pt_position"] == old["pt_position"]
        and new["valid"] is True
    )
    again = cave.put(url, json={"annotations": [{"id": ids[0], "tag": "twice"}]})
    assert again.status_code == 409
    invalid = cave.put(url, json={"annotations": [{"id": new_id, "tag": 7}]})
    assert invalid.status_code == 422 and "tag" in invalid.json()["message"]
    deleted = cave.delete(url, json={"annotation_ids": [ids[1], 999_999]})
    assert deleted.json() == [ids[1]]
    row = cave.get(url, params={"annotation_ids": str(ids[1])}).json()[0]
    assert row["valid"] is False and row["deleted"] is not None
    nothing = cave.delete(url, json={"annotation_ids": [999_999]})
    assert nothing.status_code == 404 and "999999" in nothing.text


def test_table_permissions(cave: CaveServer) -> None:
    # owned by the admin; PRIVATE read and write
    private = _new_table(cave, role="admin", read_permission="PRIVATE")
    url = f"{_base(cave)}/table/{private}/annotations"
    anno = {"annotations": [{"pt": {"position": [1, 2, 3]}, "tag": "x"}]}
    refused = cave.post(url, "user", json=anno)
    assert refused.status_code == 401 and "owner" in refused.json()["message"]
    assert cave.get(f"{_base(cave)}/table/{private}", "user").status_code == 401
    assert cave.post(url, "admin", json=anno).status_code == 200
    # PUBLIC write: any editor; viewers are refused by the service-level check
    public = _new_table(cave, role="admin", write_permission="PUBLIC")
    purl = f"{_base(cave)}/table/{public}/annotations"
    assert cave.post(purl, "user", json=anno).status_code == 200
    assert cave.post(purl, "viewer", json=anno).status_code == 403
    assert cave.get(f"{_base(cave)}/table/{public}/count", "viewer").json() == 1
    # owner-only metadata update and delete
    change = {"table_name": public, "metadata": {"description": "new", "notice_text": "None"}}
    assert cave.put(f"{_base(cave)}/table", "user", json=change).status_code == 401
    updated = cave.put(f"{_base(cave)}/table", "admin", json=change)
    assert updated.status_code == 200 and updated.json()["description"] == "new"
    assert updated.json()["notice_text"] is None
    bad = cave.put(
        f"{_base(cave)}/table",
        "admin",
        json={"table_name": public, "metadata": {"schema_type": "x"}},
    )
    assert bad.status_code == 400
    assert cave.delete(f"{_base(cave)}/table/{public}", "user").status_code == 401
    assert cave.delete(f"{_base(cave)}/table/{public}", "admin").json() is True
    assert public not in cave.get(f"{_base(cave)}/table").json()
    assert cave.get(f"{_base(cave)}/table/{public}").status_code == 404


def test_user_id_schema_and_reference_tables(cave: CaveServer) -> None:
    name = _new_table(cave, schema="bound_tag_user")
    url = f"{_base(cave)}/table/{name}/annotations"
    ids = cave.post(
        url, json={"annotations": [{"pt": {"position": [1, 2, 3]}, "tag": "x", "user_id": 99}]}
    ).json()
    assert cave.get(url, params={"annotation_ids": str(ids[0])}).json()[0]["user_id"] == 2
    ref = _new_table(
        cave, schema="reference_tag", table_metadata={"reference_table": "nucleus_detection"}
    )
    rurl = f"{_base(cave)}/table/{ref}/annotations"
    assert cave.post(rurl, json={"annotations": [{"target_id": 3, "tag": "soma"}]}).json() == [1]
    meta = cave.get(f"{_base(cave)}/table/{ref}").json()
    assert meta["reference_table"] == "nucleus_detection"


def test_wrong_aligned_volume_and_auth(cave: CaveServer) -> None:
    import requests

    r = cave.get("/annotation/api/v2/aligned_volume/other/table")
    assert r.status_code in (400, 404)
    bad = requests.get(
        cave.url + f"{_base(cave)}/table",
        headers={"Authorization": "Bearer " + "0" * 32},
        timeout=30,
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_token"


def test_group_permissions(cave: CaveServer) -> None:
    anno = {"annotations": [{"pt": {"position": [1, 2, 3]}, "tag": "x"}]}
    # the admin shares the "sandbox" group with the user: GROUP write lets the user in
    shared = _new_table(cave, role="admin", write_permission="GROUP")
    assert (
        cave.post(f"{_base(cave)}/table/{shared}/annotations", "user", json=anno).status_code == 200
    )
    # the viewer is in no group of the user's: GROUP read keeps it out
    grouped = _new_table(cave, role="user", read_permission="GROUP")
    refused = cave.get(f"{_base(cave)}/table/{grouped}", "viewer")
    assert refused.status_code == 401 and "group" in refused.json()["message"]
    assert cave.get(f"{_base(cave)}/table/{grouped}", "user").status_code == 201
