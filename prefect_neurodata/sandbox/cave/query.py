"""Vectorised query engine over frozen (Arrow) tables: filters, joins, select, paging, scaling.

Semantics follow MaterializationEngine as the reference describes it (section 1.5.1), with the
intended NOT IN behaviour rather than the 5.26.x bug that drops it:

* ``filter_in_dict`` -> SQL ``IN``; ``filter_notin_dict`` -> SQL ``NOT IN`` (a NULL column value
  never matches, and a NULL in the list makes the predicate NULL for every row, so nothing
  matches); ``filter_equal_dict`` -> ``=`` (``None`` -> ``IS NULL``, as SQLAlchemy renders it);
  ``filter_greater/less/greater_equal/less_equal_dict`` -> ``> < >= <=`` (NULLs never match);
  ``filter_spatial_dict`` -> inclusive 3-D box on ``<pt>_position`` in the table's voxel units
  (min must be strictly below max on every axis, else the real server's 500);
  ``filter_regex_dict`` -> regex search on string columns only (else 500, as the real server).
* every table involved only contributes ``valid = true`` rows.
* rows come back in ``id`` order (the real server has no ORDER BY; a fixed order is a valid
  instance of "any order" and makes offset paging deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefect_neurodata.sandbox.cave.errors import CaveHTTPError

FILTER_KINDS = (
    "filter_in_dict",
    "filter_notin_dict",
    "filter_equal_dict",
    "filter_greater_dict",
    "filter_less_dict",
    "filter_greater_equal_dict",
    "filter_less_equal_dict",
    "filter_spatial_dict",
    "filter_regex_dict",
)
_COMPARE = {
    "filter_greater_dict": pc.greater,
    "filter_less_dict": pc.less,
    "filter_greater_equal_dict": pc.greater_equal,
    "filter_less_equal_dict": pc.less_equal,
}


@dataclass
class Source:
    """One frozen table or view as the query engine sees it.

    Attributes:
        name: Table or view name (the key of the nested filter dicts).
        table: Arrow table sorted by ``id`` (position columns split into ``_x/_y/_z``).
        position_bases: Model names of the position columns (``pt_position``).
        resolution: The table's voxel resolution.
    """

    name: str
    table: pa.Table
    position_bases: list[str] = field(default_factory=list)
    resolution: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def model_columns(self) -> list[str]:
        """Model column names, position triples collapsed to their base, in table order."""
        out: list[str] = []
        bases = set(self.position_bases)
        for name in self.table.column_names:
            base = name[:-2] if name[-2:] in ("_x", "_y", "_z") else None
            if base in bases:
                if base not in out:
                    out.append(base)
            else:
                out.append(name)
        return out

    def physical(self, model_col: str) -> list[str]:
        """Arrow column names of a model column (a position splits into three)."""
        if model_col in self.position_bases:
            return [f"{model_col}_{a}" for a in "xyz"]
        return [model_col]


def bad_request(message: str) -> CaveHTTPError:
    """A 400 in the flask-restx shape."""
    return CaveHTTPError(400, message)


def server_error(message: str) -> CaveHTTPError:
    """A 500 in the real server's unhandled-error shape."""
    return CaveHTTPError(500, body={"code": 500, "message": message, "traceback": []})


def _scalar_column(src: Source, col: str, kind: str) -> pa.ChunkedArray:
    if col in src.position_bases:
        raise bad_request(f"{kind}: column '{col}' of table '{src.name}' is a position column")
    if col not in src.table.column_names:
        raise bad_request(f"{kind}: column '{col}' not found in table '{src.name}'")
    return src.table.column(col)


