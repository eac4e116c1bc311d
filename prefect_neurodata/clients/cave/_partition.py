"""Fetch every row of a materialization query, however many the server's row limit allows.

A materialization server returns at most ``QUERY_LIMIT_SIZE`` rows per request (200,000 by
default) and says so only in a ``Warning`` header; it has no ORDER BY, so ``offset`` paging is
not reliable. This module splits a query into disjoint half-open ``id`` ranges
(``filter_greater_equal_dict`` / ``filter_less_dict`` on ``id``), fetches them with bounded
concurrency, checks that no range was itself cut at the limit (splitting it further if it was),
and hands the pieces back in id-range order.

The first and last ranges are open-ended, so rows outside the estimated id span are still
fetched: the union of the ranges is every id, and each range is verified complete, so the result
is every matching row exactly once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc

from prefect_neurodata.clients.http import imap_bounded
from prefect_neurodata.errors import NeurodataError

logger = logging.getLogger("prefect_neurodata.cave.materialize")

DEFAULT_SERVER_LIMIT = 200_000
"""The materialization engine's default ``QUERY_LIMIT_SIZE``, used until a server tells us."""

FILL = 0.6
"""Target fraction of the row limit per partition: room for uneven id density."""

OnLimit = Literal["partition", "raise"]
"""What a query does when the answer reaches the server's row limit: split it into id-range
partitions, or raise `QueryLimitError`."""

ON_LIMIT_CHOICES: tuple[str, ...] = get_args(OnLimit)

IdRange = tuple[int | None, int | None]
"""A half-open ``[lo, hi)`` id range; None means unbounded on that side."""


class QueryLimitError(RuntimeError, NeurodataError):
    """A query reached the server's row limit and was not (or could not be) partitioned.

    Attributes:
        limit: The row limit the server applied.
        rows: Rows the truncated answer held.
    """

    def __init__(self, message: str, *, limit: int | None = None, rows: int | None = None):
        super().__init__(message)
        self.limit = limit
        self.rows = rows


@dataclass
class Chunk:
    """One decoded server answer.

    Attributes:
        table: The rows, as Arrow.
        warnings: The server's ``Warning`` lines.
        headers: The response headers.
        limit: The row limit the server said it applied (from the warnings), if any.
    """

    table: pa.Table
    warnings: list[str] = field(default_factory=list)
    headers: Any = field(default_factory=dict)
    limit: int | None = None

    @property
    def num_rows(self) -> int:
        return _num_rows(self.table)

    def cut_at_limit(self, requested: int | None = None) -> bool:
        """True when the server stopped at its own limit (not at a limit we asked for)."""
        if self.limit is None or self.num_rows < self.limit:
            return False
        return requested is None or self.limit < requested


def _num_rows(table: Any) -> int:
    """Rows of an answer: an Arrow table, or a list of JSON records."""
    return table.num_rows if isinstance(table, pa.Table) else len(table)


def _slice(table: Any, start: int, length: int | None = None) -> Any:
    if isinstance(table, pa.Table):
        return table.slice(start, length)
    return table[start:] if length is None else table[start : start + length]


def check_on_limit(on_limit: OnLimit) -> None:
    """Reject an unknown ``on_limit`` value before anything is sent."""
    if on_limit not in ON_LIMIT_CHOICES:
        raise ValueError(f"on_limit must be one of {ON_LIMIT_CHOICES}, got {on_limit!r}")


def plan_ranges(total: int, lo: int, hi: int, limit: int, fill: float = FILL) -> list[IdRange]:
    """Split ``[lo, hi)`` into ranges expected to hold about ``fill * limit`` rows each.

    Args:
        total: Expected rows in the whole query.
        lo: Estimated smallest id (inclusive).
        hi: Estimated end of the ids (exclusive).
        limit: The server's row limit.
        fill: Target fraction of the limit per range.

    Returns:
        Ranges covering every integer: ``(None, lo)`` and ``(hi, None)`` catch ids outside the
        estimate (usually empty), the bounded ranges in between split ``[lo, hi)`` evenly.
    """
    hi = max(hi, lo + 1)
    target = max(1, int(limit * fill))
    parts = max(1, math.ceil(total / target))
    parts = min(parts, hi - lo)
    width = math.ceil((hi - lo) / parts)
    edges = list(range(lo, hi, width)) + [hi]
    bounded: list[IdRange] = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    return [(None, lo), *bounded, (hi, None)]


