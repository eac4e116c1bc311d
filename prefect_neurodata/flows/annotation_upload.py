"""Flow 4: upload annotations to a CAVE table, validated first, exactly once, resumable.

Given a datastack, a table (created with its schema and metadata when missing) and a source
(a CSV or Parquet file, local or ``s3://``, or records in the parameters), the flow:

1. checks the token's ``edit`` permission and the table's write permission, reads the table's
   schema from the schema service, and validates **every** row against it, reporting every
   bad row (row number, field, value, problem), before anything is written;
2. creates the table when it is missing (from ``create``);
3. sends the rows in chunks of at most 10,000, one task per chunk, in ``insert``, ``update``
   (rows carry the ``id`` to replace) or ``delete`` (rows carry the ``id`` to delete) mode;
4. publishes counts, the id mapping (a table artifact, plus a CSV file for all of it) and
   returns a typed summary.

Source rows are flat: scalar fields by name, points as ``<pt>_position`` (a list, or a string
``"x,y,z"`` / ``"[x, y, z]"`` in CSV) or ``<pt>_position_x/_y/_z``, optionally
``<pt>_supervoxel_id`` / ``<pt>_root_id``. Records may also be nested
(``{"pt": {"position": [x, y, z]}}``). Row numbers in reports count data rows from 1.

**Exactly once.** Every upload has a durable ledger: a directory named after a content hash
of the source plus datastack, table, mode and chunk size (so the same upload always finds the
same ledger), next to the source (``.neurodata-ledger/``) or under ``ledger_location``. Before
a chunk is sent its entry is written ``pending`` (with the table's live row count for
inserts); once the server has answered, ``done`` with the new ids. A rerun skips ``done``
chunks. A chunk left ``pending`` was sent by a run whose answer was lost (a dropped connection,
a gateway error after the server committed, or a run killed mid-request); it is never resent
blindly: the task first finds out what landed. Inserts: if the live count did not move, nothing
landed and the chunk is resent; if it grew by exactly the chunk's size, the rows are fetched at
the ids the server assigns next (``id_hint``) and compared field by field with the chunk, and
if they match their ids are recorded without resending; anything else (another writer changed
the table meanwhile) stops with `ChunkReconcileError` rather than risk a duplicate. Updates:
old rows that already carry a ``superceded_id`` landed (that is their new id); only the rest
are resent. Deletes: rows already stamped ``deleted`` landed; only the rest are resent.

Example:
    ```python
    from prefect_neurodata.flows.annotation_upload import (
        AnnotationUploadRequest, NewTable, upload_annotations,
    )

    summary = upload_annotations(
        AnnotationUploadRequest(
            datastack="minnie65_public",
            table="my_synapses",
            source="s3://lab-bucket/annotations/synapses.parquet",
            create=NewTable(schema_type="synapse", description="Manual synapses [A.B.]",
                            voxel_resolution=[4, 4, 40]),
        ),
        cave_block="neurodata-cave",
    )
    print(summary.rows, summary.id_map)
    ```
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pyarrow as pa
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from pydantic import BaseModel, Field, field_validator, model_validator

from prefect_neurodata.clients.http import dumps
from prefect_neurodata.errors import NeurodataError
from prefect_neurodata.flows._artifacts import in_flow_run, publish_table
from prefect_neurodata.tasks import _storage as storage
from prefect_neurodata.tasks.cave import (
    MAX_CHUNK,
    CaveInputError,
    CavePermissionError,
    check_cave_access,
    create_annotation_table,
    get_annotation_schema,
    get_annotation_table,
    load_cave,
    read_ledger_entry,
    table_permission_problem,
    upload_annotation_chunk,
)

DEFAULT_CAVE_BLOCK = "neurodata-cave"
ARTIFACT_KEY = "cave-annotation-upload"
LEDGER_DIRNAME = ".neurodata-ledger"
MAX_REPORTED = 50
"""Problems spelled out in the exception message (all of them go to the artifact)."""

_TABLE_NAME = re.compile(r"^[a-z_]+[a-z0-9_]*$")


class NewTable(BaseModel):
    """How to create the table when it does not exist."""

    schema_type: str = Field(description="Annotation schema, e.g. synapse or cell_type_local.")
    description: str = Field(min_length=1, description="What the table holds and who made it.")
    voxel_resolution: list[float] = Field(
        default_factory=lambda: [4.0, 4.0, 40.0],
        description="nm per voxel of the positions in the source.",
    )
    reference_table: str | None = Field(
        default=None, description="Target table of a reference schema."
    )
    read_permission: Literal["PUBLIC", "GROUP", "PRIVATE"] = Field(
        default="PUBLIC", description="Who may read the table."
    )
    write_permission: Literal["PUBLIC", "GROUP", "PRIVATE"] = Field(
        default="PRIVATE", description="Who may write to the table."
    )
    notice_text: str | None = Field(default=None, description="Notice shown to readers.")

    @field_validator("voxel_resolution")
    @classmethod
    def _resolution(cls, value: list[float]) -> list[float]:
        if len(value) != 3 or not all(x > 0 and math.isfinite(x) for x in value):
            raise ValueError(f"voxel_resolution must be three positive numbers, got {value}")
        return value


class AnnotationUploadRequest(BaseModel):
    """What to upload, where to, and how."""

    table: str = Field(description="Annotation table (lower-case letters, digits, _).")
    datastack: str | None = Field(
        default=None, description="Datastack; None uses the CAVE block's datastack."
    )
    mode: Literal["insert", "update", "delete"] = Field(
        default="insert",
        description="insert new rows, update rows by id, or delete rows by id.",
    )
    source: str | None = Field(
        default=None, description="CSV or Parquet file: local path or s3:// URI."
    )
    records: list[dict[str, Any]] | None = Field(
        default=None, description="Rows given inline (small uploads; parameters cap at 512 KB)."
    )
    create: NewTable | None = Field(
        default=None, description="Table definition, used when the table does not exist."
    )
    chunk_size: int = Field(
        default=MAX_CHUNK, ge=1, le=MAX_CHUNK, description="Rows per request (at most 10,000)."
    )
    ledger_location: str | None = Field(
        default=None,
        description="Directory (local or s3://) for the upload ledger; default next to the "
        "source, or NEURODATA_LEDGER_DIR / ~/.neurodata/ledgers for inline records.",
    )

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError(
                f"table {value!r} is invalid: use lower-case letters, digits and underscores, "
                "starting with a letter or underscore"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> AnnotationUploadRequest:
        if (self.source is None) == (self.records is None):
            raise ValueError("give exactly one of source (a file or URI) and records")
        if self.source is not None and not _format_of(self.source):
            raise ValueError(f"source {self.source!r}: expected a .csv, .csv.gz or .parquet file")
        return self


class UploadProblem(BaseModel):
    """One thing wrong with the input (row None: about a column or the whole source)."""

    row: int | None
    field: str
    value: str
    problem: str


class AnnotationUploadSummary(BaseModel):
    """What an upload run did."""

    datastack: str
    table: str
    mode: str
    rows: int
    chunks: int
    chunks_sent: int
    chunks_skipped: int = Field(description="Chunks a previous run had already finished.")
    chunks_resumed: int = Field(description="Chunks whose lost answer was reconciled.")
    table_created: bool
    ledger: str
    id_map: str | None = Field(description="CSV of source row -> id (or old id -> new id).")


class AnnotationValidationError(ValueError, NeurodataError):
    """The input has problems; nothing was written. ``problems`` lists every one."""

    def __init__(self, message: str, problems: list[UploadProblem]) -> None:
        super().__init__(message)
        self.problems = problems


# ------------------------------------------------------------------------------ the schema
@dataclass
class SchemaFields:
    """The fields of an annotation schema, as a flat-row reader needs them."""

    schema: dict[str, Any]
    points: dict[str, bool] = field(default_factory=dict)  # name -> bound (has ids)
    scalars: dict[str, Any] = field(default_factory=dict)  # name -> JSON types
    required: set[str] = field(default_factory=set)

    @classmethod
    def from_schema(cls, schema: dict[str, Any]) -> SchemaFields:
        """Read the fields of the schema service's JSON Schema."""
        definitions = schema.get("definitions", {})
        root = definitions.get(str(schema.get("$ref", "")).rsplit("/", 1)[-1], schema)
        out = cls(schema=schema, required=set(root.get("required", [])))
        for name, prop in root.get("properties", {}).items():
            ref = str(prop.get("$ref", "")).rsplit("/", 1)[-1]
            target = definitions.get(ref) if ref else None
            if target is not None and "position" in target.get("properties", {}):
                out.points[name] = "supervoxel_id" in target.get("properties", {})
            else:
                out.scalars[name] = prop.get("type")
        return out

    @property
    def numeric_columns(self) -> frozenset[str]:
        """Flat columns that always hold numbers (ids and coordinates)."""
        cached = getattr(self, "_numeric", None)
        if cached is None:
            names = {"id"}
            for pt in self.points:
                names |= {f"{pt}_position_{a}" for a in "xyz"}
                names |= {f"{pt}_supervoxel_id", f"{pt}_root_id"}
            cached = frozenset(names)
            self._numeric = cached
        return cached

    def columns(self) -> set[str]:
        """Every flat column name a source may use."""
        names = set(self.scalars)
        for pt, bound in self.points.items():
            names |= {f"{pt}_position", *(f"{pt}_position_{a}" for a in "xyz")}
            if bound:
                names |= {f"{pt}_supervoxel_id", f"{pt}_root_id"}
        return names


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _parse_position(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        parts = [p for p in re.split(r"[,\s;]+", text) if p]
        try:
            return [float(p) if "." in p or "e" in p.lower() else int(p) for p in parts]
        except ValueError:
            return value  # reported by the schema check
    if hasattr(value, "tolist"):
        return value.tolist()
    return list(value) if isinstance(value, tuple) else value


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        try:
            return value.item()
        except (AttributeError, ValueError):
            return value
    return value


def nest_row(flat: Mapping[str, Any], fields: SchemaFields) -> dict[str, Any]:
    """A flat (or already nested) source row as the nested dict the annotation engine takes."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in fields.points and isinstance(value, Mapping):
            out[key] = {k: _plain(v) for k, v in value.items() if not _missing(v)}
    for pt, bound in fields.points.items():
        if pt in out:
            continue
        point: dict[str, Any] = {}
        if f"{pt}_position" in flat and not _missing(flat[f"{pt}_position"]):
            point["position"] = _parse_position(flat[f"{pt}_position"])
        elif any(f"{pt}_position_{a}" in flat for a in "xyz"):
            coords = [flat.get(f"{pt}_position_{a}") for a in "xyz"]
            if not all(_missing(c) for c in coords):
                point["position"] = [None if _missing(c) else _plain(c) for c in coords]
        if bound:
            for extra in ("supervoxel_id", "root_id"):
                value = flat.get(f"{pt}_{extra}")
                if not _missing(value):
                    point[extra] = _plain(value)
        if point:
            out[pt] = point
    for name in fields.scalars:
        if name in flat and not _missing(flat[name]):
            out[name] = _plain(flat[name])
    if "id" in flat and not _missing(flat["id"]):
        out["id"] = _plain(flat["id"])
    return out


def _field_of(error: jsonschema.ValidationError, fields: SchemaFields) -> tuple[str, Any]:
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = [p for p in error.validator_value if p not in (error.instance or {})]
        name = missing[0] if missing else "?"
        if path:
            return f"{path[0]}_{name}", None
        return (f"{name}_position" if name in fields.points else name), None
    if not path:
        return "(row)", error.instance
    head = str(path[0])
    if head in fields.points and len(path) > 1:
        return f"{head}_{path[1]}", error.instance
    return head, error.instance


_SIMPLE_TYPES = frozenset({"string", "number", "integer", "boolean", "null"})
_DOC_KEYS = frozenset({"title", "description", "format"})


def _type_ok(value: Any, types: Sequence[str]) -> bool:
    """JSON Schema (draft 7) type check, as ``jsonschema`` does it."""
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
                return True
        elif kind == "integer":
            if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
                return True
        elif kind == "string" and isinstance(value, str):
            return True
    return False


def _types_of(spec: Mapping[str, Any]) -> list[str] | None:
    """The allowed types of a property using only ``type`` (and doc keys), else None."""
    if set(spec) - _DOC_KEYS - {"type"} or "type" not in spec:
        return None
    types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    return types if set(types) <= _SIMPLE_TYPES else None


def fast_validator(schema: Mapping[str, Any]) -> Any:
    """An exact, fast validity test for the simple schemas CAVE serves, or None.

    Covers objects whose properties are simply typed scalars or ``$ref``s to point
    definitions (a 3-number ``position`` plus simply typed ids, no extra keys). It returns
    True only when ``jsonschema`` would accept the row; rows it rejects (and schemas using
    anything else) go through ``jsonschema`` for exact messages.
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
                    elif sub not in others or not _type_ok(item, others[sub]):
                        return False
            elif key in scalars:
                if not _type_ok(value, scalars[key]):
                    return False
            elif not extra_ok:
                return False
        return True

    return valid


def check_rows(
    rows: Sequence[Mapping[str, Any]],
    nested: Sequence[dict[str, Any]],
    fields: SchemaFields,
    mode: str,
    first_row: int,
    seen_ids: set[int],
) -> list[UploadProblem]:
    """Every problem of a batch of rows (row numbers from ``first_row``)."""
    validator = jsonschema.Draft7Validator(fields.schema)
    fast = fast_validator(fields.schema)
    problems: list[UploadProblem] = []
    for offset, (flat, record) in enumerate(zip(rows, nested, strict=True)):
        number = first_row + offset
        ident = record.get("id")
        if mode in ("update", "delete"):
            if not isinstance(ident, int) or isinstance(ident, bool) or ident <= 0:
                problems.append(
                    UploadProblem(
                        row=number,
                        field="id",
                        value=repr(flat.get("id")),
                        problem=f"{mode} needs the positive integer id of an existing row",
                    )
                )
            elif ident in seen_ids:
                problems.append(
                    UploadProblem(row=number, field="id", value=str(ident), problem="duplicate id")
                )
            else:
                seen_ids.add(ident)
        if mode == "delete":
            continue
        body = {k: v for k, v in record.items() if k != "id"}
        if fast is not None and fast(body, mode != "update"):
            continue
        for error in validator.iter_errors(body):
            if mode == "update" and error.validator == "required" and not error.absolute_path:
                continue  # updates may be partial; the server merges the old row
            name, value = _field_of(error, fields)
            problems.append(
                UploadProblem(row=number, field=name, value=repr(value), problem=error.message)
            )
    return problems


# ------------------------------------------------------------------------------ the source
def _format_of(source: str) -> str | None:
    lower = source.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    return None


@dataclass
class Source:
    """The rows to upload, loaded once (Arrow for files), with a content hash."""

    name: str
    sha256: str
    table: pa.Table | None = None
    records: list[dict[str, Any]] | None = None

    @property
    def num_rows(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.records or [])

    @property
    def columns(self) -> list[str]:
        if self.table is not None:
            return list(self.table.column_names)
        names: dict[str, None] = {}
        for row in self.records or []:
            names.update(dict.fromkeys(row))
        return list(names)

    def batches(self, size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """``(first index, rows)`` for consecutive slices of at most ``size`` rows."""
        for start in range(0, self.num_rows, size):
            if self.table is not None:
                yield start, self.table.slice(start, size).to_pylist()
            else:
                yield start, [dict(r) for r in (self.records or [])[start : start + size]]


def load_source(request: AnnotationUploadRequest) -> Source:
    """Read the source (file or records) and hash its content.

    Raises:
        CaveInputError: The file does not exist or cannot be parsed.
    """
    if request.records is not None:
        digest = hashlib.sha256(dumps(request.records)).hexdigest()
        return Source(name="records", sha256=digest, records=list(request.records))
    assert request.source is not None
    uri = request.source
    if not storage.exists(uri):
        raise CaveInputError(f"source {uri!r} does not exist")
    data = storage.read_bytes(uri)
    digest = hashlib.sha256(data).hexdigest()
    try:
        if _format_of(uri) == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
        else:
            import pyarrow.csv as pacsv

            stream: Any = io.BytesIO(data)
            if uri.lower().endswith(".gz"):
                import gzip

                stream = io.BytesIO(gzip.decompress(data))
            # Every column as text first: types are decided by the schema, not by inference.
            header = next(csv.reader(io.TextIOWrapper(io.BytesIO(stream.getvalue()))), [])
            table = pacsv.read_csv(
                stream,
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in header},
                    strings_can_be_null=True,
                ),
            )
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise CaveInputError(f"source {uri!r} cannot be read: {exc}") from None
    return Source(name=uri, sha256=digest, table=table)


