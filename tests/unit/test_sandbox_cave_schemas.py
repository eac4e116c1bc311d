"""Unit tests of the CAVE stand-in's schema registry (validation used by the annotation engine)."""

from __future__ import annotations

import jsonschema
import pytest

from prefect_neurodata.sandbox.cave.schemas import SchemaRegistry

REG = SchemaRegistry()

VALID = {
    "synapse": {
        "pre_pt": {"position": [1, 2, 3], "supervoxel_id": 5, "root_id": 6},
        "ctr_pt": {"position": [1.5, 2, 3]},
        "post_pt": {"position": [1, 2, 4]},
        "size": 12.5,
    },
    "cell_type_local": {
        "classification_system": "aibs",
        "cell_type": "23P",
        "pt": {"position": [1, 2, 3]},
    },
    "bound_tag": {"pt": {"position": [1, 2, 3]}, "tag": "x"},
    "bound_double_tag": {"pt": {"position": [1, 2, 3]}, "tag": "x", "tag2": "y"},
    "nucleus_detection": {"pt": {"position": [1, 2, 3]}, "volume": 3.2},
    "representative_point": {"pt": {"position": [1, 2, 3]}},
    "reference_tag": {"target_id": 4, "tag": "x"},
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_annotations_pass_both_validators(name: str) -> None:
    assert REG.validate(name, VALID[name]) == []
    jsonschema.Draft7Validator(REG.json_schema(name)).validate(VALID[name])


def test_errors_name_the_bad_field() -> None:
    bad = {
        "pre_pt": {"position": [1, 2]},
        "post_pt": {"position": [1, 2, 3], "color": "red"},
        "size": "big",
        "valid": "yes",
    }
    errors = REG.validate("synapse", bad)
    assert "pre_pt.position: Position must have exactly 3 numbers." in errors
    assert "post_pt.color: Unknown field." in errors
    assert "ctr_pt: Missing data for required field." in errors
    assert "size: Not a valid number." in errors
    assert "valid: Not a valid boolean." in errors
    nested = REG.marshmallow_errors("synapse", bad)
    assert nested["pre_pt"] == {"position": ["Position must have exactly 3 numbers."]}
    assert REG.validate("reference_tag", {"target_id": "x1", "tag": 3}) == [
        "target_id: Not a valid integer.",
        "tag: Not a valid string.",
    ]
    assert REG.validate(
        "proofread_status", {"pt": {"position": [0, 0, 0]}, "valid_id": 1, "status": "messy"}
    ) == ["status: Must be one of: non, clean, extended."]
    assert REG.validate("bound_tag", ["not", "a", "dict"]) == ["_schema: Invalid input type."]


def test_unknown_top_level_fields_are_included_and_user_id_is_optional() -> None:
    assert REG.validate("bound_tag", {**VALID["bound_tag"], "extra": 1}) == []
    assert REG.validate("bound_tag_user", {"pt": {"position": [1, 2, 3]}, "tag": "t"}) == []


def test_json_schema_rejects_what_validate_rejects() -> None:
    schema = REG.json_schema("bound_tag")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"pt": {"position": [1, 2, 3], "bogus": 1}, "tag": "x"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"pt": {"position": [1, 2, 3]}}, schema)


def test_flat_columns_and_reference_flag() -> None:
    cols = dict(REG.flat_columns("synapse"))
    assert cols["pre_pt_position"] == "point" and cols["pre_pt_root_id"] == "bigint"
    assert "ctr_pt_root_id" not in cols and cols["size"] == "float"
    assert REG.spec("reference_tag").is_reference and not REG.spec("synapse").is_reference
    with pytest.raises(KeyError):
        REG.validate("no_such_schema", {})
