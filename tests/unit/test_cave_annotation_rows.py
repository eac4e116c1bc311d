"""The one home of the CAVE annotation row rules, and the hostile values it stops before any
request: non-finite numbers, ids out of the int64 range, over-long text, update answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import responses

from prefect_neurodata.clients.cave import annotation_rows as rows_module
from prefect_neurodata.clients.cave.annotation_rows import (
    MAX_VALUE_CHARS,
    AnnotationValidationError,
    SchemaFields,
    check_rows,
    nest_row,
    shorten,
    typed_row,
)
from prefect_neurodata.clients.cave.annotationengine import update_id_map
from prefect_neurodata.clients.cave.tools import StagedAnnotations
from prefect_neurodata.clients.cave.tools import stage as stage_module
from prefect_neurodata.flows import annotation_upload
from tests.unit.test_cave_annotation import BASE, CELL_TYPE_SCHEMA, body, make_client
from tests.unit.test_cave_flow_logic import SYNAPSE_SCHEMA


@pytest.fixture
def fields() -> SchemaFields:
    return SchemaFields.from_schema(SYNAPSE_SCHEMA)


def good(**extra: object) -> dict[str, object]:
    return {
        "pre_pt_position": "1,2,3",
        "ctr_pt_position": "1,2,3",
        "post_pt_position": "4,5,6",
    } | extra


def problems_of(flat_rows: list[dict], fields: SchemaFields, mode: str = "insert") -> list:
    typed = [typed_row(r, fields) for r in flat_rows]
    return check_rows(flat_rows, [nest_row(r, fields) for r in typed], fields, mode, 1, set())


def test_one_home_for_the_row_rules() -> None:
    # Staging, the client and the flow use the same error type and schema reader.
    assert stage_module.AnnotationValidationError is AnnotationValidationError
    assert annotation_upload.AnnotationValidationError is AnnotationValidationError
    assert annotation_upload.SchemaFields is SchemaFields
    assert issubclass(AnnotationValidationError, ValueError)


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"pre_pt_position": "1e400,2,3"}, "pre_pt_position", "finite"),
        ({"ctr_pt_position": None, "ctr_pt_position_x": "1e400", "ctr_pt_position_y": "2",
          "ctr_pt_position_z": "3"}, "ctr_pt_position", "finite"),
        ({"size": "inf"}, "size", "finite"),
        ({"size": "-1e999"}, "size", "finite"),
        ({"pre_pt_root_id": str(2**64)}, "pre_pt_root_id", "integer in [0, "),
        ({"post_pt_supervoxel_id": str(2**63)}, "post_pt_supervoxel_id", "integer in [0, "),
        ({"post_pt_supervoxel_id": "-5"}, "post_pt_supervoxel_id", "integer in [0, "),
        ({"size": "nan"}, "size", "is not of type"),
    ],
)  # fmt: skip
def test_values_the_service_cannot_store_are_reported(
    fields: SchemaFields, extra: dict, field: str, fragment: str
) -> None:
    problems = problems_of([good(), good(**extra)], fields)
    assert [(p.row, p.field) for p in problems] == [(2, field)]
    assert fragment in problems[0].problem


def test_non_finite_positions_from_parquet_lists(fields: SchemaFields) -> None:
    row = {"pre_pt_position": [1.0, float("nan"), 3.0], "ctr_pt_position": [1, 2, 3],
           "post_pt_position": [1, 2, float("inf")]}  # fmt: skip
    problems = check_rows([row], [nest_row(row, fields)], fields, "insert", 7, set())
    assert {(p.row, p.field) for p in problems} == {(7, "pre_pt_position"), (7, "post_pt_position")}


def test_long_text_is_reported_shortened() -> None:
    schema = {
        "definitions": {
            "Tag": {
                "type": "object",
                "properties": {"tag": {"type": "string"}},
                "required": ["tag"],
            }
        },
        "$ref": "#/definitions/Tag",
    }
    fields = SchemaFields.from_schema(schema)
    huge = "x" * (MAX_VALUE_CHARS + 1)
    problems = check_rows([{"tag": huge}], [{"tag": huge}], fields, "insert", 3, set())
    assert [(p.row, p.field) for p in problems] == [(3, "tag")]
    assert len(problems[0].value) < 100 and "1,000,003 characters" in problems[0].value
    assert "at most 1,000,000" in problems[0].problem
    assert shorten("abc") == "'abc'"


def test_update_and_delete_ids_must_fit_int64(fields: SchemaFields) -> None:
    problems = problems_of([{"id": str(2**63)}, {"id": "0"}, {"id": "12"}], fields, "delete")
    assert [(p.row, p.field) for p in problems] == [(1, "id"), (2, "id")]


def test_raise_problems_names_where_row_field_and_value(fields: SchemaFields) -> None:
    problems = problems_of([good(pre_pt_position="1e400,2,3")], fields)
    with pytest.raises(AnnotationValidationError) as caught:
        rows_module.raise_problems(problems, "syn.csv for table 't'")
    message = str(caught.value)
    assert "syn.csv" in message and "row 1: pre_pt_position = [inf, 2, 3]" in message
    assert "nothing was written" in message
    assert (caught.value.row, caught.value.field) == (1, "pre_pt_position")


# ------------------------------------------------------------------------------ the client
@responses.activate
@pytest.mark.parametrize(
    "bad",
    [
        {"pt": {"position": [1, 2, float("inf")]}, "tag": "a"},
        {"pt": {"position": [1, 2, float("nan")]}, "tag": "a"},
        {"pt": {"position": [1, 2, 3], "root_id": 2**64}, "tag": "a"},
        {"pt": {"position": [1, 2, 3], "supervoxel_id": 2**63}, "tag": "a"},
        {"pt": {"position": [1, 2, 3]}, "score": float("-inf")},
    ],
)
def test_post_annotation_stops_hostile_values_before_any_request(bad: dict) -> None:
    client = make_client()
    responses.post(f"{BASE}/table/t/annotations", json=[1])
    records = [{"pt": {"position": [i, 0, 0]}, "tag": "ok"} for i in range(12_000)]
    records[10_500] = bad
    with pytest.raises(AnnotationValidationError, match=r"annotation 10500: field '"):
        client.post_annotation("t", records)
    assert len(responses.calls) == 0


@responses.activate
def test_post_annotation_df_stops_hostile_values_before_any_request() -> None:
    client = make_client()
    responses.post(f"{BASE}/table/t/annotations", json=[1])
    n = 20_500
    positions = np.zeros((n, 3))
    positions[20_100, 2] = np.inf
    df = pd.DataFrame({"pt_position": list(positions), "tag": ["a"] * n})
    with pytest.raises(AnnotationValidationError, match=r"'pt_position', row 20100: .*finite"):
        client.post_annotation_df("t", df, ["pt_position"])
    df = pd.DataFrame({"pt_position": [[1, 2, 3]] * 3, "score": [1.0, np.nan, np.inf]})
    with pytest.raises(AnnotationValidationError, match=r"'score', row 2"):
        client.post_annotation_df("t", df, ["pt_position"])
    ids = np.array([1, 2**63, 3], dtype=np.uint64)
    df = pd.DataFrame({"pt_position": [[1, 2, 3]] * 3, "pt_root_id": ids})
    with pytest.raises(AnnotationValidationError, match=r"'pt_root_id', row 1"):
        client.post_annotation_df("t", df, ["pt_position"])
    df = pd.DataFrame(
        {"pt_position": [[1, 2, 3]] * 2, "value": pd.Series([1, 2**64], dtype=object)}
    )
    with pytest.raises(AnnotationValidationError, match=r"'value'"):
        client.post_annotation_df("t", df, ["pt_position"])
    assert len(responses.calls) == 0


@responses.activate
def test_delete_and_update_ids_out_of_range_fail_before_any_request() -> None:
    client = make_client()
    with pytest.raises(AnnotationValidationError, match=r"annotation 1: id 18446744073709551616"):
        client.delete_annotation("t", [5, 2**64])
    with pytest.raises(AnnotationValidationError, match=r"annotation 0: id 0 "):
        client.update_annotation("t", [{"id": 0, "tag": "a"}])
    assert len(responses.calls) == 0


# ------------------------------------------------------------------------------ update answers
def test_update_answers_in_every_shape() -> None:
    assert update_id_map([{"7": 70}, {"8": 80}]) == {"7": 70, "8": 80}
    assert update_id_map({"7": 70}) == {"7": 70}
    assert update_id_map([70, 80], [7, 8]) == {"7": 70, "8": 80}
    assert update_id_map(None) == {}
    with pytest.raises(ValueError, match="unexpected answer"):
        update_id_map("nope")


@responses.activate
def test_update_annotation_reads_the_real_services_list_answer() -> None:
    client = make_client()
    responses.put(f"{BASE}/table/t/annotations", json=[{"1": 11}, {"2": 12}])
    assert client.update_annotation("t", [{"id": 1, "tag": "a"}, {"id": 2, "tag": "b"}]) == {
        "1": 11,
        "2": 12,
    }


@responses.activate
def test_upload_staged_updates_reads_the_real_services_list_answer() -> None:
    # Issue 11.3: the real AnnotationEngine answers [{old: new}, ...]; `.get` on it crashed.
    client = make_client()
    stage = StagedAnnotations(CELL_TYPE_SCHEMA, update=True, table_name="cells")
    for ident in (7, 8, 9):
        stage.add(id=ident, cell_type="a", classification_system="m", pt_position=[1, 2, 3])
    responses.put(f"{BASE}/table/cells/annotations", json=[{"7": 70}, {"8": 80}])
    responses.put(f"{BASE}/table/cells/annotations", json=[{"9": 90}])
    assert client.upload_staged_annotations(stage, batch_size=2) == {"7": 70, "8": 80, "9": 90}
    assert stage.to_dataframe(include_tracking=True)["new_id"].tolist() == [70, 80, 90]
    assert [len(body(c)["annotations"]) for c in responses.calls] == [2, 1]


def test_stage_refuses_values_the_service_cannot_store() -> None:
    stage = StagedAnnotations(CELL_TYPE_SCHEMA, table_name="cells")
    with pytest.raises(
        AnnotationValidationError, match=r"annotation 0: field 'pt_position'.*finite"
    ):
        stage.add(cell_type="a", classification_system="m", pt_position=[1, 2, float("inf")])
    with pytest.raises(AnnotationValidationError, match=r"field 'confidence'.*finite"):
        stage.add(cell_type="a", classification_system="m", pt_position=[1, 2, 3],
                  confidence=float("inf"))  # fmt: skip
    updates = StagedAnnotations(CELL_TYPE_SCHEMA, update=True, table_name="cells")
    with pytest.raises(AnnotationValidationError, match=r"'id' must be an integer between 1"):
        updates.add(id=2**64, cell_type="a", classification_system="m", pt_position=[1, 2, 3])
    assert len(stage) == 0 and len(updates) == 0
