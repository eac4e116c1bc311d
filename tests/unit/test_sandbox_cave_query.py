"""The stand-in's vectorised query engine: SQL filter semantics on Arrow tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from prefect_neurodata.sandbox.cave import arrowio, materialization_queries, query
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError
from prefect_neurodata.sandbox.cave.store import Field


def _source() -> query.Source:
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5], pa.int64()),
            "valid": pa.array([True, True, True, True, False]),
            "score": pa.array([1.0, None, 3.0, 4.0, 5.0], pa.float32()),
            "tag": pa.array(["a", "b", None, "ab", "a"]),
            "pt_position_x": pa.array([0, 10, 20, 30, 40], pa.int64()),
            "pt_position_y": pa.array([0, 10, 20, 30, 40], pa.int64()),
            "pt_position_z": pa.array([0, 1, 2, 3, 4], pa.int64()),
        }
    )
    return query.Source("t", table, ["pt_position"], (4.0, 4.0, 40.0))


def _ids(body: dict) -> list[int]:
    result = query.simple_query(_source(), body, limit_size=100, desired_resolution=None)
    return result.table.column("id").to_pylist()


def test_in_and_not_in_follow_sql_null_rules() -> None:
    assert _ids({}) == [1, 2, 3, 4]  # valid = true only
    assert _ids({"filter_in_dict": {"t": {"tag": ["a", "b"]}}}) == [1, 2]
    # NULL never matches NOT IN; the invalid row 5 stays out
    assert _ids({"filter_notin_dict": {"t": {"tag": ["a"]}}}) == [2, 4]
    # a NULL inside the NOT IN list makes the predicate NULL for every row
    assert _ids({"filter_notin_dict": {"t": {"tag": ["a", None]}}}) == []
    assert _ids({"filter_equal_dict": {"t": {"tag": None}}}) == [3]
    assert _ids({"filter_greater_dict": {"t": {"score": 1.5}}}) == [3, 4]
    assert _ids({"filter_less_equal_dict": {"t": {"score": 3}}}) == [1, 3]
    assert _ids({"filter_regex_dict": {"t": {"tag": "^a"}}}) == [1, 4]


def test_spatial_box_is_inclusive_and_strict_about_bounds() -> None:
    box = [[10, 10, 1], [30, 30, 3]]
    assert _ids({"filter_spatial_dict": {"t": {"pt_position": box}}}) == [2, 3, 4]
    with pytest.raises(CaveHTTPError) as err:
        _ids({"filter_spatial_dict": {"t": {"pt_position": [[10, 10, 3], [30, 30, 3]]}}})
    assert err.value.status_code == 500
    with pytest.raises(CaveHTTPError) as err:
        _ids({"filter_regex_dict": {"t": {"score": "1"}}})
    assert err.value.status_code == 500


def test_scaling_limit_warning_and_arrow_dtypes() -> None:
    result = query.simple_query(
        _source(), {"limit": 2}, limit_size=100, desired_resolution=[1.0, 1.0, 1.0]
    )
    assert result.warnings == ['201 - "Limited query to 2 rows']
    assert result.table.column("pt_position_z").to_pylist() == [0.0, 40.0]
    body = arrowio.encode_stream(result.table, codec="zstd", plain_columns=result.position_columns)
    frame = pa.ipc.open_stream(body).read_pandas()
    assert str(frame["id"].dtype) == "Int64" and str(frame["score"].dtype) == "Float32"
    assert frame["pt_position_x"].dtype == np.float64


def test_pending_lookups_raise_406_or_are_dropped() -> None:
    table = pa.table({"id": [1, 2], "pt_supervoxel_id": pa.array([1, 77], pa.int64())})
    fields = [Field("pt", "bound_point", True)]
    with pytest.raises(CaveHTTPError) as err:
        materialization_queries.sentinel_rows(table, fields, allow_missing=False)
    assert err.value.status_code == 406 and "1 annotations" in err.value.message
    kept, dropped = materialization_queries.sentinel_rows(table, fields, allow_missing=True)
    assert dropped == 1 and kept.column("id").to_pylist() == [2]