def split_range(
    rng: IdRange, width_hint: int, pieces: int = 4, span: tuple[int, int] | None = None
) -> list[IdRange]:
    """Split a range whose answer was cut at the limit.

    A bounded range is cut into ``pieces`` equal parts. An open range is split at the edge of
    the estimated id ``span`` when it reaches into it, otherwise into a bounded part of twice
    ``width_hint`` next to its bound and the rest, which stays open.

    Raises:
        QueryLimitError: The range holds a single id, so it cannot be split.
    """
    lo, hi = rng
    width = max(1, width_hint)
    if lo is None and hi is None:
        return [(None, 0), (0, None)]
    if lo is None:
        assert hi is not None
        if span is not None and span[0] < hi:
            return [(None, span[0]), (span[0], hi)]
        return [(None, hi - 2 * width), (hi - 2 * width, hi)]
    if hi is None:
        if span is not None and span[1] > lo:
            return [(lo, span[1]), (span[1], None)]
        return [(lo, lo + 2 * width), (lo + 2 * width, None)]
    if hi - lo <= 1:
        raise QueryLimitError(
            f"the rows with id {lo} alone reach the server's row limit; they cannot be split "
            "further by id (is this a one-to-many join?)"
        )
    pieces = min(pieces, hi - lo)
    step = math.ceil((hi - lo) / pieces)
    edges = list(range(lo, hi, step)) + [hi]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class Partitioner:
    """Runs one query as id-range partitions.

    Args:
        fetch: ``fetch(id_range, limit, offset) -> Chunk``; ``id_range`` None means the query
            unrestricted. Must be thread-safe.
        count: ``count(id_range) -> int`` (the server's ``count=True`` answer), or None when
            the endpoint cannot count.
        max_workers: Partitions fetched at once.
        limit_hint: The server's row limit if known, else None (the default limit is assumed).
        on_learn_limit: Called with the server's limit when a warning reveals it.
    """

    def __init__(
        self,
        fetch: Callable[[IdRange | None, int | None, int | None], Chunk],
        count: Callable[[IdRange | None], int] | None,
        *,
        max_workers: int = 4,
        limit_hint: int | None = None,
        on_learn_limit: Callable[[int], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._count = count
        self.max_workers = max(1, int(max_workers))
        self.limit = limit_hint
        self._on_learn_limit = on_learn_limit
        self._width = 1
        self._span: tuple[int, int] | None = None

    # -- helpers ---------------------------------------------------------------------------
    def _learn(self, chunk: Chunk) -> None:
        if chunk.limit is not None and chunk.limit != self.limit:
            self.limit = chunk.limit
            if self._on_learn_limit is not None:
                self._on_learn_limit(chunk.limit)

    def _get(self, rng: IdRange | None, limit: int | None = None, offset: int | None = None):
        chunk = self._fetch(rng, limit, offset)
        if chunk.cut_at_limit(limit):
            self._learn(chunk)
        return chunk

    def fetch_range(self, rng: IdRange) -> list[Chunk]:
        """Fetch one range completely, splitting it while the server cuts it at the limit."""
        chunk = self._get(rng)
        if not chunk.cut_at_limit():
            return [chunk]
        logger.debug("id range %s reached the row limit %s; splitting", rng, chunk.limit)
        pieces = 4
        lo, hi = rng
        if self._count is not None and lo is not None and hi is not None and self.limit:
            # one count tells how many pieces fit under the limit, instead of splitting blindly
            rows = self._count(rng)
            pieces = max(2, math.ceil(rows / max(1, int(self.limit * FILL))))
        out: list[Chunk] = []
        for sub in split_range(rng, self._width, pieces=pieces, span=self._span):
            out.extend(self.fetch_range(sub))
        return out

    def _bounds(self, size_hint: int | None, sample: pa.Table | None) -> tuple[int, int]:
        """Estimate ``[lo, hi)`` of the matching ids.

        The upper end is probed with count queries (``id >= h`` empty?), starting from the
        table size or the largest id seen, doubling until a probe is empty.
        """
        lo, hi = 1, max(1, size_hint or 1) + 1  # ids usually run from 1 upwards
        if sample is not None and _num_rows(sample):
            hi = max(hi, lo + 2 * _num_rows(sample))
            if isinstance(sample, pa.Table) and "id" in sample.column_names:
                ids = sample.column("id")
                lo = int(pc.min(ids).as_py())
                hi = max(hi, int(pc.max(ids).as_py()) + 1)
            elif isinstance(sample, list) and sample and isinstance(sample[0], dict):
                ids = [r["id"] for r in sample if isinstance(r.get("id"), int)]
                if ids:
                    lo, hi = min(ids), max(hi, max(ids) + 1)
        if self._count is None:
            return lo, hi
        for _ in range(64):
            if self._count((hi, None)) == 0:
                return lo, hi
            hi = lo + 2 * (hi - lo)
        return lo, hi

    def _total_and_bounds(self, size_hint: int | None, sample: pa.Table | None):
        if self._count is None:
            total = _num_rows(sample) * 2 if sample is not None else size_hint or 1
            return total, *self._bounds(size_hint, sample)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="neurodata-count") as pool:
            total_f = pool.submit(self._count, None)
            bounds_f = pool.submit(self._bounds, size_hint, sample)
            return total_f.result(), *bounds_f.result()

    def _partitions(self, total: int, lo: int, hi: int) -> Iterator[Chunk]:
        limit = self.limit or DEFAULT_SERVER_LIMIT
        ranges = plan_ranges(total, lo, hi, limit)
        bounded = [r for r in ranges if r[0] is not None and r[1] is not None]
        self._width = max(1, max(r[1] - r[0] for r in bounded))  # type: ignore[operator]
        self._span = (lo, hi)
        logger.debug("fetching %d rows as %d id ranges over [%d, %d)", total, len(ranges), lo, hi)
        for chunks in imap_bounded(self.fetch_range, ranges, self.max_workers):
            yield from chunks

    # -- entry point -----------------------------------------------------------------------
    def run(
        self,
        *,
        on_limit: OnLimit = "partition",
        limit: int | None = None,
        offset: int | None = None,
        size_hint: Callable[[], int | None] | int | None = None,
        why_not: Callable[[], str | None] | str | None = None,
    ) -> Iterator[Chunk]:
        """Yield the chunks that together hold every row the query asks for.

        Args:
            on_limit: "partition" to split at the limit, "raise" to raise `QueryLimitError`.
            limit: The caller's row limit (None = all rows).
            offset: The caller's offset; when partitioning it is applied client-side, after
                ordering the rows by id range.
            size_hint: Rows the query certainly matches if it has no filters (the table
                count), or a function returning it; when it exceeds the limit the first,
                certainly-cut request is skipped. None when unknown or the query is filtered.
            why_not: Why the query cannot be partitioned (None if it can), or a function
                computing that, evaluated only when partitioning is needed.

        Raises:
            QueryLimitError: The limit was reached and ``on_limit="raise"``, or the query cannot
                be partitioned.
        """
        check_on_limit(on_limit)
        reason: list[str | None] = []

        def blocked() -> str | None:
            if not reason:
                reason.append(why_not() if callable(why_not) else why_not)
            return reason[0]

        guess = self.limit or DEFAULT_SERVER_LIMIT
        known: tuple[int, int, int] | None = None
        if (
            on_limit == "partition"
            and self._count is not None
            and size_hint is not None
            and offset is None
            and (limit is None or limit > guess)
        ):
            try:
                hint = size_hint() if callable(size_hint) else size_hint
            except Exception as exc:  # a missing hint must not stop the query itself
                logger.debug("table size unavailable: %s", exc)
                hint = None
            if hint is not None and hint > guess and blocked() is None:
                known = self._total_and_bounds(hint, None)
                if known[0] >= guess:
                    yield from _take(self._partitions(*known), None, limit)
                    return
        first = self._get(None, limit, offset)
        if not first.cut_at_limit(limit):
            yield first
            return
        message = (
            f"the query reached the server's row limit of {first.limit} rows "
            f"(the answer was cut at {first.num_rows} rows)"
        )
        if on_limit == "raise":
            raise QueryLimitError(
                message + "; pass on_limit='partition' to fetch every row in id-range partitions",
                limit=first.limit,
                rows=first.num_rows,
            )
        problem = blocked()
        if problem is not None:
            raise QueryLimitError(
                f"{message}, and it cannot be partitioned: {problem}",
                limit=first.limit,
                rows=first.num_rows,
            )
        logger.info("%s; fetching every row in id-range partitions", message)
        if known is None:
            known = self._total_and_bounds(None, first.table)
        yield from _take(self._partitions(*known), offset, limit)


def _take(chunks: Iterator[Chunk], offset: int | None, limit: int | None) -> Iterator[Chunk]:
    """Apply a client-side offset and limit over a stream of chunks (stopping early)."""
    skip = offset or 0
    remaining = limit
    for chunk in chunks:
        table = chunk.table
        if skip:
            dropped = min(skip, _num_rows(table))
            table = _slice(table, dropped)
            skip -= dropped
        if remaining is not None:
            table = _slice(table, 0, remaining)
            remaining -= _num_rows(table)
        if table is not chunk.table:
            chunk = Chunk(table, chunk.warnings, chunk.headers, chunk.limit)
        yield chunk
        if remaining is not None and remaining <= 0:
            return
