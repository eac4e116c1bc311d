"""Arrow IPC decoding and position-column handling for materialization query results.

The materialization engine answers a DataFrame query with an Arrow IPC *stream*
(``Content-Type: data.arrow``) whose buffers are ZSTD-compressed when the request says
``Accept-Encoding: zstd``. The stream carries the pandas metadata of the server's frame, so
nullable dtypes (``Int64``, ``boolean``...) survive the trip.

Everything here works on Arrow tables for as long as possible: partitions are concatenated as
Arrow (no copy), positions are stitched from Arrow buffers, and pandas is built once at the end.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

ARROW_CONTENT_TYPES: frozenset[str] = frozenset(
    {"data.arrow", "application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file"}
)
"""Content types a materialization server uses for Arrow IPC bodies."""

_AXES = ("x", "y", "z")


def content_type(headers: Any) -> str:
    """The media type of a response (no parameters), lower-cased."""
    value = headers.get("Content-Type") or headers.get("content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def is_arrow(headers: Any) -> bool:
    """Whether a response's ``Content-Type`` announces an Arrow IPC body."""
    return content_type(headers) in ARROW_CONTENT_TYPES


def read_ipc(body: bytes | memoryview | pa.Buffer) -> pa.Table:
    """Decode an Arrow IPC stream (or file) without copying the body.

    Args:
        body: The raw response body.

    Returns:
        The table, its buffers pointing into ``body`` where no decompression was needed.

    Raises:
        ValueError: The body is not Arrow IPC.
    """
    buffer = body if isinstance(body, pa.Buffer) else pa.py_buffer(body)
    try:
        with pa.ipc.open_stream(buffer) as reader:
            return reader.read_all()
    except pa.ArrowInvalid as stream_error:
        try:
            return pa.ipc.open_file(buffer).read_all()
        except pa.ArrowInvalid:
            raise ValueError(f"response body is not an Arrow IPC stream: {stream_error}") from None


