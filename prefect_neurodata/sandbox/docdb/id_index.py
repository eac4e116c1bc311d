"""Per-collection sorted ``_id`` lists: reads served as an ``_id`` index would serve them.

SecantusDB opens any cursor that is not an equality/``$in`` lookup on an indexed field in time
proportional to the whole collection. With a collection's ``_id`` values sorted in memory
(`IdList`, kept fresh by `IdIndex`), an ``_id``-range, key-set or skip/limit read becomes a
bisect plus an ``$in`` fetch of one page. The lists also hold what is worth keeping between
reads of an unchanged collection (encoded documents, earlier answers), so a write drops them
all at once. The `Store` in ``store.py`` decides which reads go this way.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from bson import Int64, ObjectId
from pymongo.collection import Collection

from prefect_neurodata.sandbox.docdb.config import DEFAULT_DOC_CACHE_BYTES

logger = logging.getLogger("prefect_neurodata.sandbox.docdb")

_RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})
# Encoded read-ahead documents kept per id list (a few 5 MB pages of concurrent readers).
_AHEAD_BYTES = 32_000_000
# Encoded whole documents (no projection) kept per id list: the working set a real DocumentDB
# serves from memory. 15,000 records of ~12 KB take ~180 MB; beyond the budget, documents are
# fetched from MongoDB on every read as before.
DOC_CACHE_BYTES = DEFAULT_DOC_CACHE_BYTES
# Projection key of a read without projection: whole documents, the ones the cache holds.
WHOLE_DOCUMENTS = b""
# Encoded answers of other queries (filters MongoDB must evaluate, counts) kept per id list.
_ANSWER_BYTES = 256_000_000


def _id_kind(value: Any) -> str | None:
    """Comparison class of an ``_id`` whose Python order is MongoDB's order, else None.

    Strings compare by code point (= UTF-8 byte order, MongoDB's binary comparison without a
    collation), numbers numerically, ObjectIds bytewise. Anything else (booleans, NaN, UUIDs,
    dates, documents) is left to MongoDB.
    """
    kind = type(value)
    if kind is str:
        return "str"
    if kind is int or kind is Int64 or (kind is float and value == value):
        return "num"
    if kind is ObjectId:
        return "oid"
    return None


def id_bounds(filter: Any) -> list[tuple[str, Any]] | None:
    """``_id`` range operators of a filter made only of ``_id`` ranges, else None.

    Accepts ``{}``, ``{"_id": {"$gt"|"$gte"|"$lt"|"$lte": v, ...}}`` and any nesting of these
    in a non-empty top-level ``$and`` (e.g. ``{"$and": [{}, {"_id": {"$gt": v}}]}``); every
    bound applies (intersection).
    """
    bounds: list[tuple[str, Any]] = []

    def walk(part: Any) -> bool:
        if not isinstance(part, dict):
            return False
        for key, value in part.items():
            if key == "_id":
                if not isinstance(value, dict) or not value or not set(value) <= _RANGE_OPS:
                    return False
                bounds.extend(value.items())
            elif key == "$and":
                # An empty $and is an error MongoDB must report.
                if not isinstance(value, list) or not value or not all(map(walk, value)):
                    return False
            else:
                return False
        return True

    return bounds if walk(filter) else None


def id_direction(sort: list[tuple[str, Any]] | None) -> int | None:
    """1/-1 for no sort or a sort on ``_id`` alone, else None."""
    if not sort:
        return 1
    if len(sort) != 1 or sort[0][0] != "_id":
        return None
    direction = sort[0][1]
    if isinstance(direction, bool) or direction not in (1, -1):
        return None
    return int(direction)


class IdList:
    """The ``_id`` values of one collection, sorted, and when they were read.

    Attributes:
        count: number of documents.
        ids: sorted ``_id`` values, or None when they are not all of one comparable kind
            (see :func:`_id_kind`); then only ``count`` is used.
        kind: that kind.
        built: ``time.monotonic()`` of the read.
        stamp: the server's write counters just before the read (None: unknown).
        ahead: encoded projected documents read ahead of the next page, by ``(projection
            key, _id)``; served once, then dropped.
        docs: encoded whole documents (no projection) by ``_id``, kept while ``docs_bytes``
            stays within ``docs_budget``: later reads of them never reach MongoDB.
        answers: answers MongoDB computed for other reads (a ``find`` page of a filter it must
            evaluate, a filtered count), by the exact request, within ``_ANSWER_BYTES``: the
            same request is answered again without re-running the query.

        Both live and die with this list, so any write (through the API, or straight to MongoDB
        as seen by the write counters) drops them too, and the next read re-fetches.
    """

    __slots__ = (
        "ahead",
        "ahead_bytes",
        "answers",
        "answers_bytes",
        "built",
        "count",
        "docs",
        "docs_budget",
        "docs_bytes",
        "ids",
        "kind",
        "lock",
        "pending",
        "stamp",
    )

    def __init__(
        self, values: list[Any], stamp: Any = None, docs_budget: int = DOC_CACHE_BYTES
    ) -> None:
        self.count = len(values)
        self.built = time.monotonic()
        self.stamp = stamp
        self.ahead: dict[tuple[bytes, Any], bytes] = {}
        self.ahead_bytes = 0
        self.docs: dict[Any, bytes] = {}
        self.docs_bytes = 0
        self.docs_budget = docs_budget
        self.answers: dict[tuple, Any] = {}
        self.answers_bytes = 0
        # Running read-aheads by (projection key, first _id they fetch).
        self.pending: dict[tuple[bytes, Any], Future] = {}
        self.lock = threading.Lock()
        kinds = {_id_kind(v) for v in values}
        self.kind = next(iter(kinds)) if len(kinds) == 1 else None
        self.ids: list[Any] | None = None
        if not values:
            self.ids = []
        elif self.kind is not None:
            values.sort()
            self.ids = values

    def span(self, bounds: list[tuple[str, Any]]) -> tuple[int, int] | None:
        """``(lo, hi)`` positions of the ids within ``bounds``, or None if Mongo must decide."""
        ids = self.ids
        if ids is None:
            return None
        lo, hi = 0, len(ids)
        if not ids:
            return lo, hi
        for op, value in bounds:
            if _id_kind(value) != self.kind:
                return None  # a cross-type comparison: MongoDB's type brackets apply
            if op == "$gt":
                lo = max(lo, bisect.bisect_right(ids, value))
            elif op == "$gte":
                lo = max(lo, bisect.bisect_left(ids, value))
            elif op == "$lt":
                hi = min(hi, bisect.bisect_left(ids, value))
            else:
                hi = min(hi, bisect.bisect_right(ids, value))
        return lo, max(lo, hi)

    def cached(self, pk: bytes, ids: Iterable[Any]) -> dict[Any, bytes]:
        """Encoded documents of ``ids`` already in memory (call with ``lock`` held)."""
        if pk == WHOLE_DOCUMENTS:
            docs = self.docs
            return {i: docs[i] for i in ids if i in docs}
        ahead = self.ahead
        return {i: ahead[(pk, i)] for i in ids if (pk, i) in ahead}

    def remember(self, key: tuple, answer: Any, size: int) -> None:
        """Keep the answer to the request ``key`` (call with ``lock`` held)."""
        if key not in self.answers and self.answers_bytes + size <= _ANSWER_BYTES:
            self.answers[key] = answer
            self.answers_bytes += size

    def keep(self, pk: bytes, parts: dict[Any, bytes], *, ahead: bool) -> None:
        """Remember encoded documents (call with ``lock`` held).

        Whole documents go to ``docs`` while the budget allows; projected ones go to the
        read-ahead buffer only when they were ``ahead`` of the reader (bounded, oldest out).
        """
        if pk == WHOLE_DOCUMENTS:
            for doc_id, part in parts.items():
                if doc_id in self.docs:
                    continue
                if self.docs_bytes + len(part) > self.docs_budget:
                    return
                self.docs[doc_id] = part
                self.docs_bytes += len(part)
            return
        if not ahead:
            return
        for doc_id, part in parts.items():
            if (pk, doc_id) not in self.ahead:
                self.ahead[(pk, doc_id)] = part
                self.ahead_bytes += len(part)
        while self.ahead_bytes > _AHEAD_BYTES and self.ahead:
            self.ahead_bytes -= len(self.ahead.pop(next(iter(self.ahead))))


class IdIndex:
    """Per-collection sorted ``_id`` lists, read with one ``_id``-only projection query.

    SecantusDB opens any cursor that is not an equality/``$in`` lookup on an indexed field in
    time proportional to the whole collection, while ``$in`` on ``_id`` is O(ids). With the
    sorted ids in memory, range, key-set and skip/limit reads become a bisect plus an ``$in``
    fetch of one page, as a real server serves them from its ``_id`` index.

    Freshness: every write through the API drops all lists (:meth:`clear`), so the next read
    re-reads its list and sees the write. Writes made straight to MongoDB (the seeder, tests)
    are caught by ``probe``: the server's insert/update/delete counters (``serverStatus``
    ``opcounters``, well under a millisecond), read on each use; when they moved since the list
    was read, it is read again before answering. Without a probe (the command failed), a list
    older than ``ttl`` seconds is re-read in the background while the old one keeps serving
    (the read costs a full scan, seconds on a big collection), so direct writes show up within
    ``ttl`` plus that read. An id that vanished (a fetch misses it) drops the list at once.
    """

    def __init__(
        self,
        ttl: float,
        probe: Callable[[], Any] | None = None,
        docs_budget: int = DOC_CACHE_BYTES,
    ) -> None:
        self.ttl = ttl
        self.probe = probe
        self.docs_budget = docs_budget
        self.generation = 0
        self.builds = 0
        self._lists: dict[str, IdList] = {}
        self._building: dict[str, threading.Lock] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def _stamp(self) -> Any:
        probe = self.probe
        if probe is None:
            return None
        try:
            return probe()
        except Exception:  # e.g. not authorised: fall back to the TTL
            logger.warning("write counters unavailable; _id lists refresh by TTL", exc_info=True)
            self.probe = None
            return None

    def get(self, coll: Collection) -> IdList:
        """The collection's id list, read now if missing or outdated (one reader at a time)."""
        name = coll.full_name
        found = self._lists.get(name)
        stamp = self._stamp() if found is not None else None
        if found is not None:
            if stamp is not None and stamp == found.stamp:
                return found
            if stamp is None:
                if time.monotonic() - found.built > self.ttl:
                    self._refresh_later(coll)
                return found
        with self._lock:
            building = self._building.setdefault(name, threading.Lock())
        with building:
            found = self._lists.get(name)
            if found is not None and (stamp is None or found.stamp == stamp):
                return found
            return self._build(coll)

    def _build(self, coll: Collection) -> IdList:
        generation = self.generation
        stamp = self._stamp()  # before the read: a write during it changes the counters
        with coll.find({}, {"_id": 1}, batch_size=100_000) as cursor:
            found = IdList([doc["_id"] for doc in cursor], stamp, self.docs_budget)
        with self._lock:
            self.builds += 1
            # A write that landed while reading may be missing from the list: don't keep it.
            if generation == self.generation:
                self._lists[coll.full_name] = found
        return found

    def _refresh_later(self, coll: Collection) -> None:
        name = coll.full_name
        with self._lock:
            if name in self._refreshing:
                return
            self._refreshing.add(name)

        def run() -> None:
            try:
                with self._building.setdefault(name, threading.Lock()):
                    self._build(coll)
            except Exception:  # the old list keeps serving; the next expiry retries
                logger.warning("could not refresh the _id list of %s", name, exc_info=True)
            finally:
                with self._lock:
                    self._refreshing.discard(name)

        threading.Thread(target=run, name="docdb-id-list", daemon=True).start()

    def drop(self, name: str) -> None:
        """Forget one collection's list."""
        with self._lock:
            self.generation += 1
            self._lists.pop(name, None)

    def clear(self) -> None:
        """Forget every list (after a write through the API)."""
        with self._lock:
            self.generation += 1
            self._lists.clear()
