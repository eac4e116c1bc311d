"""CAVE annotation rows: the one home of the row rules.

Staging (`prefect_neurodata.clients.cave.tools.stage`), the annotation client's write paths
(`prefect_neurodata.clients.cave.annotationengine`) and the annotation upload flow all call this
module; none of them spells a row rule itself. The rules:

* **Schema fields** (`SchemaFields`): which properties of the schema service's JSON Schema are
  points (``{"position": [x, y, z]}``, bound points also carry ``supervoxel_id``/``root_id``),
  which are scalars and which are required. Flat rows spell a point ``pt`` as ``pt_position``
  (a list, or ``"x,y,z"`` text), ``pt_position_x/_y/_z``, ``pt_supervoxel_id``, ``pt_root_id``.
* **Flat to nested** (`nest_row`, `typed_row` for CSV text): the nested dict the annotation engine
  takes.
* **Values the service can store** (`value_problems`, `check_sendable`, `check_array`): JSON has
  no ``inf``/``NaN`` (orjson would silently write ``null``), so numbers must be finite; ids,
  supervoxel ids and root ids are BigInteger (int64) columns, so integers must lie in
  ``[-2**63, 2**63)`` (ids and segment ids in ``[0, 2**63)``, annotation ids from 1); a single
  text value may hold at most `MAX_VALUE_CHARS` characters.
* **Types** (`check_rows`): JSON Schema draft 7 as ``jsonschema`` checks it, with an exact fast
  path (`fast_validator`) for the simple schemas CAVE serves; every problem names its row, field
  and value (long values shortened by `shorten`), in one `AnnotationValidationError`.
* **Chunks** (`chunk_ranges`): at most `MAX_ANNOTATIONS_PER_REQUEST` rows per request.

Example:
    ```python
    from prefect_neurodata.clients.cave.annotation_rows import SchemaFields, check_rows, nest_row

    fields = SchemaFields.from_schema(client.schema.schema_definition("bound_tag"))
    flat = [{"pt_position": "1,2,3", "tag": "a"}, {"pt_position": [1, 2, float("inf")], "tag": "b"}]
    problems = check_rows(flat, [nest_row(r, fields) for r in flat], fields, "insert", 1, set())
    assert [(p.row, p.field) for p in problems] == [(2, "pt_position")]
    ```
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jsonschema
import numpy as np

from prefect_neurodata.constants import MAX_ANNOTATIONS_PER_REQUEST
from prefect_neurodata.errors import NeurodataError

__all__ = [
    "ANNOTATION_ID_RANGE",
    "AnnotationValidationError",
    "INT64_RANGE",
    "MAX_ANNOTATIONS_PER_REQUEST",
    "MAX_VALUE_CHARS",
    "RowProblem",
    "SEGMENT_ID_RANGE",
    "SchemaFields",
    "check_annotation_id",
    "check_array",
    "check_rows",
    "check_sendable",
    "chunk_ranges",
    "fast_validator",
    "fingerprint",
    "flat_fingerprint",
    "nest_row",
    "raise_problems",
    "shorten",
    "typed_row",
    "value_problems",
]

INT64_RANGE = range(-(2**63), 2**63)
"""Integers a BigInteger (int64) column holds."""

SEGMENT_ID_RANGE = range(0, 2**63)
"""Supervoxel and root ids: unsigned node ids stored in int64 columns."""

ANNOTATION_ID_RANGE = range(1, 2**63)
"""Annotation ids: assigned from 1, stored as int64."""

MAX_VALUE_CHARS = 1_000_000
"""Longest text value of one field: a chunk of 10,000 rows must still fit in one request."""

MAX_REPORTED = 50
"""Problems spelled out in an `AnnotationValidationError` message (all are in ``problems``)."""

SPATIAL_POINT_CLASSES = ("SpatialPoint", "BoundSpatialPoint")
_SEGMENT_KEYS = ("supervoxel_id", "root_id")


def shorten(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the full length said.

    Example:
        ```python
        shorten("x" * 20_000)  # "'xxxxxxxxxx...' (20,002 characters)"
        ```
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with the input.

    Attributes:
        row: Row number (data rows counted from 1 in the flow, positions or index labels in the
            client and stage), or None for a problem of a column or of the whole input.
        field: The flat field (``pt_position``, ``size``, ``id``...).
        value: The offending value, shortened (`shorten`).
        problem: What is wrong with it.
    """

    row: Any
    field: str
    value: str
    problem: str

    def model_dump(self) -> dict[str, Any]:
        """The problem as a plain dict (one row of a report table)."""
        return asdict(self)

    def __str__(self) -> str:
        if self.row is None:
            return f"column {self.field}: {self.problem}"
        return f"row {self.row}: {self.field} = {self.value}: {self.problem}"


