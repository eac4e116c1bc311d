"""Pure pieces of the CAVE flows: schema fields, row nesting and checks, fingerprints,
permission rules, ledger keys, storage helpers (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_neurodata.clients.cave.annotationengine import checked_table_name
from prefect_neurodata.flows.annotation_upload import (
    AnnotationUploadRequest,
    NewTable,
    SchemaFields,
    Source,
    check_rows,
    fast_validator,
    ledger_dir_for,
    nest_row,
)
from prefect_neurodata.flows.materialization_snapshot import SnapshotRequest
from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.cave import fingerprint, table_permission_problem

SYNAPSE_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "definitions": {
        "BoundSpatialPoint": {
            "type": "object",
            "properties": {
                "position": {"type": "array", "items": {"type": "number"}, "minItems": 3,
                             "maxItems": 3},
                "supervoxel_id": {"type": ["integer", "null"]},
                "root_id": {"type": ["integer", "null"]},
            },
            "required": ["position"],
            "additionalProperties": False,
        },
        "SpatialPoint": {
            "type": "object",
            "properties": {
                "position": {"type": "array", "items": {"type": "number"}, "minItems": 3,
                             "maxItems": 3}
            },
            "required": ["position"],
            "additionalProperties": False,
        },
        "SynapseSchema": {
            "type": "object",
            "properties": {
                "valid": {"type": ["boolean", "null"]},
                "pre_pt": {"type": "object", "$ref": "#/definitions/BoundSpatialPoint"},
                "ctr_pt": {"type": "object", "$ref": "#/definitions/SpatialPoint"},
                "post_pt": {"type": "object", "$ref": "#/definitions/BoundSpatialPoint"},
                "size": {"type": ["number", "null"]},
            },
            "required": ["ctr_pt", "post_pt", "pre_pt"],
            "additionalProperties": True,
        },
    },
    "$ref": "#/definitions/SynapseSchema",
}  # fmt: skip


@pytest.fixture
def fields() -> SchemaFields:
    return SchemaFields.from_schema(SYNAPSE_SCHEMA)


def test_schema_fields(fields: SchemaFields) -> None:
    assert fields.points == {"pre_pt": True, "ctr_pt": False, "post_pt": True}
    assert set(fields.scalars) == {"valid", "size"}
    assert fields.required == {"ctr_pt", "post_pt", "pre_pt"}
    assert {"pre_pt_position_x", "pre_pt_root_id", "ctr_pt_position"} <= fields.columns()
    assert "ctr_pt_root_id" not in fields.columns()


def test_nest_row_accepts_every_position_spelling(fields: SchemaFields) -> None:
    flat = {
        "pre_pt_position": "[1, 2, 3]",
        "ctr_pt_position_x": 4.0,
        "ctr_pt_position_y": 5,
        "ctr_pt_position_z": 6,
        "post_pt_position": (7, 8, 9),
        "post_pt_root_id": 42.0,
        "size": float("nan"),
    }
    assert nest_row(flat, fields) == {
        "pre_pt": {"position": [1, 2, 3]},
        "ctr_pt": {"position": [4, 5, 6]},
        "post_pt": {"position": [7, 8, 9], "root_id": 42},
    }
    nested = {"pre_pt": {"position": [1, 2, 3]}, "size": 3.5}
    assert nest_row(nested, fields) == {"pre_pt": {"position": [1, 2, 3]}, "size": 3.5}


def test_check_rows_reports_every_problem_with_row_and_field(fields: SchemaFields) -> None:
    rows = [
        {"pre_pt_position": "1,2,3", "ctr_pt_position": "1,2,3", "post_pt_position": "1,2,3"},
        {"pre_pt_position": "1,2", "ctr_pt_position": "1,2,3", "post_pt_position": "1,2,3",
         "size": "big"},
        {"ctr_pt_position": "1,2,3", "post_pt_position": "1,2,3"},
    ]  # fmt: skip
    nested = [nest_row(r, fields) for r in rows]
    problems = check_rows(rows, nested, fields, "insert", 1, set())
    assert {(p.row, p.field) for p in problems} == {
        (2, "pre_pt_position"),
        (2, "size"),
        (3, "pre_pt_position"),
    }
    # Updates may be partial but need a positive, unique id.
    updates = [{"id": 5, "size": 1.0}, {"id": 5, "size": 2.0}, {"id": -1}]
    problems = check_rows(
        updates, [nest_row(r, fields) for r in updates], fields, "update", 1, set()
    )
    assert [(p.row, p.field, p.problem.split(" ")[0]) for p in problems] == [
        (2, "id", "duplicate"),
        (3, "id", "update"),
    ]


def test_fingerprint_matches_the_servers_flat_rows() -> None:
    record = {"pre_pt": {"position": [1, 2, 3], "root_id": 9}, "size": 4, "valid": True}
    assert fingerprint(record) == (("pre_pt_position", (1.0, 2.0, 3.0)), ("size", 4.0))


def test_table_permission_rules() -> None:
    user = {"user_id": 2, "user": "u", "admin": False}
    private = {"table_name": "t", "user_id": "1", "write_permission": "PRIVATE"}
    assert "cannot write" in (table_permission_problem(private, user, "write") or "")
    assert table_permission_problem({**private, "user_id": "2"}, user, "write") is None
    assert table_permission_problem(private, {**user, "admin": True}, "write") is None
    assert (
        table_permission_problem({**private, "write_permission": "PUBLIC"}, user, "write") is None
    )
    assert table_permission_problem({"table_name": "t", "user_id": 1}, user, "read") is None


def test_ledger_key_depends_on_content_table_mode_and_chunk_size(tmp_path: Path) -> None:
    source = str(tmp_path / "a.csv")
    request = AnnotationUploadRequest(table="t", source=source)
    one = Source(name=source, sha256="a" * 64)
    key, where = ledger_dir_for(request, one, "ds")
    assert where == str(tmp_path / ".neurodata-ledger" / f"t-insert-{key}")
    assert ledger_dir_for(request, one, "ds") == (key, where)
    assert ledger_dir_for(request, Source(name=source, sha256="b" * 64), "ds")[0] != key
    assert ledger_dir_for(request.model_copy(update={"chunk_size": 10}), one, "ds")[0] != key
    assert ledger_dir_for(request.model_copy(update={"table": "u"}), one, "ds")[0] != key


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="exactly one of source"):
        AnnotationUploadRequest(table="t")
    with pytest.raises(ValueError, match="table 'Bad-Name' is invalid"):
        AnnotationUploadRequest(table="Bad-Name", records=[{}])
    with pytest.raises(ValueError, match=r"expected a \.csv"):
        AnnotationUploadRequest(table="t", source="x.json")
    with pytest.raises(ValueError, match="less than or equal to 10000"):
        AnnotationUploadRequest(table="t", records=[{}], chunk_size=10_001)
    for resolution in ([4, 4], [4, 4, float("inf")], [4, 0, 40]):
        with pytest.raises(ValueError, match="voxel_resolution must be three positive numbers"):
            NewTable(schema_type="synapse", description="d", voxel_resolution=resolution)
    assert NewTable(
        schema_type="synapse", description="d", voxel_resolution=[4, 4, 40]
    ).voxel_resolution == [4.0, 4.0, 40.0]
    with pytest.raises(ValueError, match="reference_table 'Bad-Name' is invalid"):
        NewTable(schema_type="presynaptic_bouton_type", description="d", reference_table="Bad-Name")
    new_table = NewTable(schema_type="s", description="d", reference_table="synapses")
    assert new_table.reference_table == "synapses"


def test_snapshot_resolution_follows_the_client_rule() -> None:
    for resolution in ([4, 4], [4, 4, float("inf")], [4, 4, float("nan")], [0, 4, 40]):
        with pytest.raises(ValueError, match="desired_resolution must be three positive numbers"):
            SnapshotRequest(destination="/tmp/snaps", desired_resolution=resolution)
    request = SnapshotRequest(destination="/tmp/snaps", desired_resolution=[4, 4, 40])
    assert request.desired_resolution == [4.0, 4.0, 40.0]
    assert SnapshotRequest(destination="/tmp/snaps").desired_resolution is None


@pytest.mark.parametrize("name", ["synapses", "_t2", "a_b_1", "Bad", "1abc", "a-b", "", "a b"])
def test_flow_and_client_accept_the_same_table_names(name: str) -> None:
    client_accepts = flow_accepts = True
    try:
        checked_table_name(name)
    except ValueError:
        client_accepts = False
    try:
        AnnotationUploadRequest(table=name, records=[{}])
    except ValueError:
        flow_accepts = False
    assert client_accepts == flow_accepts == (name in ("synapses", "_t2", "a_b_1"))


def test_storage_atomic_write_and_checksum(tmp_path: Path) -> None:
    target = str(tmp_path / "d" / "f.json")
    storage.write_bytes_atomic(target, b"one")
    storage.write_bytes_atomic(target, b"two")
    assert storage.read_bytes(target) == b"two" and storage.exists(target)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["f.json"]
    assert storage.sha256_file(target) == storage.sha256_local(target)
    assert storage.join("s3://b/p/", "x", "y") == "s3://b/p/x/y"
    with pytest.raises(ValueError, match="has no bucket"):
        storage.resolve("s3:///key")


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=3),
)
_positions = st.one_of(_values, st.lists(_values, max_size=4))
_points = st.one_of(
    _values,
    st.dictionaries(
        st.sampled_from(["position", "supervoxel_id", "root_id", "other"]),
        st.one_of(_positions, _values),
        max_size=3,
    ),
)
_rows = st.dictionaries(
    st.sampled_from(["pre_pt", "ctr_pt", "post_pt", "size", "valid", "extra"]),
    st.one_of(_points, _values),
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(row=_rows, enforce=st.booleans())
def test_fast_validator_agrees_with_jsonschema(row: dict, enforce: bool) -> None:
    fast = fast_validator(SYNAPSE_SCHEMA)
    assert fast is not None
    errors = [
        e
        for e in jsonschema.Draft7Validator(SYNAPSE_SCHEMA).iter_errors(row)
        if enforce or not (e.validator == "required" and not e.absolute_path)
    ]
    assert fast(row, enforce) == (not errors), errors


def test_fast_validator_declines_schemas_it_does_not_cover() -> None:
    schema = json.loads(json.dumps(SYNAPSE_SCHEMA))
    schema["definitions"]["SynapseSchema"]["properties"]["size"]["minimum"] = 0
    assert fast_validator(schema) is None


@settings(max_examples=200, deadline=None)
@given(parts=st.integers(min_value=1, max_value=120), tasks=st.integers(min_value=1, max_value=16))
def test_snapshot_parts_are_dealt_in_order_into_even_shares(parts: int, tasks: int) -> None:
    # issue 15: a table's parts go to at most one task per thread, each a run of consecutive
    # parts, every part exactly once, shares differing by at most one part
    from prefect_neurodata.flows.materialization_snapshot import deal_parts
    from prefect_neurodata.tasks.cave import SnapshotPart

    planned = [
        SnapshotPart(id_range=[i * 10 or None, (i + 1) * 10], target=f"part-{i:05d}.parquet")
        for i in range(parts)
    ]
    groups = deal_parts(planned, tasks)
    assert len(groups) == min(parts, tasks)
    assert [part for group in groups for part in group] == planned
    sizes = [len(group) for group in groups]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
