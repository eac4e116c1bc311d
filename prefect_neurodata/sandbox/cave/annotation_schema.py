"""Annotation schemas in the CAVE stand-in: storage fields, validation, flat and nested rows.

A schema's storage fields come from part A's schema registry; `flatten` turns a posted
annotation into a table row (points into ``<pt>_position_x/y/z`` columns) and `nest` turns a row
back; `lookup_supervoxels` fills the supervoxel ids of bound points from their positions.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from prefect_neurodata.sandbox.cave import store
from prefect_neurodata.sandbox.cave.access import user_id_of
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError
from prefect_neurodata.sandbox.cave.store import Field

_KIND_MAP = {
    "bound_point": "bound_point",
    "point": "point",
    "int": "int",
    "bigint": "int",
    "target_id": "int",
    "user_id": "user",
    "float": "float",
    "str": "str",
    "bool": "bool",
}


def schema_fields(world: Any, schema_type: str) -> list[Field]:
    """Storage fields of a schema from part A's registry (``world.schemas.fields``)."""
    if schema_type not in world.schemas:
        raise CaveHTTPError(400, f"schema_type '{schema_type}' is not a known annotation schema")
    return [
        Field(f.name, _KIND_MAP.get(f.kind, "str"), bool(f.required))
        for f in world.schemas.fields(schema_type)
    ]


def is_reference_schema(fields: list[Field]) -> bool:
    """True when the schema has a ``target_id`` (reference annotation)."""
    return any(f.name == "target_id" for f in fields)


def validation_errors(world: Any, schema_type: str, annotation: Any) -> list[str]:
    """Schema errors of one nested annotation (empty list = valid)."""
    return list(world.schemas.validate(schema_type, annotation))


def flatten(fields: list[Field], annotation: dict[str, Any], user: Any = None) -> dict[str, Any]:
    """Nested schema dict -> live-table column values (unknown keys dropped, ids discarded).

    ``user_id`` fields of ``*_user`` schemas are filled with the caller's id, never the client's.
    """
    row: dict[str, Any] = {}
    for f in fields:
        value = annotation.get(f.name)
        if f.kind == "user":
            uid = user_id_of(user)
            row[f.name] = None if uid is None else int(uid)
        elif f.kind in ("bound_point", "point"):
            pos = value.get("position") if isinstance(value, dict) else None
            x, y, z = store.position_columns(f.name)
            if pos is None:
                row[x] = row[y] = row[z] = None
            else:
                row[x], row[y], row[z] = float(pos[0]), float(pos[1]), float(pos[2])
        elif f.kind == "int":
            row[f.name] = None if value is None else int(value)
        elif f.kind == "float":
            row[f.name] = None if value is None else float(value)
        elif f.kind == "bool":
            row[f.name] = None if value is None else bool(value)
        else:
            row[f.name] = None if value is None else str(value)
    return row


def nest(fields: list[Field], row: dict[str, Any]) -> dict[str, Any]:
    """Live-table row -> nested schema dict (for merging partial updates)."""
    out: dict[str, Any] = {}
    for f in fields:
        if f.kind in ("bound_point", "point"):
            pos = [row.get(column) for column in store.position_columns(f.name)]
            if any(p is None for p in pos):
                continue
            out[f.name] = {"position": [whole_float_as_int(p) for p in pos]}
        elif row.get(f.name) is not None:
            out[f.name] = row[f.name]
    return out


def whole_float_as_int(value: Any) -> Any:
    """A float with no fraction as an int (a position stored as 4.0 reads back as 4)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def lookup_supervoxels(
    world: Any, meta: dict[str, Any], fields: list[Field], rows: list[dict[str, Any]]
) -> None:
    """Fill ``<pt>_supervoxel_id`` from positions (table voxels -> segmentation voxels)."""
    bound = [f for f in fields if f.kind == "bound_point"]
    if not bound or not rows:
        return
    cg = world.chunkedgraph
    table_res = np.array(
        [meta["voxel_resolution_x"], meta["voxel_resolution_y"], meta["voxel_resolution_z"]], float
    )
    seg_res = np.asarray(world.config.voxel_resolution, float)
    for f in bound:
        position_of = operator.itemgetter(*store.position_columns(f.name))
        pts = np.array([position_of(r) for r in rows], float)
        if cg is None:
            svids = np.ones(len(rows), dtype=np.int64)  # lookup pending (sentinel 1)
        else:
            svids = np.asarray(cg.lookup_supervoxels(pts * table_res / seg_res)).astype(np.int64)
        for r, sv in zip(rows, svids.tolist(), strict=True):
            r[f"{f.name}_supervoxel_id"] = sv