class AnnotationValidationError(jsonschema.ValidationError, ValueError, NeurodataError):
    """Annotation rows that do not match the schema or cannot be stored; nothing was written.

    It is a `jsonschema.ValidationError` (what the seed's staging raises) and a `ValueError`.

    Attributes:
        row: The (first) row at fault, or None.
        field: The (first) flat field at fault, or None.
        value: The (first) offending value, shortened, or None.
        problems: Every problem found (`RowProblem`), in input order.
    """

    def __init__(
        self,
        message: str,
        *,
        row: Any = None,
        field: str | None = None,
        value: str | None = None,
        problems: Sequence[RowProblem] = (),
    ) -> None:
        super().__init__(message)
        self.problems = list(problems)
        first = self.problems[0] if self.problems else None
        self.row = row if row is not None or first is None else first.row
        self.field = field if field is not None or first is None else first.field
        self.value = value if value is not None or first is None else first.value


def raise_problems(problems: Sequence[RowProblem], where: str) -> None:
    """Raise one `AnnotationValidationError` listing ``problems`` (the first `MAX_REPORTED`).

    Args:
        problems: What is wrong; nothing is raised when empty.
        where: What the rows are, e.g. ``"synapses.csv for table 'syn' (schema 'synapse')"``.
    """
    if not problems:
        return
    shown = "\n  ".join(str(p) for p in problems[:MAX_REPORTED])
    more = len(problems) - MAX_REPORTED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise AnnotationValidationError(
        f"{len(problems)} problem(s) in {where}; nothing was written:\n  {shown}{tail}",
        problems=problems,
    )


# ------------------------------------------------------------------------------ schema fields
def _ref_name(spec: Mapping[str, Any]) -> str | None:
    ref = spec.get("$ref")
    if ref is None:
        refs = [s for s in [*spec.get("allOf", []), *spec.get("anyOf", [])] if "$ref" in s]
        ref = refs[0]["$ref"] if refs else None
    return None if ref is None else str(ref).rsplit("/", 1)[-1]


@dataclass
class SchemaFields:
    """The fields of an annotation schema (the schema service's JSON Schema), as rows need them.

    Attributes:
        schema: The JSON Schema itself.
        points: Point properties -> whether they are bound (carry supervoxel and root ids).
        scalars: Other properties -> their JSON Schema ``type`` (None when not simply typed).
        required: Required properties.
        order: Every property, in the schema's order.
    """

    schema: dict[str, Any]
    points: dict[str, bool] = field(default_factory=dict)
    scalars: dict[str, Any] = field(default_factory=dict)
    required: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)

    @classmethod
    def from_schema(cls, schema: dict[str, Any]) -> SchemaFields:
        """Read the fields of the schema service's JSON Schema."""
        definitions = schema.get("definitions", {})
        root = definitions.get(str(schema.get("$ref", "")).rsplit("/", 1)[-1], schema)
        out = cls(schema=schema, required=set(root.get("required", [])))
        for name, prop in root.get("properties", {}).items():
            out.order.append(name)
            target_name = _ref_name(prop)
            target = definitions.get(target_name, {}) if target_name else None
            props = (target or {}).get("properties", {})
            if target_name in SPATIAL_POINT_CLASSES or (target is not None and "position" in props):
                out.points[name] = "supervoxel_id" in props or target_name == "BoundSpatialPoint"
            else:
                out.scalars[name] = prop.get("type")
        return out

    def flat_name(self, prop: str) -> str:
        """The flat field name of a property (``pt`` -> ``pt_position``)."""
        return f"{prop}_position" if prop in self.points else prop

    @property
    def numeric_columns(self) -> frozenset[str]:
        """Flat columns that always hold numbers (ids and coordinates)."""
        names = {"id"}
        for pt in self.points:
            names |= {f"{pt}_position_{a}" for a in "xyz"}
            names |= {f"{pt}_supervoxel_id", f"{pt}_root_id"}
        return frozenset(names)

    def columns(self) -> set[str]:
        """Every flat column name a source may use."""
        names = set(self.scalars)
        for pt, bound in self.points.items():
            names |= {f"{pt}_position", *(f"{pt}_position_{a}" for a in "xyz")}
            if bound:
                names |= {f"{pt}_supervoxel_id", f"{pt}_root_id"}
        return names