_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _typed(flat: dict[str, Any], fields: SchemaFields) -> dict[str, Any]:
    """CSV text values as the JSON types the schema declares (others left for the check)."""
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


def _records_of(
    rows: list[dict[str, Any]], fields: SchemaFields, from_csv: bool
) -> list[dict[str, Any]]:
    if from_csv:
        rows = [_typed(r, fields) for r in rows]
    return [nest_row(r, fields) for r in rows]


# ------------------------------------------------------------------------------ ledger
def ledger_dir_for(
    request: AnnotationUploadRequest, source: Source, datastack: str
) -> tuple[str, str]:
    """``(key, directory)`` of the ledger of this exact upload."""
    key_text = "|".join(
        [source.sha256, datastack, request.table, request.mode, str(request.chunk_size)]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    if request.ledger_location:
        base = request.ledger_location
    elif request.source is not None:
        if storage.is_s3(request.source):
            base = request.source.rsplit("/", 1)[0] + "/" + LEDGER_DIRNAME
        else:
            base = str(Path(request.source).absolute().parent / LEDGER_DIRNAME)
    else:
        base = os.environ.get("NEURODATA_LEDGER_DIR") or str(Path.home() / ".neurodata" / "ledgers")
    return key, storage.join(base, f"{request.table}-{request.mode}-{key}")


def _write_id_map(ledger: str, mode: str, entries: list[dict[str, Any]]) -> tuple[str, list]:
    """Write the whole id mapping as CSV next to the ledger; return its URI and the rows."""
    rows: list[dict[str, Any]] = []
    for entry in sorted(entries, key=lambda e: e["chunk"]):
        first = entry["rows"][0]
        if mode == "update":
            for old, new in entry["id_map"].items():
                rows.append({"old_id": int(old), "new_id": int(new)})
        elif mode == "insert":
            for offset, new in enumerate(entry["ids"]):
                rows.append({"row": first + offset + 1, "id": int(new)})
        else:
            rows.extend({"deleted_id": int(i)} for i in entry["ids"])
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    uri = storage.join(ledger, "id_map.csv")
    storage.write_bytes_atomic(uri, out.getvalue().encode())
    return uri, rows


# ------------------------------------------------------------------------------ the flow
@flow(name="cave-annotation-upload", validate_parameters=True)
def upload_annotations(
    request: AnnotationUploadRequest,
    cave_block: str = DEFAULT_CAVE_BLOCK,
) -> AnnotationUploadSummary:
    """Validate every row, then upload in chunks of at most 10,000, exactly once.

    Args:
        request: Table, mode, source (file/URI or records), table definition and chunk size.
        cave_block: Name of the saved `CaveCredentials` block.

    Returns:
        Counts, the ledger location and the id-mapping file.

    Raises:
        AnnotationValidationError: Rows violate the schema (every problem is listed; nothing
            was written).
        CaveInputError: Unknown datastack or schema, missing table without ``create``,
            unreadable source (nothing was written).
        CavePermissionError: The token lacks ``edit`` or the table's write permission
            (nothing was written).
        ChunkReconcileError: A chunk's lost answer could not be reconciled (see module doc).
    """
    logger = get_run_logger()
    datastack = request.datastack or load_cave(cave_block).datastack_name
    if not datastack:
        raise CaveInputError("no datastack given and the CAVE block names none")

    # --- everything is checked before the first write -------------------------------------
    access = check_cave_access(cave_block, datastack, "edit")
    meta = get_annotation_table(cave_block, datastack, request.table)
    if meta is None:
        if request.create is None:
            raise CaveInputError(
                f"table {request.table!r} does not exist in datastack {datastack!r}; pass "
                "create= (schema_type, description, voxel_resolution) to create it"
            )
        if request.mode != "insert":
            raise CaveInputError(
                f"table {request.table!r} does not exist, so there is nothing to {request.mode}"
            )
        schema_type = request.create.schema_type
    else:
        schema_type = meta["schema_type"]
        if request.create is not None and request.create.schema_type != schema_type:
            raise CaveInputError(
                f"table {request.table!r} exists with schema {schema_type!r}, but create= "
                f"asks for {request.create.schema_type!r}"
            )
        denied = table_permission_problem(meta, access, "write")
        if denied:
            raise CavePermissionError(denied)
    fields = SchemaFields.from_schema(get_annotation_schema(cave_block, schema_type))

    source = load_source(request)
    if source.num_rows == 0:
        raise CaveInputError(f"source {source.name!r} has no rows")
    allowed = fields.columns() | ({"id"} if request.mode != "insert" else set())
    if request.mode == "delete":
        allowed = {"id"} | fields.columns()
    problems: list[UploadProblem] = [
        UploadProblem(
            row=None,
            field=column,
            value="",
            problem=(
                "ids are assigned by the server on insert; use mode=update to replace rows"
                if column == "id"
                else f"not a field of schema {schema_type!r} (fields: {sorted(fields.columns())})"
            ),
        )
        for column in source.columns
        if column not in allowed and not (column in fields.points and source.records is not None)
    ]
    from_csv = source.table is not None and _format_of(source.name) == "csv"
    seen: set[int] = set()
    for start, rows in source.batches(request.chunk_size):
        problems += check_rows(
            rows, _records_of(rows, fields, from_csv), fields, request.mode, start + 1, seen
        )
    if problems:
        publish_table(
            f"{ARTIFACT_KEY}-problems",
            [p.model_dump() for p in problems],
            f"{len(problems)} problem(s) in {source.name}; nothing was written to {request.table}",
        )
        shown = "\n  ".join(
            f"row {p.row}: {p.field} = {p.value}: {p.problem}"
            if p.row is not None
            else f"column {p.field}: {p.problem}"
            for p in problems[:MAX_REPORTED]
        )
        more = (
            f"\n  ... and {len(problems) - MAX_REPORTED} more"
            if len(problems) > MAX_REPORTED
            else ""
        )
        raise AnnotationValidationError(
            f"{len(problems)} problem(s) in {source.name} for table {request.table!r} "
            f"(schema {schema_type!r}); nothing was written:\n  {shown}{more}",
            problems,
        )

    key, ledger = ledger_dir_for(request, source, datastack)
    chunks = math.ceil(source.num_rows / request.chunk_size)
    logger.info(
        "%d rows valid; %s in %d chunk(s); ledger %s", source.num_rows, request.mode, chunks, ledger
    )

    # --- write -----------------------------------------------------------------------------
    table_created = False
    if meta is None:
        assert request.create is not None
        spec = request.create
        create_annotation_table(
            cave_block,
            datastack,
            request.table,
            spec.schema_type,
            spec.description,
            spec.voxel_resolution,
            reference_table=spec.reference_table,
            read_permission=spec.read_permission,
            write_permission=spec.write_permission,
            notice_text=spec.notice_text,
        )
        table_created = True
    storage.ensure_dir(ledger)
    header = storage.join(ledger, "ledger.json")
    if not storage.exists(header):
        storage.write_bytes_atomic(
            header,
            dumps(
                {
                    "key": key,
                    "source": source.name,
                    "source_sha256": source.sha256,
                    "datastack": datastack,
                    "table": request.table,
                    "mode": request.mode,
                    "chunk_size": request.chunk_size,
                    "rows": source.num_rows,
                    "chunks": chunks,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                }
            ),
        )

    progress = (
        create_progress_artifact(0.0, key=f"{ARTIFACT_KEY}-progress", description="chunks done")
        if in_flow_run()
        else None
    )
    entries: list[dict[str, Any]] = []
    skipped = sent = resumed = 0
    id_hint: int | None = None
    for index, (start, rows) in enumerate(source.batches(request.chunk_size)):
        previous = read_ledger_entry(ledger, index)
        if previous is not None and previous.get("status") == "done":
            entry = previous
            skipped += 1
        else:
            records = _records_of(rows, fields, from_csv)
            payload: list[Any] = [r["id"] for r in records] if request.mode == "delete" else records
            entry = upload_annotation_chunk(
                cave_block,
                datastack,
                request.table,
                request.mode,
                payload,
                ledger,
                index,
                start + 1,
                id_hint,
            )
            sent += 1
            resumed += bool(entry.get("resumed"))
        if request.mode == "insert" and entry.get("ids"):
            id_hint = max(entry["ids"]) + 1
        entries.append(entry)
        if progress is not None:
            update_progress_artifact(progress, 100.0 * (index + 1) / chunks)

    id_map_uri, id_rows = _write_id_map(ledger, request.mode, entries)
    summary = AnnotationUploadSummary(
        datastack=datastack,
        table=request.table,
        mode=request.mode,
        rows=source.num_rows,
        chunks=chunks,
        chunks_sent=sent,
        chunks_skipped=skipped,
        chunks_resumed=resumed,
        table_created=table_created,
        ledger=ledger,
        id_map=id_map_uri,
    )
    publish_table(
        ARTIFACT_KEY,
        id_rows,
        f"{request.mode} of {source.num_rows} rows into {request.table} ({datastack}): "
        f"{sent} chunk(s) sent, {skipped} already done, {resumed} reconciled. "
        f"Full mapping: {id_map_uri}",
    )
    if in_flow_run():
        create_link_artifact(
            link=id_map_uri if storage.is_s3(id_map_uri) else f"file://{id_map_uri}",
            link_text=f"id mapping of {request.table} ({len(id_rows)} rows)",
            key=f"{ARTIFACT_KEY}-id-map",
            description="Source row -> annotation id (insert), old -> new id (update), or "
            "deleted ids (delete)",
        )
    return summary
