"""``client.materialize.tables`` / ``.views`` against the CAVE stand-in, over real HTTP.

Every answer of the table interface is checked against rows computed here in pandas from plain
single-table queries: the reference-table join (``cell_type_ref`` -> ``nucleus_detection``), its
live form (``filter_kwargs_live`` + ``joins_kwargs`` through ``live_live_query``), a plain table's
``filter_kwargs_mat`` (equality, ``IN``, inequality, box) and the views.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from prefect_neurodata.clients.cave import CAVEclient


@pytest.fixture(scope="module")
def client(sandbox_cave_client: CAVEclient) -> CAVEclient:
    return sandbox_cave_client


def _joined_by_hand(nuclei: pd.DataFrame, types: pd.DataFrame) -> pd.DataFrame:
    """The reference join the server should do: target columns as they are, the reference
    table's colliding columns with ``_ref``."""
    return types.merge(nuclei, left_on="target_id", right_on="id", suffixes=("_ref", ""))


def test_tables_are_attributes_with_schema_keywords(client: CAVEclient) -> None:
    tables = client.materialize.tables
    assert {"synapses", "nucleus_detection", "cell_type_ref"} <= set(tables.table_names)
    assert "cell_type_ref" in tables and len(tables) == len(tables.table_names)
    ref = tables.cell_type_ref
    # the target's columns keep their names; the reference table's colliding "id" is id_ref
    for name in ("pt_root_id", "id", "volume", "id_ref", "cell_type", "target_id"):
        assert name in ref.fields
    assert "pt_position_bbox" in ref.spatial_fields and "volume" in ref.numeric_fields
    assert tables["synapses"] is tables.synapses
    assert {"pre_pt_root_id", "size", "ctr_pt_position_bbox"} <= set(tables.synapses.fields)


def test_reference_table_query_is_the_join_to_its_target(client: CAVEclient) -> None:
    mat = client.materialize
    nuclei = mat.query_table("nucleus_detection")
    types = mat.query_table("cell_type_ref", merge_reference=False)
    expected = _joined_by_hand(nuclei, types)
    cell_type = str(types["cell_type"].value_counts().index[0])
    roots = nuclei["pt_root_id"].drop_duplicates().tolist()[:40]
    want = expected[(expected["cell_type"] == cell_type) & expected["pt_root_id"].isin(roots)]
    assert len(want) > 0

    query = mat.tables.cell_type_ref(cell_type=cell_type, pt_root_id=roots)
    assert query.filter_kwargs_mat == {
        "filter_equal_dict": {"cell_type_ref": {"cell_type": cell_type}},
        "filter_in_dict": {"nucleus_detection": {"pt_root_id": roots}},
    }
    got = query.query()
    assert got.attrs["join_query"] is True
    assert {"id", "id_ref", "volume", "cell_type", "target_id", "pt_position"} <= set(got.columns)
    assert sorted(got["id_ref"].tolist()) == sorted(want["id_ref"].tolist())
    assert (got["id"] == got["target_id"]).all()

    # a renamed keyword (id_ref) is sent under the server's column name (id)
    one = int(want["id_ref"].iloc[0])
    single = mat.tables.cell_type_ref(id_ref=one).query()
    assert single["id_ref"].tolist() == [one]