def _as_array(values: Sequence[Any], typ: pa.DataType, kind: str, col: str) -> pa.Array:
    try:
        return pa.array(list(values), type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
        raise bad_request(f"{kind}: bad values for column '{col}': {exc}") from None


def _as_scalar(value: Any, typ: pa.DataType, kind: str, col: str) -> pa.Scalar:
    return _as_array([value], typ, kind, col)[0]


def filter_mask(src: Source, filters: dict[str, dict[str, Any]]) -> pa.ChunkedArray | None:
    """Boolean mask (no nulls) of the rows of ``src`` that pass every filter, plus valid=true.

    Args:
        src: The source.
        filters: ``{filter_kind: {column: value}}`` for this table only.

    Returns:
        The mask, or None if every row passes.
    """
    t = src.table
    masks: list[Any] = []
    if "valid" in t.column_names:
        masks.append(t.column("valid"))
    for kind, spec in filters.items():
        if not spec:
            continue
        if not isinstance(spec, dict):
            raise bad_request(f"{kind}['{src.name}'] must be an object of column -> value")
        for col, value in spec.items():
            masks.append(_one_filter(src, kind, col, value))
    if not masks:
        return None
    mask = masks[0]
    for m in masks[1:]:
        mask = pc.and_kleene(mask, m)
    return pc.fill_null(mask, False)


def _one_filter(src: Source, kind: str, col: str, value: Any) -> Any:
    t = src.table
    if kind in ("filter_in_dict", "filter_notin_dict"):
        if not isinstance(value, list):
            raise bad_request(f"{kind}: value for column '{col}' must be a list")
        column = _scalar_column(src, col, kind)
        has_null = any(v is None for v in value)
        values = _as_array([v for v in value if v is not None], column.type, kind, col)
        hit = pc.is_in(column, value_set=values)
        if kind == "filter_in_dict":
            return hit  # null column values give null -> excluded
        if has_null:
            # x NOT IN (.., NULL) is NULL or false for every x: SQL returns no rows.
            return pa.chunked_array([pa.array(np.zeros(len(t), dtype=bool))])
        # is_in answers false (not NULL) for a NULL value; SQL NOT IN gives NULL: excluded.
        return pc.and_(pc.invert(hit), pc.is_valid(column))
    if kind == "filter_equal_dict":
        column = _scalar_column(src, col, kind)
        if value is None:
            return pc.is_null(column)
        if isinstance(value, (list, dict)):
            raise bad_request(f"{kind}: value for column '{col}' must be a scalar")
        return pc.equal(column, _as_scalar(value, column.type, kind, col))
    if kind in _COMPARE:
        column = _scalar_column(src, col, kind)
        if value is None or isinstance(value, (list, dict)):
            raise bad_request(f"{kind}: value for column '{col}' must be a scalar")
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            if pa.types.is_timestamp(column.type):
                return _COMPARE[kind](column, _as_scalar(value, column.type, kind, col))
            raise bad_request(f"{kind}: column '{col}' is not numeric")
        scalar = (
            pa.scalar(value)
            if isinstance(value, float)
            else _as_scalar(value, column.type, kind, col)
        )
        return _COMPARE[kind](column, scalar)
    if kind == "filter_spatial_dict":
        if col not in src.position_bases:
            raise bad_request(f"{kind}: '{col}' is not a position column of table '{src.name}'")
        try:
            box = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            box = np.zeros(0)
        if box.shape != (2, 3):
            raise bad_request(f"{kind}: bounding box for '{col}' must be [[x0,y0,z0],[x1,y1,z1]]")
        if not np.all(box[0] < box[1]):
            raise server_error(
                f"Invalid bounding box for {col}: every minimum must be less than its maximum, "
                f"got {box.tolist()}"
            )
        mask = None
        for i, axis in enumerate("xyz"):
            c = t.column(f"{col}_{axis}")
            m = pc.and_(pc.greater_equal(c, box[0][i]), pc.less_equal(c, box[1][i]))
            mask = m if mask is None else pc.and_(mask, m)
        return mask
    if kind == "filter_regex_dict":
        column = _scalar_column(src, col, kind)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise server_error(f"Regex filter can only be applied to string columns, not '{col}'")
        if not isinstance(value, str):
            raise bad_request(f"{kind}: value for column '{col}' must be a string")
        try:
            return pc.match_substring_regex(column, pattern=value)
        except pa.ArrowInvalid as exc:
            raise bad_request(f"{kind}: invalid regex for column '{col}': {exc}") from None
    raise bad_request(f"unknown filter kind {kind}")


def filters_for(body: dict[str, Any], names: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Split the nested filter dicts by table: ``{table: {kind: {col: value}}}``.

    A filter keyed by a table that is not part of the query is a 400.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names}
    for kind in FILTER_KINDS:
        spec = body.get(kind)
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise bad_request(f"{kind} must be an object keyed by table name")
        for tname, cols in spec.items():
            if tname not in out:
                raise bad_request(f"{kind}: table '{tname}' is not part of this query")
            out[tname][kind] = cols
    return out


def apply_filters(src: Source, filters: dict[str, dict[str, Any]]) -> pa.Table:
    """The rows of ``src`` passing ``filters`` (and valid = true)."""
    mask = filter_mask(src, filters)
    return src.table if mask is None else src.table.filter(mask)


def random_sample(table: pa.Table, n: int | None, seed: int = 0) -> pa.Table:
    """``TABLESAMPLE``: sample before filtering; ignored when n >= row count."""
    if n is None or n >= len(table) or n <= 0:
        return table
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(table), size=n, replace=False))
    return table.take(pa.array(idx))