# ------------------------------------------------------------------------------ flat -> nested
def _missing_value(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _is_none(value: Any) -> bool:
    return value is None


def parse_position(value: Any) -> Any:
    """A position as a list: ``"x,y,z"`` / ``"[x, y, z]"`` text, tuples and arrays converted.

    Text that is not numbers is returned as it is (the type check reports it).
    """
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        parts = [p for p in re.split(r"[,\s;]+", text) if p]
        try:
            return [float(p) if "." in p or "e" in p.lower() else int(p) for p in parts]
        except ValueError:
            return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return list(value) if isinstance(value, tuple) else value


def _json_number(value: Any) -> Any:
    """Plain JSON numbers: integral floats as ints (ids read as floats), numpy as Python."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        try:
            return value.item()
        except (AttributeError, ValueError):
            return value
    return value


def _same(value: Any) -> Any:
    return value


def nest_row(flat: Mapping[str, Any], fields: SchemaFields, *, convert: bool = True) -> dict:
    """A flat (or already nested) row as the nested dict the annotation engine takes.

    Args:
        flat: The row (see the module docstring for the flat spellings).
        fields: The schema's fields.
        convert: Turn integral floats into ints and numpy values into Python ones (what file
            sources need); False keeps values as given (staging sends what the user added).
    """
    plain: Callable[[Any], Any] = _json_number if convert else _same
    # Staged values were cleaned when added: only None is missing there ("" is a string).
    _missing = _missing_value if convert else _is_none
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in fields.points and isinstance(value, Mapping):
            out[key] = {k: plain(v) for k, v in value.items() if not _missing(v)}
    for pt, bound in fields.points.items():
        if pt in out:
            continue
        point: dict[str, Any] = {}
        if f"{pt}_position" in flat and not _missing(flat[f"{pt}_position"]):
            position = flat[f"{pt}_position"]
            point["position"] = parse_position(position) if convert else position
        elif any(f"{pt}_position_{a}" in flat for a in "xyz"):
            coords = [flat.get(f"{pt}_position_{a}") for a in "xyz"]
            if not all(_missing(c) for c in coords):
                point["position"] = [None if _missing(c) else plain(c) for c in coords]
        if bound:
            for extra in _SEGMENT_KEYS:
                value = flat.get(f"{pt}_{extra}")
                if not _missing(value):
                    point[extra] = plain(value)
        if point:
            out[pt] = point
    for name in fields.scalars:
        if name in flat and not _missing(flat[name]):
            out[name] = plain(flat[name])
    if "id" in flat and not _missing(flat["id"]):
        out["id"] = plain(flat["id"])
    return out


_INT = re.compile(r"^[+-]?\d+$")
# ``inf`` is read as a number so that it is reported as not finite; ``nan`` stays text (a
# number column given "nan" is reported as not a number, never dropped as a missing value).
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?inf(inity)?$", re.I)


def typed_row(flat: Mapping[str, Any], fields: SchemaFields) -> dict[str, Any]:
    """CSV text values as the JSON types the schema declares (others left for the checks).

    ``1e400`` and ``inf`` become float infinity (and are then reported as not finite).
    """
    out: dict[str, Any] = {}
    numeric_columns = fields.numeric_columns
    for key, value in flat.items():
        if isinstance(value, str):
            text = value.strip()
            types = fields.scalars.get(key)
            types = types if isinstance(types, list) else [types]
            numeric = key in numeric_columns
            if text == "":
                value = None
            elif (numeric or "integer" in types) and _INT.match(text):
                value = int(text)
            elif (numeric or "number" in types) and _FLOAT.match(text):
                value = float(text)
            elif "boolean" in types and text.lower() in ("true", "false", "1", "0"):
                value = text.lower() in ("true", "1")
        out[key] = value
    return out


# ------------------------------------------------------------------------------ storable values
def _number_problem(value: Any, allowed: range = INT64_RANGE) -> str | None:
    """Why a JSON number cannot be stored, or None (not numbers: None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number (JSON has no inf/NaN)"
    if isinstance(value, int) and value not in allowed:
        return f"must be an integer in [{allowed.start}, {allowed.stop - 1}]"
    return None


def value_problems(record: Mapping[str, Any], row: Any) -> list[RowProblem]:
    """What in one nested annotation the service cannot store (see the module docstring)."""
    problems: list[RowProblem] = []
    for key, value in record.items():
        if isinstance(value, Mapping):
            for sub, item in value.items():
                name = f"{key}_{sub}"
                if sub == "position" and isinstance(item, (list, tuple)):
                    why = next(filter(None, (_number_problem(c) for c in item)), None)
                elif sub in _SEGMENT_KEYS:
                    why = _number_problem(item, SEGMENT_ID_RANGE)
                else:
                    why = _number_problem(item)
                if why:
                    problems.append(RowProblem(row, name, shorten(item), why))
            continue
        if key == "id":
            why = _number_problem(value, ANNOTATION_ID_RANGE)
        elif isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            why = f"is {len(value):,} characters long; at most {MAX_VALUE_CHARS:,} are accepted"
        else:
            why = _number_problem(value)
        if why:
            problems.append(RowProblem(row, key, shorten(value), why))
    return problems


def _walk_problem(value: Any, depth: int = 0) -> str | None:
    if isinstance(value, (float, int)):
        return _number_problem(value)
    if isinstance(value, str):
        return None
    if depth < 4 and isinstance(value, Mapping):
        return next(filter(None, (_walk_problem(v, depth + 1) for v in value.values())), None)
    if depth < 4 and isinstance(value, (list, tuple)):
        return next(filter(None, (_walk_problem(v, depth + 1) for v in value)), None)
    if isinstance(value, np.generic):
        return _walk_problem(value.item(), depth)
    return None


def check_sendable(records: Sequence[Mapping[str, Any]], what: str, first: int = 0) -> None:
    """Fail on the first value of nested annotations that JSON or the service cannot carry.

    Used by the client's write paths before the first request (no schema needed): numbers
    must be finite, integers in the int64 range, ids and segment ids as `value_problems` says.

    Raises:
        AnnotationValidationError: Naming the annotation (``first`` + position), field and value.
    """
    for offset, record in enumerate(records):
        if not isinstance(record, Mapping):
            continue
        problems = value_problems(record, first + offset)
        if not problems:
            # Values nested deeper than a point (lists in scalar fields...).
            for key, value in record.items():
                why = _walk_problem(value)
                if why:
                    problems = [RowProblem(first + offset, key, shorten(value), why)]
                    break
        if problems:
            p = problems[0]
            raise AnnotationValidationError(
                f"{what}: annotation {p.row}: field {p.field!r} = {p.value} {p.problem}; "
                "nothing was written",
                problems=problems,
            )


def check_annotation_id(value: Any, row: Any, what: str) -> int:
    """An annotation id as an int, or `AnnotationValidationError` naming row and value."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise AnnotationValidationError(
            f"{what}: annotation {row} needs an integer 'id', got {shorten(value)}",
            problems=[RowProblem(row, "id", shorten(value), "needs an integer id")],
        )
    ident = int(value)
    if ident not in ANNOTATION_ID_RANGE:
        why = f"must be an integer in [1, {2**63 - 1}]"
        raise AnnotationValidationError(
            f"{what}: annotation {row}: id {ident} {why}",
            problems=[RowProblem(row, "id", str(ident), why)],
        )
    return ident


def check_array(values: np.ndarray, field: str, labels: Sequence[Any], what: str) -> None:
    """Fail on the first cell of a numeric column (or ``(n, 3)`` positions) that cannot be sent.

    Floats must be finite (NaN marks a missing value only outside positions: pass
    ``values`` without the missing cells); unsigned integers must fit int64.

    Raises:
        AnnotationValidationError: Naming the row label, field and value.
    """
    kind = values.dtype.kind
    if kind == "f":
        bad = ~np.isfinite(values)
        why = "must be a finite number (JSON has no inf/NaN)"
    elif kind == "u" and values.size and values.max() > INT64_RANGE.stop - 1:
        bad = values > INT64_RANGE.stop - 1
        why = f"must be an integer in [0, {INT64_RANGE.stop - 1}] (stored as int64)"
    else:
        return
    if not bad.any():
        return
    index = int(np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))[0])
    value = values[index].tolist()
    raise AnnotationValidationError(
        f"{what}column {field!r}, row {labels[index]!r}: {shorten(value)} {why}; "
        "nothing was written",
        problems=[RowProblem(labels[index], field, shorten(value), why)],
    )


# ------------------------------------------------------------------------------ types
_SIMPLE_TYPES = frozenset({"string", "number", "integer", "boolean", "null"})
_DOC_KEYS = frozenset({"title", "description", "format"})


def _type_ok(value: Any, types: Sequence[str]) -> bool:
    """JSON Schema (draft 7) type check as ``jsonschema`` does it, plus storable numbers."""
    for kind in types:
        if kind == "null":
            if value is None:
                return True
        elif kind == "boolean":
            if isinstance(value, bool):
                return True
        elif isinstance(value, bool):
            continue
        elif kind == "number":
            if isinstance(value, (int, float)):
                return _number_problem(value) is None
        elif kind == "integer":
            if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
                return _number_problem(value) is None
        elif kind == "string" and isinstance(value, str):
            return len(value) <= MAX_VALUE_CHARS
    return False


def _types_of(spec: Mapping[str, Any]) -> list[str] | None:
    """The allowed types of a property using only ``type`` (and doc keys), else None."""
    if set(spec) - _DOC_KEYS - {"type"} or "type" not in spec:
        return None
    types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    return types if set(types) <= _SIMPLE_TYPES else None


def fast_validator(schema: Mapping[str, Any]) -> Callable[[Mapping[str, Any], bool], bool] | None:
    """An exact, fast validity test for the simple schemas CAVE serves, or None.

    Covers objects whose properties are simply typed scalars or ``$ref``s to point
    definitions (a 3-number ``position`` plus simply typed ids, no extra keys). It returns
    True only when ``jsonschema`` would accept the row *and* its values can be stored
    (`value_problems`); rows it rejects (and schemas using anything else) go through
    ``jsonschema`` and `value_problems` for exact messages.
    """
    definitions = schema.get("definitions", {})
    root = definitions.get(str(schema.get("$ref", "")).rsplit("/", 1)[-1], schema)
    if set(root) - {"type", "properties", "required", "additionalProperties"} - _DOC_KEYS:
        return None
    extra_ok = root.get("additionalProperties", True) is not False
    required = list(root.get("required", []))
    scalars: dict[str, list[str]] = {}
    points: dict[str, tuple[int, dict[str, list[str]], list[str]]] = {}
    for name, prop in root.get("properties", {}).items():
        if "$ref" in prop:
            target = definitions.get(str(prop["$ref"]).rsplit("/", 1)[-1])
            if not target or target.get("additionalProperties") is not False:
                return None
            if set(target) - {"type", "properties", "required", "additionalProperties"}:
                return None
            position = target.get("properties", {}).get("position", {})
            size = position.get("minItems")
            if (
                set(position) - _DOC_KEYS - {"type", "items", "minItems", "maxItems"}
                or position.get("type") != "array"
                or position.get("items") != {"type": "number"}
                or size is None
                or position.get("maxItems") != size
            ):
                return None
            others: dict[str, list[str]] = {}
            for key, spec in target["properties"].items():
                if key == "position":
                    continue
                types = _types_of(spec)
                if types is None:
                    return None
                others[key] = types
            points[name] = (int(size), others, list(target.get("required", [])))
        else:
            types = _types_of(prop)
            if types is None:
                return None
            scalars[name] = types

    def valid(row: Mapping[str, Any], enforce_required: bool = True) -> bool:
        if enforce_required and any(name not in row for name in required):
            return False
        for key, value in row.items():
            if key in points:
                size, others, needed = points[key]
                if not isinstance(value, dict) or any(k not in value for k in needed):
                    return False
                for sub, item in value.items():
                    if sub == "position":
                        if (
                            not isinstance(item, list)
                            or len(item) != size
                            or not all(_type_ok(x, ("number",)) for x in item)
                        ):
                            return False
                    elif (
                        sub not in others
                        or not _type_ok(item, others[sub])
                        or sub in _SEGMENT_KEYS
                        and isinstance(item, int)
                        and item < 0
                    ):
                        return False
            elif key in scalars:
                if not _type_ok(value, scalars[key]):
                    return False
            elif not extra_ok or _walk_problem(value) is not None:
                return False
        return True

    return valid


def _field_of(error: jsonschema.ValidationError, fields: SchemaFields) -> tuple[str, Any]:
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = [p for p in error.validator_value if p not in (error.instance or {})]
        name = missing[0] if missing else "?"
        if path:
            return f"{path[0]}_{name}", None
        return fields.flat_name(name), None
    if not path:
        return "(row)", error.instance
    head = str(path[0])
    if head in fields.points and len(path) > 1:
        return f"{head}_{path[1]}", error.instance
    return head, error.instance


def schema_problems(
    body: Mapping[str, Any],
    fields: SchemaFields,
    row: Any,
    *,
    partial: bool = False,
    validator: jsonschema.Draft7Validator | None = None,
) -> list[RowProblem]:
    """Schema (``jsonschema``) and storable-value problems of one nested annotation.

    Args:
        body: The nested annotation (without ``id``).
        fields: The schema's fields.
        row: The row to name in the problems.
        partial: An update, which may leave required fields out (the server merges the old row).
        validator: A prepared validator of ``fields.schema`` (built when None).
    """
    validator = validator or jsonschema.Draft7Validator(fields.schema)
    problems: list[RowProblem] = []
    errors = sorted(validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        if partial and error.validator == "required" and not error.absolute_path:
            continue
        name, value = _field_of(error, fields)
        problems.append(RowProblem(row, name, shorten(value), error.message))
    known = {p.field for p in problems}
    problems += [p for p in value_problems(body, row) if p.field not in known]
    return problems


def check_rows(
    rows: Sequence[Mapping[str, Any]],
    nested: Sequence[dict[str, Any]],
    fields: SchemaFields,
    mode: str,
    first_row: int,
    seen_ids: set[int],
) -> list[RowProblem]:
    """Every problem of a batch of rows (row numbers from ``first_row``).

    ``mode`` ``insert`` checks the whole schema; ``update`` needs a unique annotation id and
    checks the fields given; ``delete`` needs only a unique annotation id. ``seen_ids`` carries
    the ids met so far across batches (duplicates are reported).
    """
    validator = jsonschema.Draft7Validator(fields.schema)
    fast = fast_validator(fields.schema)
    problems: list[RowProblem] = []
    for offset, (flat, record) in enumerate(zip(rows, nested, strict=True)):
        number = first_row + offset
        if mode in ("update", "delete"):
            problems += _id_problems(flat, record, mode, number, seen_ids)
        if mode == "delete":
            continue
        body = {k: v for k, v in record.items() if k != "id"}
        if fast is not None and fast(body, mode != "update"):
            continue
        problems += schema_problems(
            body, fields, number, partial=mode == "update", validator=validator
        )
    return problems


def _id_problems(
    flat: Mapping[str, Any], record: Mapping[str, Any], mode: str, row: int, seen: set[int]
) -> list[RowProblem]:
    ident = record.get("id")
    if not isinstance(ident, int) or isinstance(ident, bool) or ident not in ANNOTATION_ID_RANGE:
        return [
            RowProblem(
                row,
                "id",
                shorten(flat.get("id")),
                f"{mode} needs the positive integer id (below 2**63) of an existing row",
            )
        ]
    if ident in seen:
        return [RowProblem(row, "id", str(ident), "duplicate id")]
    seen.add(ident)
    return []


# ------------------------------------------------------------------------------ content
def _norm(value: Any) -> Any:
    """A comparable form of a value (numbers as floats, lists as tuples)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    return value


def fingerprint(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies an annotation's content: its fields as the server stores them.

    Nested points contribute their position only (supervoxel and root ids are looked up by the
    server, not stored from the request).
    """
    items: list[tuple[str, Any]] = []
    for key, value in record.items():
        if key in ("id", "valid"):
            continue
        if isinstance(value, Mapping):
            if "position" in value:
                items.append((f"{key}_position", _norm(value["position"])))
            continue
        items.append((key, _norm(value)))
    return tuple(sorted(items))


def flat_fingerprint(row: Mapping[str, Any], keys: set[str]) -> tuple[Any, ...]:
    """The `fingerprint` of a flat row as the service returns it, over ``keys``."""
    return tuple(sorted((k, _norm(row.get(k))) for k in keys))


# ------------------------------------------------------------------------------ chunks
def chunk_ranges(n: int, size: int = MAX_ANNOTATIONS_PER_REQUEST) -> list[range]:
    """Consecutive row ranges of at most ``size`` (1 to `MAX_ANNOTATIONS_PER_REQUEST`) rows."""
    if not 0 < size <= MAX_ANNOTATIONS_PER_REQUEST:
        raise ValueError(
            f"batch_size must be between 1 and {MAX_ANNOTATIONS_PER_REQUEST}, got {size}"
        )
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def id_list(values: Iterable[Any], what: str) -> list[int]:
    """Annotation ids as ints, each checked (`check_annotation_id`)."""
    return [check_annotation_id(v, i, what) for i, v in enumerate(values)]