def test_reference_table_live_query_joins_on_the_server(client: CAVEclient) -> None:
    mat = client.materialize
    now = dt.datetime.now(dt.timezone.utc)
    nuclei = mat.live_live_query("nucleus_detection", now)
    types = mat.live_live_query("cell_type_ref", now)
    expected = _joined_by_hand(nuclei, types)
    cell_type = str(types["cell_type"].value_counts().index[0])
    big = float(nuclei["volume"].median())
    want = expected[(expected["cell_type"] == cell_type) & (expected["volume"] > big)]
    assert len(want) > 0

    query = mat.tables.cell_type_ref(cell_type=cell_type, volume={">": big})
    assert query.joins_kwargs == {
        "joins": [["cell_type_ref", "target_id", "nucleus_detection", "id"]]
    }
    assert query.filter_kwargs_live == {
        "filter_equal_dict": {"cell_type_ref": {"cell_type": cell_type}},
        "filter_greater_dict": {"nucleus_detection": {"volume": big}},
    }
    got = query.live_query(now)
    assert got.attrs["live_query"] is True
    assert sorted(got["id_ref"].tolist()) == sorted(want["id_ref"].tolist())
    assert (got["volume"] > big).all() and (got["cell_type"] == cell_type).all()
    # root ids of the target table, current at the timestamp, filter the live join too
    roots = want["pt_root_id"].drop_duplicates().tolist()[:3]
    by_root = mat.tables.cell_type_ref(pt_root_id=roots).live_query(now)
    assert sorted(by_root["id_ref"].tolist()) == sorted(
        expected[expected["pt_root_id"].isin(roots)]["id_ref"].tolist()
    )
    # query(timestamp=...) of a reference table is the same live join
    again = mat.tables.cell_type_ref(cell_type=cell_type, volume={">": big}).query(timestamp=now)
    assert sorted(again["id_ref"].tolist()) == sorted(got["id_ref"].tolist())


def test_plain_table_filters_match_pandas(client: CAVEclient) -> None:
    mat = client.materialize
    everything = mat.query_table("synapses", split_positions=True)
    roots = everything["pre_pt_root_id"].value_counts().index[:5].tolist()
    lo = everything[["ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z"]].quantile(0.1)
    hi = everything[["ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z"]].quantile(0.9)
    box = [lo.tolist(), hi.tolist()]
    pos = everything[["ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z"]].to_numpy()
    inside = np.all((pos >= lo.to_numpy()) & (pos <= hi.to_numpy()), axis=1)
    want = everything[
        everything["pre_pt_root_id"].isin(roots) & (everything["size"] >= 200) & inside
    ]
    assert 0 < len(want) < len(everything)

    query = mat.tables.synapses(pre_pt_root_id=roots, size={">=": 200}, ctr_pt_position_bbox=box)
    assert query.filter_kwargs_mat == {
        "filter_in_dict": {"pre_pt_root_id": roots},
        "filter_spatial_dict": {"ctr_pt_position": box},
        "filter_greater_equal_dict": {"size": 200},
    }
    got = query.query(split_positions=True)
    assert sorted(got["id"].tolist()) == sorted(want["id"].tolist())
    counted = query.query(get_counts=True)
    assert int(counted["count"].iloc[0]) == len(want)
    scaled = query.query(desired_resolution=[1, 1, 1], split_positions=True, limit=3)
    assert scaled.attrs["dataframe_resolution"] == [1.0, 1.0, 1.0]
    sample = mat.tables.synapses(pre_pt_root_id=roots).query(select_columns=["id", "size"])
    assert list(sample.columns) == ["id", "size"]


def test_views_query_with_generated_keywords(client: CAVEclient) -> None:
    mat = client.materialize
    views = mat.views
    assert {"large_synapses", "nucleus_cell_types"} <= set(views.table_names)
    assert "large_synapses" in views
    full = mat.query_view("large_synapses")
    threshold = float(full["size"].median())
    want = full[full["size"] < threshold]
    assert 0 < len(want) < len(full)
    query = views.large_synapses(size={"<": threshold})
    assert query.filter_kwargs_mat == {"filter_less_dict": {"size": threshold}}
    got = query.query()
    assert sorted(got["id"].tolist()) == sorted(want["id"].tolist())
    roots = full["post_pt_root_id"].drop_duplicates().tolist()[:3]
    by_root = views.large_synapses(post_pt_root_id=roots).query()
    assert sorted(by_root["id"].tolist()) == sorted(
        full[full["post_pt_root_id"].isin(roots)]["id"].tolist()
    )
    joined_view = views.nucleus_cell_types.get_all()
    assert len(joined_view) == len(mat.query_view("nucleus_cell_types"))


def test_get_all_returns_every_row(client: CAVEclient) -> None:
    mat = client.materialize
    assert len(mat.tables.cell_type_ref.get_all()) == mat.get_annotation_count("cell_type_ref")
    assert len(mat.tables.nucleus_detection.get_all()) == mat.get_annotation_count(
        "nucleus_detection"
    )