@dataclass
class Result:
    """A query result ready for encoding."""

    table: pa.Table
    position_columns: list[str]
    column_names: dict[str, dict[str, str]]
    warnings: list[str] = field(default_factory=list)
    resolution: list[float] | None = None


def select_model_columns(src: Source, select: Sequence[str] | None) -> list[str]:
    """Validated model column names to return (all when ``select`` is None)."""
    cols = src.model_columns()
    if select is None:
        return cols
    if not isinstance(select, list) or not all(isinstance(c, str) for c in select):
        raise bad_request("select_columns must be a list of column names")
    unknown = [c for c in select if c not in cols]
    if unknown:
        raise bad_request(f"select_columns: columns {unknown} not found in table '{src.name}'")
    return list(select)


def scale_positions(
    table: pa.Table,
    position_columns: Sequence[str],
    factors: dict[str, np.ndarray],
) -> pa.Table:
    """Multiply each position column by its factor (float64 output) unless the factor is 1."""
    for name in position_columns:
        f = factors.get(name)
        if f is None or f == 1.0:
            continue
        i = table.column_names.index(name)
        table = table.set_column(
            i, name, pc.multiply(table.column(name).cast(pa.float64()), pa.scalar(float(f)))
        )
    return table


def simple_query(
    src: Source,
    body: dict[str, Any],
    *,
    limit_size: int,
    desired_resolution: Sequence[float] | None,
    count: bool = False,
    sample: int | None = None,
) -> Result:
    """Run a single-table (or view) query."""
    filters = filters_for(body, [src.name])[src.name]
    select = select_model_columns(src, body.get("select_columns"))
    work = Source(src.name, random_sample(src.table, sample), src.position_bases, src.resolution)
    table = apply_filters(work, filters)
    if count:
        return Result(pa.table({"count": pa.array([len(table)], pa.int64())}), [], {src.name: {}})
    table, warnings = _page(table, body, limit_size)
    physical: list[str] = []
    positions: list[str] = []
    for m in select:
        cols = src.physical(m)
        physical += cols
        if m in src.position_bases:
            positions += cols
    table = table.select(physical)
    factors: dict[str, Any] = {}
    if desired_resolution is not None:
        ratio = np.asarray(src.resolution, float) / np.asarray(desired_resolution, float)
        for m in src.position_bases:
            for i, a in enumerate("xyz"):
                factors[f"{m}_{a}"] = ratio[i]
    table = scale_positions(table, positions, factors)
    column_names = {src.name: {m: m for m in select}}
    res = list(map(float, desired_resolution)) if desired_resolution is not None else None
    return Result(table, positions, column_names, warnings, res)


