"""Stage annotations locally, validated against a schema, before uploading them.

`StagedAnnotations` (seed: ``caveclient.tools.stage.StagedAnnotations``) is built from the JSON
Schema the schema service returns for an annotation schema (``schema_definition``). Each
annotation added is checked at once against that schema, so errors surface while the data is
still at hand, naming the row and the field. Spatial fields are given flat as
``<field>_position`` (``[x, y, z]``) and nested as ``{"<field>": {"position": [...]}}`` for
upload; positions can be rescaled from the resolution they were drawn in to the table's.

Uploads (`AnnotationClientV2.upload_staged_annotations`) mark rows as uploaded batch by batch,
with their new ids, so an interrupted upload resumes where it stopped.

Example:
    ```python
    stage = client.annotation.stage_annotations("cell_types")
    stage.add(classification_system="manual", cell_type="basket", pt_position=[10, 20, 30])
    stage.add_dataframe(df)  # columns must be exactly stage.fields (required ones at least)
    client.annotation.upload_staged_annotations(stage)
    stage.to_dataframe(include_tracking=True)  # is_uploaded / new_id per row
    ```
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import jsonschema
import numpy as np
import pandas as pd

from prefect_neurodata.clients.cave.annotation_rows import (
    AnnotationValidationError,
    SchemaFields,
    check_annotation_id,
    nest_row,
    schema_problems,
)

__all__ = ["AnnotationValidationError", "StagedAnnotations"]


def _py(value: Any) -> Any:
    """Plain Python values (numpy scalars/arrays, pandas NA) for validation and JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_py(v) for v in value]
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class StagedAnnotations:
    """A local collection of annotations for one table (or schema), validated on entry.

    Args:
        schema: The JSON Schema of the annotation schema (from
            ``client.schema.schema_definition(name)``).
        name: A name for the stage (the schema class name by default).
        update: The annotations update existing rows (an integer ``id`` is required).
        id_field: New annotations carry their own ``id``.
        table_resolution: Voxel resolution of the table, in nm.
        annotation_resolution: Resolution of the positions given to `add`; with
            ``table_resolution``, positions are rescaled to the table's.
        table_name: The table the annotations go to (needed to upload).

    Attributes:
        name: The stage's name.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        name: str | None = None,
        update: bool = False,
        id_field: bool = False,
        table_resolution: Sequence[float] | None = None,
        annotation_resolution: Sequence[float] | None = None,
        table_name: str | None = None,
    ) -> None:
        if not isinstance(schema, dict) or "$ref" not in schema or "definitions" not in schema:
            raise ValueError("schema must be a JSON Schema with '$ref' and 'definitions'")
        self._schema = schema
        self._validator = jsonschema.Draft7Validator(schema)
        self._update = bool(update)
        self._id_field = bool(id_field or update)
        self._table_name = table_name
        self._ref_class = str(schema["$ref"]).rsplit("/", 1)[-1]
        definition = schema["definitions"].get(self._ref_class)
        if definition is None:
            raise ValueError(f"schema has no definition for its $ref {self._ref_class!r}")
        self.name = name or self._ref_class
        self._scaling: np.ndarray | None = None
        if table_resolution is not None and annotation_resolution is not None:
            self._scaling = np.asarray(annotation_resolution, float) / np.asarray(
                table_resolution, float
            )
        self._table_resolution = table_resolution
        self._annotation_resolution = annotation_resolution

        self._fields = SchemaFields.from_schema(schema)
        self._props: list[str] = list(self._fields.order)
        required = set(self._fields.required)
        self._required_props: list[str] = [p for p in self._props if p in required]
        self._required_props += sorted(required - set(self._props))
        self._spatial: dict[str, str] = {f"{p}_position": p for p in self._fields.points}
        self._flat_of = {v: k for k, v in self._spatial.items()}

        self._rows: list[dict[str, Any]] = []
        self._uploaded: list[bool] = []
        self._new_ids: list[int | None] = []

        self.add = self._make_add()

    # -- fields ------------------------------------------------------------------------------
    def _flat(self, prop: str) -> str:
        return self._flat_of.get(prop, prop)

    @property
    def fields(self) -> list[str]:
        """Flat field names accepted by `add` (spatial fields as ``<field>_position``)."""
        names = [self._flat(p) for p in self._props]
        return ["id", *names] if self._id_field else names

    @property
    def fields_required(self) -> list[str]:
        """Flat field names `add` requires."""
        names = [self._flat(p) for p in self._props if p in self._required_props]
        names += [self._flat(p) for p in self._required_props if p not in self._props]
        return ["id", *names] if self._id_field else names

    @property
    def table_name(self) -> str | None:
        """The table the annotations go to."""
        return self._table_name

    @table_name.setter
    def table_name(self, x: str | None) -> None:
        self._table_name = x

    @property
    def is_update(self) -> bool:
        """Whether the annotations update existing rows."""
        return self._update

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        kind = "updated" if self._update else "new"
        where = (
            f"table '{self.table_name}'"
            if self.table_name
            else f"schema '{self._ref_class}' with no table"
        )
        uploaded = sum(self._uploaded)
        return (
            f"Staged annotations for {where} ({len(self)} {kind} annotations, {uploaded} uploaded)"
        )

    # -- adding ------------------------------------------------------------------------------
    def _make_add(self) -> Any:
        order = self.fields_required + [f for f in self.fields if f not in self.fields_required]
        required = set(self.fields_required)
        parameters = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=inspect.Parameter.empty if name in required else None,
            )
            for name in order
        ]
        signature = inspect.Signature(parameters)

        def add(*args: Any, **kwargs: Any) -> None:
            try:
                bound = signature.bind_partial(*args, **kwargs)
            except TypeError as exc:
                raise AnnotationValidationError(
                    f"annotation {len(self._rows)}: {exc} (fields: {self.fields})",
                    row=len(self._rows),
                ) from None
            row = self._validated(dict(bound.arguments), len(self._rows))
            self._append(row)

        add.__signature__ = signature  # type: ignore[attr-defined]
        add.__doc__ = (
            "Add one annotation to the stage (validated now, uploaded later).\n\n"
            f"Fields: {', '.join(order)} (required: {', '.join(self.fields_required)})."
        )
        add.__name__ = "add"
        return add

    def _append(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._uploaded.append(False)
        self._new_ids.append(None)

    def _validated(self, values: dict[str, Any], row_label: Any) -> dict[str, Any]:
        """Check one flat annotation; return it cleaned and rescaled."""
        clean: dict[str, Any] = {}
        for key, value in values.items():
            if key not in self.fields:
                raise AnnotationValidationError(
                    f"annotation {row_label}: unknown field {key!r} (fields: {self.fields})",
                    row=row_label,
                    field=key,
                )
            value = _py(value)
            if _missing(value):
                continue
            clean[key] = value
        for key in self.fields_required:
            if key not in clean:
                raise AnnotationValidationError(
                    f"annotation {row_label}: field {key!r} is required but missing",
                    row=row_label,
                    field=key,
                )
        if self._id_field and "id" in clean:
            try:
                check_annotation_id(clean["id"], row_label, f"annotation {row_label}")
            except AnnotationValidationError as exc:
                raise AnnotationValidationError(
                    f"annotation {row_label}: field 'id' must be an integer between 1 and "
                    f"2**63 - 1, got {clean['id']!r}",
                    row=row_label,
                    field="id",
                    problems=exc.problems,
                ) from None
        for flat in self._spatial:
            if flat in clean:
                clean[flat] = self._scaled(clean[flat], row_label, flat)
        nested = self._nest(clean)
        problems = schema_problems(nested, self._fields, row_label, validator=self._validator)
        if problems:
            first = problems[0]
            where = f"field {first.field!r}" if first.field != "(row)" else "the annotation"
            shown = "" if first.value == "None" else f" (value {first.value})"
            raise AnnotationValidationError(
                f"annotation {row_label}: {where} is invalid: {first.problem}{shown}",
                problems=problems,
            )
        return clean

    def _scaled(self, value: Any, row_label: Any, field: str) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise AnnotationValidationError(
                f"annotation {row_label}: field {field!r} must be [x, y, z], got {value!r}",
                row=row_label,
                field=field,
            )
        if self._scaling is None:
            return list(value)
        try:
            return [float(v) * float(s) for v, s in zip(value, self._scaling, strict=True)]
        except (TypeError, ValueError):
            raise AnnotationValidationError(
                f"annotation {row_label}: field {field!r} must hold numbers, got {value!r}",
                row=row_label,
                field=field,
            ) from None

    def _nest(self, flat: dict[str, Any]) -> dict[str, Any]:
        return nest_row(flat, self._fields, convert=False)

    def add_dataframe(self, df: pd.DataFrame) -> None:
        """Add one annotation per row; columns must be fields, required ones all present.

        Every row is validated before any is added, so a bad row leaves the stage unchanged.
        Errors name the row's index label and the field.
        """
        columns = [str(c) for c in df.columns]
        missing = [c for c in self.fields_required if c not in columns]
        extra = [c for c in columns if c not in self.fields]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"Schema needs columns not in dataframe: {missing}")
            if extra:
                parts.append(f"Dataframe has columns that are not in schema: {extra}")
            raise ValueError(". ".join(parts) + f". Fields: {self.fields}")
        rows = [
            self._validated({str(k): v for k, v in record.items()}, label)
            for label, record in zip(df.index, df.to_dict(orient="records"), strict=True)
        ]
        for row in rows:
            self._append(row)

    # -- reading -----------------------------------------------------------------------------
    @property
    def annotation_list(self) -> list[dict[str, Any]]:
        """Every staged annotation as the nested dict the annotation engine expects."""
        return [self._nest(r) for r in self._rows]

    @property
    def annotation_dataframe(self) -> pd.DataFrame:
        """Every staged annotation as a flat row (see `to_dataframe` for upload tracking)."""
        return self.to_dataframe()

    def to_dataframe(
        self, only_nonuploaded: bool = False, include_tracking: bool = False
    ) -> pd.DataFrame:
        """The staged annotations as flat rows.

        Args:
            only_nonuploaded: Only rows not uploaded yet.
            include_tracking: Add ``is_uploaded`` and ``new_id`` (``Int64``) columns.
        """
        keep = [i for i in range(len(self._rows)) if not (only_nonuploaded and self._uploaded[i])]
        df = pd.DataFrame.from_records([self._rows[i] for i in keep], columns=None)
        if include_tracking:
            df["is_uploaded"] = [self._uploaded[i] for i in keep]
            df["new_id"] = pd.array([self._new_ids[i] for i in keep], dtype="Int64")
        return df

    def clear_annotations(self) -> None:
        """Remove every staged annotation."""
        self._rows, self._uploaded, self._new_ids = [], [], []

    def purge_uploaded_annotations(self) -> None:
        """Remove the annotations already uploaded."""
        keep = [i for i, done in enumerate(self._uploaded) if not done]
        self._rows = [self._rows[i] for i in keep]
        self._uploaded = [False] * len(keep)
        self._new_ids = [None] * len(keep)

    # -- upload bookkeeping (used by AnnotationClientV2.upload_staged_annotations) -----------
    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        """``(position, nested annotation)`` of every row not uploaded yet."""
        return [(i, self._nest(r)) for i, r in enumerate(self._rows) if not self._uploaded[i]]

    def mark_uploaded(self, indices: Sequence[int], new_ids: Sequence[Any]) -> None:
        """Record rows (positions in the stage) as uploaded, with their new ids."""
        for index, new_id in zip(indices, new_ids, strict=True):
            self._uploaded[index] = True
            self._new_ids[index] = int(new_id) if new_id is not None else None
