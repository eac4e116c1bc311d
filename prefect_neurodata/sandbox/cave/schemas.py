"""Schema service of the CAVE stand-in (EMAnnotationSchemas, reference §1.3, §5.1).

:class:`SchemaRegistry` (``world.schemas``) holds the annotation schemas as field specs, renders
them as marshmallow-jsonschema style JSON Schemas (draft-07) for the service routes, and
validates annotations fast (no per-row JSON Schema machinery, so 10,000-row posts stay cheap):

* ``world.schemas.validate("synapse", annotation) -> list[str]``: errors like
  ``"pre_pt.position: Missing data for required field."`` (empty list = valid).
* ``world.schemas.marshmallow_errors(name, annotation) -> dict``: the same errors nested like
  marshmallow's ``ValidationError.messages`` (``{"pre_pt": {"position": ["..."]}}``).
* ``world.schemas.fields(name) -> list[FieldSpec]`` and ``flat_columns(name)`` for building
  tables (``pt_position``, ``pt_supervoxel_id``, ``pt_root_id``, ...).

Unknown top-level fields are allowed (marshmallow INCLUDE); nested point objects reject unknown
keys; ``valid`` is an optional boolean on every schema; ``*_user`` fields are filled by the
annotation engine and may be absent.

Example:
    >>> reg = SchemaRegistry()
    >>> reg.validate("bound_tag", {"pt": {"position": [1, 2, 3]}, "tag": "x"})
    []
    >>> reg.validate("bound_tag", {"pt": {"position": [1, 2]}})
    ['pt.position: Position must have exactly 3 numbers.', 'tag: Missing data for required field.']
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from .errors import CaveHTTPError

BOUND = "bound_point"
POINT = "point"


@dataclass(frozen=True)
class FieldSpec:
    """One field of an annotation schema.

    Attributes:
        name: Field name.
        kind: ``bound_point``, ``point``, ``int``, ``bigint``, ``float``, ``str``, ``bool``,
            ``user_id`` (filled by the engine), ``target_id`` (reference to another table's id).
        required: Whether the field must be present.
        choices: Allowed values for string fields (``OneOf``), or ``None``.
    """

    name: str
    kind: str
    required: bool = False
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SchemaSpec:
    """An annotation schema: its marshmallow class name, fields and whether it is a reference."""

    name: str
    class_name: str
    fields: tuple[FieldSpec, ...]

    @property
    def is_reference(self) -> bool:
        """True if the schema has a ``target_id`` (reference annotation)."""
        return any(f.kind == "target_id" for f in self.fields)


def _f(
    name: str, kind: str, required: bool = False, choices: tuple[str, ...] | None = None
) -> FieldSpec:
    return FieldSpec(name, kind, required, choices)


_STATUS = ("non", "clean", "extended")

SCHEMAS: tuple[SchemaSpec, ...] = (
    SchemaSpec(
        "synapse",
        "SynapseSchema",
        (
            _f("pre_pt", BOUND, True),
            _f("ctr_pt", POINT, True),
            _f("post_pt", BOUND, True),
            _f("size", "float"),
        ),
    ),
    SchemaSpec(
        "nocleft_synapse",
        "NoCleftSynapse",
        (_f("pre_pt", BOUND, True), _f("post_pt", BOUND, True), _f("score", "float")),
    ),
    SchemaSpec(
        "cell_type_local",
        "CellTypeLocal",
        (
            _f("classification_system", "str", True),
            _f("cell_type", "str", True),
            _f("pt", BOUND, True),
        ),
    ),
    SchemaSpec(
        "cell_type_reference",
        "CellTypeReference",
        (
            _f("target_id", "target_id", True),
            _f("classification_system", "str", True),
            _f("cell_type", "str", True),
        ),
    ),
    SchemaSpec(
        "nucleus_detection",
        "NucleusDetection",
        (_f("volume", "float"), _f("pt", BOUND, True), _f("bb_start", POINT), _f("bb_end", POINT)),
    ),
    SchemaSpec("bound_tag", "BoundTagAnnotation", (_f("pt", BOUND, True), _f("tag", "str", True))),
    SchemaSpec(
        "bound_double_tag",
        "BoundDoubleTagAnnotation",
        (_f("pt", BOUND, True), _f("tag", "str", True), _f("tag2", "str", True)),
    ),
    SchemaSpec(
        "bound_tag_user",
        "BoundTagAnnotationUser",
        (_f("pt", BOUND, True), _f("tag", "str", True), _f("user_id", "user_id")),
    ),
    SchemaSpec("bound_tag_bool", "BoundTagBool", (_f("pt", BOUND, True), _f("tag", "bool", True))),
    SchemaSpec("representative_point", "RepresentativePoint", (_f("pt", BOUND, True),)),
    SchemaSpec("simple_reference", "SimpleReference", (_f("target_id", "target_id", True),)),
    SchemaSpec(
        "reference_tag",
        "ReferenceTagAnnotation",
        (_f("target_id", "target_id", True), _f("tag", "str", True)),
    ),
    SchemaSpec(
        "reference_integer",
        "ReferenceInteger",
        (_f("target_id", "target_id", True), _f("value", "int", True)),
    ),
    SchemaSpec(
        "reference_point",
        "ReferencePoint",
        (_f("target_id", "target_id", True), _f("pt", BOUND, True)),
    ),
    SchemaSpec(
        "proofread_status",
        "ProofreadStatus",
        (_f("pt", BOUND, True), _f("valid_id", "bigint", True), _f("status", "str", True, _STATUS)),
    ),
)

_MISSING = "Missing data for required field."
_TYPE_MSG = {
    "int": "Not a valid integer.",
    "bigint": "Not a valid integer.",
    "target_id": "Not a valid integer.",
    "user_id": "Not a valid integer.",
    "float": "Not a valid number.",
    "str": "Not a valid string.",
    "bool": "Not a valid boolean.",
}


def _is_int(v: Any) -> bool:
    # Plain ints first: the ABC check below costs a microsecond, paid per value of every row.
    if type(v) is int:
        return True
    if isinstance(v, bool):
        return False
    if isinstance(v, numbers.Integral):
        return True
    if isinstance(v, str):
        try:
            int(v)
        except ValueError:
            return False
        return True
    return isinstance(v, float) and v.is_integer()


def _is_number(v: Any) -> bool:
    # Plain ints and floats first: the ABC check below costs a microsecond, paid per coordinate.
    if type(v) is int:
        return True
    if type(v) is float:
        return v == v  # NaN is not a valid number here
    if isinstance(v, bool):
        return False
    if isinstance(v, numbers.Real):
        return v == v  # NaN is not a valid number here
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return False
        return True
    return False


def _check_scalar(kind: str, v: Any) -> bool:
    if kind in ("int", "bigint", "target_id", "user_id"):
        return _is_int(v)
    if kind == "float":
        return _is_number(v)
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    raise AssertionError(kind)


class SchemaRegistry:
    """Registry of annotation schemas (see module docstring)."""

    def __init__(self, schemas: tuple[SchemaSpec, ...] = SCHEMAS) -> None:
        self._specs = {s.name: s for s in schemas}

    def names(self) -> list[str]:
        """All schema names."""
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def spec(self, name: str) -> SchemaSpec:
        """The :class:`SchemaSpec` of ``name`` (``KeyError`` if unknown)."""
        return self._specs[name]

    def fields(self, name: str) -> list[FieldSpec]:
        """Fields of schema ``name`` (``KeyError`` if unknown)."""
        return list(self._specs[name].fields)

    def flat_columns(self, name: str) -> list[tuple[str, str]]:
        """Flattened column names and kinds as the materialized tables store them.

        Bound points give ``<f>_position`` (``point``), ``<f>_supervoxel_id`` and
        ``<f>_root_id`` (``bigint``); plain points give ``<f>_position``; scalars keep their
        name. ``id``, ``created``, ``deleted``, ``superceded_id`` and ``valid`` are not included.
        """
        out: list[tuple[str, str]] = []
        for f in self._specs[name].fields:
            if f.kind == BOUND:
                out += [
                    (f"{f.name}_position", POINT),
                    (f"{f.name}_supervoxel_id", "bigint"),
                    (f"{f.name}_root_id", "bigint"),
                ]
            elif f.kind == POINT:
                out.append((f"{f.name}_position", POINT))
            else:
                out.append((f.name, "bigint" if f.kind in ("target_id", "user_id") else f.kind))
        return out

    # ------------------------------------------------------------------ validation
    def marshmallow_errors(self, name: str, annotation: Any) -> dict[str, Any]:
        """Errors nested like marshmallow's ``ValidationError.messages`` (``{}`` if valid)."""
        spec = self._specs[name]
        if not isinstance(annotation, dict):
            return {"_schema": ["Invalid input type."]}
        errors: dict[str, Any] = {}
        valid = annotation.get("valid")
        if valid is not None and not isinstance(valid, bool):
            errors["valid"] = [_TYPE_MSG["bool"]]
        for f in spec.fields:
            if f.name not in annotation or annotation[f.name] is None:
                if f.required and f.kind != "user_id":
                    errors[f.name] = [_MISSING]
                continue
            value = annotation[f.name]
            if f.kind in (BOUND, POINT):
                sub = _point_errors(value, bound=f.kind == BOUND)
                if sub:
                    errors[f.name] = sub
            elif not _check_scalar(f.kind, value):
                errors[f.name] = [_TYPE_MSG[f.kind]]
            elif f.choices is not None and value not in f.choices:
                errors[f.name] = [f"Must be one of: {', '.join(f.choices)}."]
        return errors

    def validate(self, schema_name: str, annotation: Any) -> list[str]:
        """Validate one annotation; returns error strings naming the bad field (``[]`` if valid).

        Args:
            schema_name: Registered schema name (``KeyError`` if unknown).
            annotation: The annotation dict as posted (nested points).
        """
        return list(_flatten_errors(self.marshmallow_errors(schema_name, annotation)))

    # ------------------------------------------------------------------ JSON Schema
    def json_schema(self, name: str) -> dict[str, Any]:
        """The draft-07 JSON Schema of ``name`` in marshmallow-jsonschema's layout."""
        spec = self._specs[name]
        definitions: dict[str, Any] = {}
        props: dict[str, Any] = {"valid": {"title": "valid", "type": ["boolean", "null"]}}
        required: list[str] = []
        for f in spec.fields:
            if f.kind in (BOUND, POINT):
                cls = "BoundSpatialPoint" if f.kind == BOUND else "SpatialPoint"
                definitions[cls] = _point_definition(bound=f.kind == BOUND)
                props[f.name] = {"type": "object", "$ref": f"#/definitions/{cls}"}
            else:
                props[f.name] = _scalar_schema(f)
            if f.required:
                required.append(f.name)
        definitions[spec.class_name] = {
            "type": "object",
            "properties": props,
            "required": sorted(required),
            "additionalProperties": True,
        }
        return {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": definitions,
            "$ref": f"#/definitions/{spec.class_name}",
        }


_POINT_KEYS = frozenset({"position"})
_BOUND_POINT_KEYS = frozenset({"position", "supervoxel_id", "root_id"})


def _point_errors(value: Any, bound: bool) -> Any:
    if not isinstance(value, dict):
        return {"_schema": ["Invalid input type."]}
    errors: dict[str, Any] = {}
    allowed = _BOUND_POINT_KEYS if bound else _POINT_KEYS
    for key in value:
        if key not in allowed:
            errors[key] = ["Unknown field."]
    pos = value.get("position")
    if pos is None:
        errors["position"] = [_MISSING]
    elif not isinstance(pos, list | tuple) or len(pos) != 3 or not all(map(_is_number, pos)):
        errors["position"] = ["Position must have exactly 3 numbers."]
    if bound:
        for key in ("supervoxel_id", "root_id"):
            v = value.get(key)
            if v is not None and not _is_int(v):
                errors[key] = [_TYPE_MSG["int"]]
    return errors


def _flatten_errors(errors: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, val in errors.items():
        path = f"{prefix}{key}"
        if isinstance(val, dict):
            out.extend(_flatten_errors(val, path + "."))
        else:
            out.extend(f"{path}: {msg}" for msg in val)
    return out


def _point_definition(bound: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "position": {
            "title": "position",
            "type": "array",
            "description": "spatial position in voxels of x,y,z of annotation",
            "items": {"type": "number"},
            "minItems": 3,
            "maxItems": 3,
        }
    }
    if bound:
        props["supervoxel_id"] = {
            "title": "supervoxel_id",
            "type": ["integer", "null"],
            "description": "supervoxel id of this point",
        }
        props["root_id"] = {
            "title": "root_id",
            "type": ["integer", "null"],
            "description": "root id of the bound point",
        }
    return {
        "type": "object",
        "properties": props,
        "required": ["position"],
        "additionalProperties": False,
    }


def _scalar_schema(f: FieldSpec) -> dict[str, Any]:
    base = {
        "int": "integer",
        "bigint": "integer",
        "target_id": "integer",
        "user_id": "integer",
        "float": "number",
        "str": "string",
        "bool": "boolean",
    }[f.kind]
    out: dict[str, Any] = {"title": f.name, "type": base if f.required else [base, "null"]}
    if f.kind == "float":
        out["format"] = "float"
    if f.choices is not None:
        out["enum"] = list(f.choices)
    return out


# ------------------------------------------------------------------------------ routes
router = APIRouter()


@router.get("/schema/versions")
def schema_versions() -> list[int]:
    """Supported schema API versions."""
    return [2]


@router.get("/schema/api/v2/type")
def schema_types(request: Request) -> list[str]:
    """Names of all schemas."""
    return request.app.state.world.schemas.names()


@router.get("/schema/api/v2/type/{schema_type}")
def schema_definition(schema_type: str, request: Request) -> JSONResponse:
    """JSON Schema of one schema (404 if unknown)."""
    reg: SchemaRegistry = request.app.state.world.schemas
    if schema_type not in reg:
        raise CaveHTTPError(404, f"Schema {schema_type} not found")
    return JSONResponse(reg.json_schema(schema_type))


@router.post("/schema/api/v2/types")
def schema_definition_multi(
    request: Request, schema_names: str = Query(..., description="comma-separated names")
) -> JSONResponse:
    """JSON Schemas of several schemas (names in the query string)."""
    reg: SchemaRegistry = request.app.state.world.schemas
    names = [n for n in schema_names.split(",") if n]
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise CaveHTTPError(404, f"Schema {unknown[0]} not found")
    return JSONResponse({n: reg.json_schema(n) for n in names})


@router.get("/schema/api/v2/types_all")
def schema_definition_all(request: Request) -> JSONResponse:
    """JSON Schemas of every schema."""
    reg: SchemaRegistry = request.app.state.world.schemas
    return JSONResponse({n: reg.json_schema(n) for n in reg.names()})