def _page(table: pa.Table, body: dict[str, Any], limit_size: int) -> tuple[pa.Table, list[str]]:
    offset = body.get("offset") or 0
    limit = body.get("limit")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise bad_request(f"offset must be a non-negative integer, got {offset!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
        raise bad_request(f"limit must be a positive integer, got {limit!r}")
    limit = min(limit or limit_size, limit_size)
    out = table.slice(offset, limit)
    warnings = []
    if len(out) == limit:
        warnings.append(f'201 - "Limited query to {limit} rows')
    return out, warnings


def join_query(
    left: Source,
    right: Source,
    left_key: str,
    right_key: str,
    body: dict[str, Any],
    *,
    suffixes: tuple[str, str],
    select_map: dict[str, list[str]] | None,
    limit_size: int,
    desired_resolution: Sequence[float] | None,
    count: bool = False,
    sample: int | None = None,
) -> Result:
    """Inner join of two sources on ``left.left_key == right.right_key``.

    Only colliding model column names get the table's suffix (appended to the model name; a
    position base ``pt_position`` becomes ``pt_position_ref`` and splits to ``pt_position_ref_x``).
    """
    if left.name == right.name:
        raise bad_request("a join needs two different tables")
    filters = filters_for(body, [left.name, right.name])
    select_map = select_map or {}
    unknown = [t for t in select_map if t not in (left.name, right.name)]
    if unknown:
        raise bad_request(f"select_column_map: tables {unknown} are not part of this query")
    lsel = select_model_columns(left, select_map.get(left.name))
    rsel = select_model_columns(right, select_map.get(right.name))
    for src, key in ((left, left_key), (right, right_key)):
        if key not in src.table.column_names or key in src.position_bases:
            raise bad_request(f"join column '{key}' not found in table '{src.name}'")
    collide = set(lsel) & set(rsel)
    names: dict[str, dict[str, str]] = {
        left.name: {m: (m + suffixes[0] if m in collide else m) for m in lsel},
        right.name: {m: (m + suffixes[1] if m in collide else m) for m in rsel},
    }
    final = list(names[left.name].values()) + list(names[right.name].values())
    if len(set(final)) != len(final):
        raise bad_request(f"column names collide after suffixing: {final}")

    def prepared(src: Source, sel: list[str], key: str, tag: str) -> tuple[pa.Table, list[str]]:
        """One side of the join: filtered, renamed, with its join key."""
        work = Source(
            src.name, random_sample(src.table, sample), src.position_bases, src.resolution
        )
        t = apply_filters(work, filters[src.name])
        cols: dict[str, Any] = {f"__key{tag}": t.column(key)}
        positions: list[str] = []
        for m in sel:
            new = names[src.name][m]
            if m in src.position_bases:
                for a in "xyz":
                    cols[f"{new}_{a}"] = t.column(f"{m}_{a}")
                    positions.append(f"{new}_{a}")
            else:
                cols[new] = t.column(m)
        if tag == "l":
            cols["__order"] = pa.array(np.arange(len(t), dtype=np.int64))
        return pa.table(cols), positions

    lt, lpos = prepared(left, lsel, left_key, "l")
    rt, rpos = prepared(right, rsel, right_key, "r")
    if lt.column("__keyl").type != rt.column("__keyr").type:
        rt = rt.set_column(0, "__keyr", rt.column("__keyr").cast(lt.column("__keyl").type))
    joined = lt.join(rt, keys="__keyl", right_keys="__keyr", join_type="inner", coalesce_keys=False)
    joined = joined.sort_by("__order")
    if count:
        return Result(pa.table({"count": pa.array([len(joined)], pa.int64())}), [], names)
    joined, warnings = _page(joined, body, limit_size)
    out_cols: list[str] = []
    for src in (left, right):
        for m, new in names[src.name].items():
            out_cols += [f"{new}_{a}" for a in "xyz"] if m in src.position_bases else [new]
    joined = joined.select(out_cols)
    positions = lpos + rpos
    factors: dict[str, Any] = {}
    if desired_resolution is not None:
        for src, pos in ((left, lpos), (right, rpos)):
            ratio = np.asarray(src.resolution, float) / np.asarray(desired_resolution, float)
            for p in pos:
                factors[p] = ratio["xyz".index(p[-1])]
    joined = scale_positions(joined, positions, factors)
    res = list(map(float, desired_resolution)) if desired_resolution is not None else None
    return Result(joined, positions, names, warnings, res)