def concat_tables(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate partition tables without copying their buffers.

    Partitions of one query share a schema except, possibly, in pandas metadata or in the
    nullability of a column; those differences are unified rather than rejected.
    """
    if not tables:
        raise ValueError("no tables to concatenate")
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid:
        return pa.concat_tables(tables, promote_options="permissive")


def position_triples(names: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """Find ``<base>_x, <base>_y, <base>_z`` column triples.

    Args:
        names: Column names in order.

    Returns:
        ``{base: (x_col, y_col, z_col)}`` in the order the bases first appear.
    """
    present = set(names)
    found: dict[str, tuple[str, str, str]] = {}
    for name in names:
        if name.endswith("_x"):
            base = name[:-2]
            cols = (f"{base}_x", f"{base}_y", f"{base}_z")
            if base and all(c in present for c in cols) and base not in present:
                found[base] = cols
    return found


def _column_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numpy view (or, for nulls or several chunks, a copy) of a numeric column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.null_count:
        column = column.cast(pa.float64())
        return column.to_numpy(zero_copy_only=False)
    return column.to_numpy(zero_copy_only=False)


def stack_positions(table: pa.Table, cols: tuple[str, str, str]) -> np.ndarray:
    """An ``(n, 3)`` array of a position triple."""
    arrays = [_column_numpy(table.column(c)) for c in cols]
    dtype = np.result_type(*arrays)
    out = np.empty((table.num_rows, 3), dtype=dtype)
    for i, arr in enumerate(arrays):
        out[:, i] = arr
    return out


def rows_as_arrays(points: np.ndarray) -> np.ndarray:
    """One ``np.ndarray([x, y, z])`` per row, as a 1-D object array.

    The rows are views into ``points`` rather than separately allocated arrays, which is what
    makes merged positions cheap on a million rows.
    """
    series = np.empty(len(points), dtype=object)
    series[:] = list(points)
    return series


def scale_factors(
    given: Sequence[float] | None, desired: Sequence[float] | None
) -> np.ndarray | None:
    """``given / desired`` per axis, or None when no scaling is needed."""
    if given is None or desired is None:
        return None
    ratio = np.asarray(given, dtype=float) / np.asarray(desired, dtype=float)
    if ratio.shape != (3,):
        raise ValueError(f"resolutions must have 3 values, got {list(given)} and {list(desired)}")
    if np.all(ratio == 1.0):
        return None
    return ratio


def scale_table_positions(table: pa.Table, factors: np.ndarray | None) -> pa.Table:
    """Multiply every position triple of ``table`` by ``factors`` (float64 results)."""
    if factors is None:
        return table
    for cols in position_triples(table.column_names).values():
        for axis, col in enumerate(cols):
            if factors[axis] == 1.0:
                continue
            index = table.column_names.index(col)
            values = _column_numpy(table.column(col)).astype(np.float64) * factors[axis]
            table = table.set_column(index, col, pa.array(values))
    return table


def parse_resolution(value: str | None) -> list[float] | None:
    """Parse a ``dataframe_resolution`` header (``"4.0, 4.0, 40.0"``; repeated lines joined)."""
    if not value:
        return None
    try:
        return [float(v) for v in value.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        return None


class FrameAssembler:
    """Builds one DataFrame from query answers as they arrive.

    The expensive part of the conversion, one ``np.ndarray([x, y, z])`` per row and position
    column, is done per answer in `add`, so that it overlaps with the partitions still in
    flight; `frame` then concatenates the Arrow tables (no copy), converts to pandas once and
    inserts the position columns.

    Args:
        split_positions: Keep ``<base>_x/_y/_z`` columns instead of merging them.
        desired_resolution: The resolution asked for, or None.
        given_resolution: Returns the resolution positions are stored in; asked only when the
            server did not scale them itself (no ``dataframe_resolution`` header).
    """

    def __init__(
        self,
        *,
        split_positions: bool = True,
        desired_resolution: Sequence[float] | None = None,
        given_resolution: Callable[[], Sequence[float] | None] | None = None,
    ) -> None:
        self.split_positions = split_positions
        self.desired_resolution = desired_resolution
        self.given_resolution = given_resolution
        self.resolution: list[float] | None = None
        self._factors: np.ndarray | None = None
        self._first = True
        self._tables: list[pa.Table] = []
        self._merged: dict[str, list[np.ndarray]] = {}
        self._order: list[str] | None = None

    def add(self, table: pa.Table, headers: Any = None) -> None:
        """Take one answer (its headers are read from the first one)."""
        if self._first:
            self._first = False
            self.resolution = parse_resolution((headers or {}).get("dataframe_resolution"))
            if (
                self.desired_resolution is not None
                and self.resolution is None
                and self.given_resolution is not None
            ):
                self._factors = scale_factors(self.given_resolution(), self.desired_resolution)
                self.resolution = [float(x) for x in self.desired_resolution]
        table = scale_table_positions(table, self._factors)
        if not self.split_positions:
            triples = position_triples(table.column_names)
            if self._order is None:
                self._order = _merged_order(table.column_names, triples)
            for base, cols in triples.items():
                self._merged.setdefault(base, []).append(
                    rows_as_arrays(stack_positions(table, cols))
                )
            if triples:
                table = table.drop_columns([c for cols in triples.values() for c in cols])
        self._tables.append(table)

    def frame(self) -> pd.DataFrame:
        """The DataFrame of everything added."""
        if not self._tables:
            raise ValueError("no answers to assemble")
        table = concat_tables(self._tables)
        self._tables = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            frame = table.to_pandas(split_blocks=True)
        if self._merged and self._order is not None:
            for loc, name in enumerate(self._order):
                parts = self._merged.get(name)
                if parts is not None:
                    values = parts[0] if len(parts) == 1 else np.concatenate(parts)
                    frame.insert(loc, name, values)
        return frame


def _merged_order(names: Sequence[str], triples: dict[str, tuple[str, str, str]]) -> list[str]:
    drop = {c for cols in triples.values() for c in cols}
    order: list[str] = []
    for name in names:
        if name in drop:
            if name.endswith("_x") and name[:-2] in triples:
                order.append(name[:-2])
            continue
        order.append(name)
    return order


def table_to_frame(table: pa.Table, *, split_positions: bool = True) -> pd.DataFrame:
    """Convert a query result to pandas, merging position triples unless asked not to.

    Args:
        table: The Arrow result.
        split_positions: Keep ``<base>_x/_y/_z`` columns; otherwise each triple becomes one
            object column ``<base>`` of ``np.ndarray([x, y, z])``, placed where the triple was.

    Returns:
        The DataFrame, with the pandas dtypes the server's metadata asks for.
    """
    assembler = FrameAssembler(split_positions=split_positions)
    assembler.add(table)
    return assembler.frame()


def concatenate_position_columns(df: pd.DataFrame, inplace: bool = False) -> pd.DataFrame:
    """Replace each ``<base>_x/_y/_z`` column triple by one ``<base>`` column of xyz arrays.

    Args:
        df: The frame to alter.
        inplace: Edit ``df`` itself rather than a copy.

    Returns:
        The frame with merged position columns.
    """
    out = df if inplace else df.copy()
    for base, cols in position_triples([str(c) for c in out.columns]).items():
        points = out[list(cols)].to_numpy()
        if points.dtype == object:
            points = points.astype(np.float64)
        position = list(out.columns).index(cols[0])
        values = rows_as_arrays(points)
        for col in cols:
            del out[col]
        out.insert(position, base, values)
    return out


def convert_position_columns(
    df: pd.DataFrame, given_resolution: Iterable[float], desired_resolution: Iterable[float]
) -> pd.DataFrame:
    """Rescale every ``<base>_x/_y/_z`` triple from one voxel resolution to another.

    Args:
        df: The frame to alter (in place).
        given_resolution: The resolution the positions are in.
        desired_resolution: The resolution wanted.

    Returns:
        The same frame, rescaled.
    """
    factors = scale_factors(list(given_resolution), list(desired_resolution))
    if factors is None:
        return df
    for cols in position_triples([str(c) for c in df.columns]).values():
        for axis, col in enumerate(cols):
            df[col] = df[col].astype(np.float64) * factors[axis]
    return df


_LIMIT_PATTERNS = (
    re.compile(r"Limited query to (\d+) rows"),
    re.compile(r"equal or more than limit of (\d+)"),
)


def limit_from_warnings(messages: Iterable[str]) -> int | None:
    """The row limit a server says it applied, from its ``Warning`` header lines."""
    for message in messages:
        for pattern in _LIMIT_PATTERNS:
            match = pattern.search(message)
            if match:
                return int(match.group(1))
    return None


def split_warning_header(value: str | None) -> list[str]:
    """Split a ``Warning`` header that `requests` joined from repeated lines.

    Lines are joined with ``", "``, which also appears inside messages; a new warning starts
    where the text after a comma begins with a warn-code (three digits and a space) or where the
    server's own message formats begin.
    """
    if not value:
        return []
    parts = re.split(r", (?=\d{3} |Table Owner Notice|Response is|Deprecat)", value)
    return [p.strip() for p in parts if p.strip()]
