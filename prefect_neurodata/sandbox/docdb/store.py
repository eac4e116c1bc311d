"""MongoDB side of the DocDB stand-in: reads under a byte budget and Node-driver-shaped writes.

Everything here is synchronous (pymongo) and runs in a worker thread of the ASGI app.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import orjson
import pymongo
from bson import Decimal128, Int64, ObjectId
from bson.errors import BSONError
from pymongo import (
    DeleteMany,
    DeleteOne,
    InsertOne,
    ReplaceOne,
    UpdateMany,
    UpdateOne,
)
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from prefect_neurodata.sandbox.docdb.config import DEFAULT_DOC_CACHE_BYTES
from prefect_neurodata.sandbox.docdb.errors import ApiError, bad_request, gateway, mongo_error

logger = logging.getLogger("prefect_neurodata.sandbox.docdb")

_ORJSON_OPTS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z

# Databases the gateway exposes; `v2` maps each to "<db>_v2" (the docs name the v2 metadata
# database `metadata_index_v2`, while the client keeps sending `metadata_index`).
DATABASES = ("metadata_index", "schemas", "analysis")
READ_ONLY_FORBIDDEN_STAGES = ("$out", "$merge")

# Fields users and flows filter on (equality / ``$in``, which SecantusDB serves from an index).
# Each version indexes the fields its records have: v1 stamps ``created``/``last_modified``,
# v2 only ``_last_modified``.
INDEXES = {
    "v1": (
        "name",
        "location",
        "created",
        "last_modified",
        "subject.subject_id",
        "data_description.project_name",
        "data_description.modality.abbreviation",
    ),
    "v2": (
        "name",
        "location",
        "_last_modified",
        "subject.subject_id",
        "data_description.project_name",
        "data_description.modalities.abbreviation",
    ),
}
# Asset records are unique by location (reference 7.1: "location ... unique"). A unique index
# enforces it atomically, as a production database would: of N concurrent registrations of one
# location exactly one lands. Records without a string location stay allowed (partial index).
UNIQUE_FIELD = "location"
_UNIQUE_INDEX = "location_unique"
_unique_ready: set[tuple[int, str]] = set()
_unique_lock = threading.Lock()
# Requests with a limit at least this large are treated as pages of a longer read.
PAGER_MIN_LIMIT = 50
STAMP_FIELD = {"v1": "last_modified", "v2": "_last_modified"}


def database_name(version: str, db: str) -> str:
    """Physical database behind ``/{version}/{db}``."""
    return db if version == "v1" else f"{db}_v2"


def now_iso() -> str:
    """UTC now as ISO 8601 with ``Z`` (the format of new records' timestamps)."""
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _default(value: Any) -> Any:
    # What the Node Lambda's JSON.stringify would give for BSON types pymongo can return.
    if isinstance(value, ObjectId | uuid.UUID | Decimal128):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(value: Any) -> bytes:
    """orjson encoding used for every response body."""
    return orjson.dumps(value, default=_default, option=_ORJSON_OPTS)


class PageTooLarge(Exception):
    """A single document (or a whole unpaged result) exceeds the page budget."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def too_large(cap: int) -> ApiError:
    """413 for a response that cannot fit the gateway's payload cap."""
    return gateway(
        413, f"Response payload size exceeded maximum allowed payload size ({cap} bytes)."
    )


def encode_capped(docs: Iterable[dict], cap: int, *, short_pages: bool) -> tuple[bytes, int]:
    """Encode ``docs`` as a JSON array no larger than ``cap`` bytes.

    Each document is encoded exactly once; the array's size is the sum of the parts plus
    brackets and commas, so no second pass is needed.

    Returns:
        ``(body, count)``. With ``short_pages`` the array stops before the first document that
        would overflow (a short page); otherwise overflow raises.

    Raises:
        PageTooLarge: the first document alone overflows, or ``short_pages`` is False and the
            whole result overflows.
    """
    parts: list[bytes] = []
    size = 2  # "[" and "]"
    for doc in docs:
        part = dumps(doc)
        extra = len(part) + (1 if parts else 0)
        if size + extra > cap:
            if parts and short_pages:
                break
            raise PageTooLarge(size + extra)
        parts.append(part)
        size += extra
    return b"[" + b",".join(parts) + b"]", len(parts)


def _key(value: Any) -> bytes:
    # Key order is kept: an embedded-document equality match depends on it.
    return orjson.dumps(value, default=_default) if value else b""


def _ids_only(projection: dict | None) -> bool:
    """Whether ``projection`` keeps ``_id`` alone (``{"_id": 1}``): served from the id list."""
    return (
        projection is not None
        and list(projection) == ["_id"]
        and projection["_id"] in (1, True)
        and not isinstance(projection["_id"], float)
    )


def _keeps_id(projection: dict | None) -> bool:
    return not projection or projection.get("_id", 1) not in (0, False)


def _keyset_base(
    filter: dict, sort: list | None, skip: int, projection: dict | None
) -> tuple[Any, dict] | None:
    """``(X, rest_of_filter)`` for a key-set page request ``{_id: {$gt: X}, ...}`` sorted by _id."""
    if skip or sort != [("_id", 1)] or not _keeps_id(projection):
        return None
    bound = filter.get("_id")
    if not isinstance(bound, dict) or list(bound) != ["$gt"]:
        return None
    return bound["$gt"], {k: v for k, v in filter.items() if k != "_id"}


class _Find(NamedTuple):
    """One ``find`` request as the store's read paths pass it along (see `Store.find_page`)."""

    filter: dict
    projection: dict | None
    sort: list[tuple[str, Any]] | None
    limit: int
    skip: int
    cap: int
    short_pages: bool


class _OpenCursor:
    """A cursor left open between pages, with encoded documents read ahead of the next page.

    After a page is served, a worker thread reads and encodes about one more page into
    ``buffer`` while the client is still receiving and decoding the current one.
    """

    def __init__(self, cursor: Any, query_key: tuple, position: int, keyset_key: tuple | None):
        self.cursor = cursor
        self.query_key = query_key
        self.position = position
        self.keyset_key = keyset_key
        self.last_id: Any = None
        self.buffer: deque[tuple[bytes, Any]] = deque()
        self.source_done = False
        self.error: BaseException | None = None
        self.prefetching: Future | None = None
        self.used = time.monotonic()
        self.generation = 0

    @property
    def done(self) -> bool:
        """No document left to serve."""
        return self.source_done and not self.buffer

    def _pull(self) -> tuple[bytes, Any] | None:
        try:
            doc = next(self.cursor)
        except StopIteration:
            self.source_done = True
            self.close_cursor()
            return None
        return dumps(doc), doc.get("_id")

    def _next(self) -> tuple[bytes, Any] | None:
        if self.buffer:
            return self.buffer.popleft()
        if self.error is not None:
            raise self.error
        if self.source_done:
            return None
        return self._pull()

    def page(self, limit: int, cap: int) -> tuple[bytes, int, bool]:
        """Next page; returns ``(body, count, exhausted)``."""
        self.wait()
        parts: list[bytes] = []
        size = 2
        while not limit or len(parts) < limit:
            item = self._next()
            if item is None:
                break
            part, doc_id = item
            extra = len(part) + (1 if parts else 0)
            if size + extra > cap:
                self.buffer.appendleft(item)
                if not parts:
                    raise PageTooLarge(size + extra)
                break
            parts.append(part)
            size += extra
            self.last_id = doc_id
        self.position += len(parts)
        self.used = time.monotonic()
        return b"[" + b",".join(parts) + b"]", len(parts), self.done

    def prefetch(self, limit: int, cap: int) -> None:
        """Read and encode about one page ahead (runs in a worker thread)."""
        try:
            size = sum(len(part) + 1 for part, _ in self.buffer)
            count = len(self.buffer)
            while not self.source_done and size < cap and (not limit or count < limit):
                item = self._pull()
                if item is None:
                    break
                self.buffer.append(item)
                size += len(item[0]) + 1
                count += 1
        except Exception as exc:  # surfaced to the next page request, which re-queries
            self.error = exc

    def wait(self) -> None:
        """Let a running read-ahead finish before touching the cursor."""
        future, self.prefetching = self.prefetching, None
        if future is not None:
            future.result()

    def close_cursor(self) -> None:
        with contextlib.suppress(Exception):
            self.cursor.close()

    def close(self) -> None:
        """Stop the read-ahead and close the cursor."""
        with contextlib.suppress(Exception):
            self.wait()
        self.close_cursor()


class _CursorCache:
    """Open cursors awaiting their next page (bounded, idle ones expire)."""

    # SecantusDB keeps a cursor's whole result in memory (~100 MB for 10k records of 10 KB),
    # so only a few paginations stay open, briefly.
    MAX_OPEN = 6
    IDLE_SECONDS = 30.0

    def __init__(self) -> None:
        self._entries: list[_OpenCursor] = []
        self._lock = threading.Lock()
        self.generation = 0

    def take(
        self, query_key: tuple, skip: int, keyset: tuple | None, coll_name: str, proj: bytes
    ) -> _OpenCursor | None:
        with self._lock:
            expired = self._expire()
            found = None
            for i, entry in enumerate(self._entries):
                hit = entry.query_key == query_key and entry.position == skip
                if not hit and keyset is not None and entry.keyset_key is not None:
                    hit = (
                        entry.keyset_key == (coll_name, _key(keyset[1]), proj)
                        and entry.last_id == keyset[0]
                        and entry.last_id is not None
                    )
                if hit:
                    found = self._entries.pop(i)
                    break
        for old in expired:
            old.close()
        return found

    def put(self, entry: _OpenCursor) -> None:
        with self._lock:
            if entry.generation != self.generation:  # a write happened while it was serving
                entry.close()
                return
            self._entries.append(entry)
            evicted = self._entries[: -self.MAX_OPEN] if len(self._entries) > self.MAX_OPEN else []
            del self._entries[: len(evicted)]
        for old in evicted:
            old.close()

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            entries, self._entries = self._entries, []
        for entry in entries:
            entry.close()

    def _expire(self) -> list[_OpenCursor]:
        now = time.monotonic()
        expired = [e for e in self._entries if now - e.used > self.IDLE_SECONDS]
        if expired:
            self._entries = [e for e in self._entries if now - e.used <= self.IDLE_SECONDS]
        return expired


_RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})
# ``_id`` batch of one ``$in`` fetch; SecantusDB answers it from the ``_id`` index in O(batch).
_MAX_IN_BATCH = 2_000
# Encoded read-ahead documents kept per id list (a few 5 MB pages of concurrent readers).
_AHEAD_BYTES = 32_000_000
# Read-aheads running or queued at once per id list (e.g. one per concurrent reader).
_AHEAD_RUNNING = 4
# Encoded whole documents (no projection) kept per id list: the working set a real DocumentDB
# serves from memory. 15,000 records of ~12 KB take ~180 MB; beyond the budget, documents are
# fetched from MongoDB on every read as before.
DOC_CACHE_BYTES = DEFAULT_DOC_CACHE_BYTES
# Projection key of a read without projection: whole documents, the ones the cache holds.
_WHOLE = b""
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


def _id_bounds(filter: Any) -> list[tuple[str, Any]] | None:
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


def _id_direction(sort: list[tuple[str, Any]] | None) -> int | None:
    """1/-1 for no sort or a sort on ``_id`` alone, else None."""
    if not sort:
        return 1
    if len(sort) != 1 or sort[0][0] != "_id":
        return None
    direction = sort[0][1]
    if isinstance(direction, bool) or direction not in (1, -1):
        return None
    return int(direction)


class _IdList:
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
        if pk == _WHOLE:
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
        if pk == _WHOLE:
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


class _StaleIds(Exception):
    """An ``_id`` of the cached list is no longer in the collection (a direct write)."""


class _IdIndex:
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
        self._lists: dict[str, _IdList] = {}
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

    def get(self, coll: Collection) -> _IdList:
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

    def _build(self, coll: Collection) -> _IdList:
        generation = self.generation
        stamp = self._stamp()  # before the read: a write during it changes the counters
        with coll.find({}, {"_id": 1}, batch_size=100_000) as cursor:
            found = _IdList([doc["_id"] for doc in cursor], stamp, self.docs_budget)
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


class Store:
    """pymongo access for the stand-in (collections cached, page-size estimates kept).

    Args:
        uri: MongoDB URI.
        id_list_ttl: seconds a collection's cached ``_id`` list is trusted when the server's
            write counters cannot be read (see :class:`_IdIndex`).

    Attributes:
        use_id_lists: serve ``_id``-range/unfiltered reads and counts from the cached ``_id``
            lists (default); False sends every query to MongoDB (the reference behaviour the
            tests compare against).
    """

    ID_LIST_TTL = 30.0

    def __init__(
        self,
        uri: str,
        *,
        id_list_ttl: float = ID_LIST_TTL,
        doc_cache_bytes: int = DOC_CACHE_BYTES,
    ) -> None:
        kwargs: dict[str, Any] = {"uuidRepresentation": "standard"}
        if "serverselectiontimeoutms" not in uri.lower():
            # Fail fast (502) rather than hang for pymongo's default 30 s when the DB is down.
            kwargs["serverSelectionTimeoutMS"] = 5000
        # Loopback SecantusDB advertises a replica set; talk to the given host itself.
        if "directconnection" not in uri.lower() and not uri.startswith("mongodb+srv"):
            hosts = uri.split("://", 1)[-1].split("/", 1)[0]
            if "," not in hosts:
                kwargs["directConnection"] = True
        self.client: pymongo.MongoClient = pymongo.MongoClient(uri, **kwargs)
        self._collections: dict[tuple[str, str, str], Collection] = {}
        self._avg_size: dict[tuple, float] = {}
        self._lock = threading.Lock()
        self._cursors = _CursorCache()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docdb-read-ahead")
        self._ids = _IdIndex(id_list_ttl, self._write_counters, doc_cache_bytes)
        self.use_id_lists = True
        # find requests answered by a new query, by continuing an open cursor, or from the
        # cached _id list (``id_lists``: how often such a list was read; ``read_ahead``:
        # documents served from the id path's read-ahead or whole-document cache;
        # ``cached_docs``: those of them served from the whole-document cache; ``answered``:
        # finds and counts answered again from an earlier identical request).
        self.stats = {
            "queries": 0,
            "continued": 0,
            "indexed": 0,
            "id_lists": 0,
            "read_ahead": 0,
            "cached_docs": 0,
            "answered": 0,
        }

    def _write_counters(self) -> tuple[int, int, int]:
        """Server-wide insert/update/delete command counts (cheap; any client's writes)."""
        counters = self.client.admin.command("serverStatus")["opcounters"]
        return counters["insert"], counters["update"], counters["delete"]

    def close(self) -> None:
        """Close the cached cursors and the MongoDB client."""
        self._cursors.clear()
        self._pool.shutdown(wait=True)
        self.client.close()

    def ping(self) -> None:
        """Raise if MongoDB is unreachable."""
        self.client.admin.command("ping")

    def collection(self, version: str, db: str, coll: str) -> Collection:
        """Collection behind ``/{version}/{db}/{coll}``."""
        key = (version, db, coll)
        found = self._collections.get(key)
        if found is None:
            found = self.client[database_name(version, db)][coll]
            self._collections[key] = found
        return found

    def ensure_indexes(self) -> None:
        """Create the production indexes of the metadata collections (idempotent)."""
        for version, fields in INDEXES.items():
            coll = self.collection(version, "metadata_index", "data_assets")
            for name in fields:
                if name == UNIQUE_FIELD:
                    ensure_unique_locations(coll)
                else:
                    coll.create_index([(name, pymongo.ASCENDING)])

    # -- reads ---------------------------------------------------------------------------------
    def find_page(
        self,
        coll: Collection,
        *,
        filter: dict,
        projection: dict | None,
        sort: list[tuple[str, Any]] | None,
        limit: int,
        skip: int,
        cap: int,
        short_pages: bool,
    ) -> tuple[bytes, int]:
        """One ``find`` answer under the byte cap (see :func:`encode_capped`).

        Sequential pages reuse the open cursor of the previous page when the request continues
        it exactly: same filter/projection/sort and ``skip`` equal to the records already
        served, or (key-set paging) ``{"_id": {"$gt": <last _id served>}}`` sorted by ``_id``.
        SecantusDB materialises a query's whole result when it opens a cursor (an O(collection)
        cost even for ``limit=1``) but streams ``getMore`` batches cheaply, so without this a
        full read would cost O(N^2). Any write through the API drops the open cursors.

        Before that, a filter that is empty or only ``_id`` ranges, sorted by ``_id`` alone or
        unsorted, is answered from the collection's cached sorted ``_id`` list (see
        :meth:`_find_by_ids`), like a server using its ``_id`` index. Unsorted reads then come
        in ``_id`` order: the stable natural order of this stand-in (MongoDB promises none).
        """
        query = _Find(filter, projection, sort, limit, skip, cap, short_pages)
        served = self._find_by_ids(coll, query)
        if served is not None:
            return served
        if not self.use_id_lists:
            return self._find_mongo(coll, query)
        # The answer lives with the collection's id list, so any write drops it (see _IdList).
        id_list = self._ids_of(coll)
        key = ("find", _key(filter), _key(projection), _key(sort), limit, skip, cap, short_pages)
        with id_list.lock:
            found = id_list.answers.get(key)
        if found is not None:
            self.stats["answered"] += 1
            return found
        answer = self._find_mongo(coll, query)
        with id_list.lock:
            id_list.remember(key, answer, len(answer[0]))
        return answer

    def _find_mongo(self, coll: Collection, query: _Find) -> tuple[bytes, int]:
        """A ``find`` answer computed by MongoDB (continuing an open cursor when it can)."""
        filter, projection, sort, limit, skip, cap, short_pages = query
        if not short_pages:
            return self._find_once(coll, filter, projection, sort, limit, skip, cap)
        query_key = (coll.full_name, _key(filter), _key(projection), _key(sort))
        keyset = _keyset_base(filter, sort, skip, projection)
        entry = self._cursors.take(query_key, skip, keyset, coll.full_name, _key(projection))
        if entry is not None:
            try:
                self.stats["continued"] += 1
                return self._serve(entry, coll, limit, cap)
            except PageTooLarge:
                raise
            except PyMongoError:  # the cached cursor died (timeout, restart): start afresh
                entry.close()
        generation = self._cursors.generation
        self.stats["queries"] += 1
        cursor = coll.find(
            filter,
            projection or None,
            sort=sort or None,
            skip=skip,
            batch_size=self._batch_size(coll, projection, cap, limit),
        )
        base_filter = keyset[1] if keyset else filter
        keyset_ok = sort == [("_id", 1)] and _keeps_id(projection)
        entry = _OpenCursor(
            cursor,
            query_key,
            skip,
            (coll.full_name, _key(base_filter), _key(projection)) if keyset_ok else None,
        )
        entry.generation = generation
        return self._serve(entry, coll, limit, cap)

    def _find_by_ids(self, coll: Collection, query: _Find) -> tuple[bytes, int] | None:
        """A page sliced from the sorted ``_id`` list, or None when the query needs MongoDB.

        The page's ids are cut from the list by bisection (bounds), ``skip`` and ``limit``,
        then fetched with ``{"_id": {"$in": [...]}}`` in batches sized from the average record
        size, and encoded in ``_id`` order under the same byte-cap rules as
        :func:`encode_capped`.
        """
        if not self.use_id_lists:
            return None
        filter, projection, sort, limit, skip, cap, short_pages = query
        bounds = _id_bounds(filter)
        direction = _id_direction(sort)
        if bounds is None or direction is None or not _keeps_id(projection):
            return None
        if projection and any("$" in key for key in projection):
            return None  # positional projections need the query's own array match
        for attempt in range(2):
            id_list = self._ids_of(coll)
            span = id_list.span(bounds)
            if span is None or id_list.ids is None:
                return None
            lo, hi = span
            ids = id_list.ids
            if direction == 1:
                start = min(lo + skip, hi)
                stop = hi if not limit else min(hi, start + limit)
                wanted = ids[start:stop]
            else:
                stop = max(hi - skip, lo)
                start = lo if not limit else max(lo, stop - limit)
                wanted = ids[start:stop][::-1]
            try:
                body, count = self._fetch_encode(
                    coll, id_list, wanted, projection, cap, short_pages
                )
            except _StaleIds:
                self._ids.drop(coll.full_name)
                if attempt:
                    return None
                continue
            self.stats["indexed"] += 1
            if count:
                avg = (len(body) - 2) / count
                with self._lock:
                    self._avg_size[(coll.full_name, _key(projection))] = avg
                if short_pages and not _ids_only(projection):
                    # The ids of the next page (skip += count, or _id beyond the last one).
                    k = min(int(cap / max(avg, 1.0) * 1.1) + 1, limit or _MAX_IN_BATCH)
                    if direction == 1:
                        after = ids[start + count : min(hi, start + count + k)]
                    else:
                        after = ids[max(lo, stop - count - k) : stop - count][::-1]
                    self._read_ahead(coll, id_list, projection, after)
            return body, count
        return None

    def _read_ahead(
        self, coll: Collection, id_list: _IdList, projection: dict | None, ids: list[Any]
    ) -> None:
        """Fetch and encode the likely next page in a worker while the client reads this one."""
        pk = _key(projection)
        with id_list.lock:
            for key in [k for k, f in id_list.pending.items() if f.done()]:
                del id_list.pending[key]
            if pk == _WHOLE:
                ids = [i for i in ids if i not in id_list.docs]
            if not ids or len(id_list.pending) >= _AHEAD_RUNNING or (pk, ids[0]) in id_list.ahead:
                return
            id_list.pending[(pk, ids[0])] = self._pool.submit(
                self._fetch_ahead, coll, id_list, projection, ids
            )

    def _fetch_ahead(
        self, coll: Collection, id_list: _IdList, projection: dict | None, ids: list[Any]
    ) -> None:
        pk = _key(projection)
        try:
            parts = {
                doc["_id"]: dumps(doc)
                for doc in coll.find({"_id": {"$in": ids}}, projection or None, batch_size=len(ids))
            }
        except Exception:  # only an optimisation: the request fetches them itself
            return
        with id_list.lock:
            id_list.keep(pk, parts, ahead=True)

    def _ids_of(self, coll: Collection) -> _IdList:
        found = self._ids.get(coll)
        self.stats["id_lists"] = self._ids.builds
        return found

    def _fetch_encode(
        self,
        coll: Collection,
        id_list: _IdList,
        wanted: list[Any],
        projection: dict | None,
        cap: int,
        short_pages: bool,
    ) -> tuple[bytes, int]:
        """Fetch ``wanted`` by ``_id`` and encode them in that order (see :func:`encode_capped`).

        Documents already read ahead (see :meth:`_read_ahead`) are taken from ``id_list``.

        Raises:
            PageTooLarge: as :func:`encode_capped`.
            _StaleIds: an id is no longer in the collection.
        """
        pk = _key(projection)
        # Only a read-ahead of this very page is worth waiting for.
        running = id_list.pending.get((pk, wanted[0])) if wanted else None
        if running is not None:
            with contextlib.suppress(Exception):
                running.result()
        parts: list[bytes] = []
        size = 2
        avg = self._avg_size.get((coll.full_name, pk))
        pos = 0
        from_memory = 0
        ids_only = _ids_only(projection)

        def done() -> tuple[bytes, int]:
            with id_list.lock:
                if pk == _WHOLE:
                    self.stats["read_ahead"] += from_memory
                    self.stats["cached_docs"] += from_memory
                else:
                    for doc_id in wanted[: len(parts)]:
                        part = id_list.ahead.pop((pk, doc_id), None)
                        if part is not None:
                            id_list.ahead_bytes -= len(part)
                            self.stats["read_ahead"] += 1
            return b"[" + b",".join(parts) + b"]", len(parts)

        while pos < len(wanted):
            if parts:
                avg = (size - 2) / len(parts)
            # About what the rest of the page holds (+10 %), so a page is mostly one fetch.
            n = 100 if avg is None else int((cap - size) / max(avg, 1.0) * 1.1) + 1
            chunk = wanted[pos : pos + max(1, min(n, _MAX_IN_BATCH))]
            pos += len(chunk)
            if ids_only:
                # What MongoDB answers for {"_id": 1}: the ids, which the list already holds.
                ready = {i: dumps({"_id": i}) for i in chunk}
            else:
                with id_list.lock:
                    ready = id_list.cached(pk, chunk)
                from_memory += len(ready)
            missing = [i for i in chunk if i not in ready]
            if missing:
                # Encoded as fetched (also the ones past this page's cap: kept for the next).
                ready.update(
                    (doc["_id"], dumps(doc))
                    for doc in coll.find(
                        {"_id": {"$in": missing}}, projection or None, batch_size=len(missing)
                    )
                )
                if pk == _WHOLE:
                    with id_list.lock:
                        id_list.keep(pk, {i: ready[i] for i in missing if i in ready}, ahead=False)
            for doc_id in chunk:
                part = ready.get(doc_id)
                if part is None:
                    raise _StaleIds(doc_id)
                extra = len(part) + (1 if parts else 0)
                if size + extra > cap:
                    if parts and short_pages:
                        return done()
                    raise PageTooLarge(size + extra)
                parts.append(part)
                size += extra
        return done()

    def _serve(self, entry: _OpenCursor, coll: Collection, limit: int, cap: int):
        try:
            body, count, exhausted = entry.page(limit, cap)
        except BaseException:
            entry.close()
            raise
        if exhausted:
            # Kept (cursor closed) so the client's closing request for the empty page is
            # answered without re-running the query.
            self._cursors.put(entry)
        elif not limit or count < limit or limit >= PAGER_MIN_LIMIT:
            entry.prefetching = self._pool.submit(entry.prefetch, limit, cap)
            self._cursors.put(entry)
        else:
            # A small one-off query (e.g. limit=1): an open SecantusDB cursor holds the whole
            # materialised result in the daemon's memory, so do not keep it around.
            entry.close()
        if count:
            key = (coll.full_name, entry.query_key[2])
            with self._lock:
                self._avg_size[key] = (len(body) - 2) / count
        return body, count

    def _batch_size(self, coll: Collection, projection: dict | None, cap: int, limit: int) -> int:
        avg = self._avg_size.get((coll.full_name, _key(projection)))
        # About one page per batch: the default (101 docs, then 16 MB) is either many round
        # trips or far more than a page.
        batch = 101 if avg is None else max(101, min(int(cap / avg * 1.1) + 1, 10_000))
        return min(batch, limit) if limit else batch

    def _find_once(self, coll, filter, projection, sort, limit, skip, cap) -> tuple[bytes, int]:
        cursor = coll.find(
            filter,
            projection or None,
            sort=sort or None,
            skip=skip,
            limit=limit,
            batch_size=self._batch_size(coll, projection, cap, limit),
        )
        try:
            return encode_capped(cursor, cap, short_pages=False)
        finally:
            cursor.close()

    def invalidate(self) -> None:
        """Close every cached cursor and drop the ``_id`` lists (after each write via the API)."""
        self._ids.clear()
        self._cursors.clear()

    def count(self, coll: Collection, filter: dict | None) -> dict[str, int]:
        """``count_documents`` answer.

        The total (and the filtered count of an empty or ``_id``-range-only filter) comes from
        the cached ``_id`` list, as a server reads it from collection metadata / its index;
        other filters are counted by MongoDB.
        """
        if not self.use_id_lists:
            total = coll.estimated_document_count()
            filtered = total if not filter else coll.count_documents(filter)
            return {"total_record_count": total, "filtered_record_count": filtered}
        id_list = self._ids_of(coll)
        total = id_list.count
        bounds = _id_bounds(filter or {})
        span = id_list.span(bounds) if bounds is not None else None
        if span is not None:
            filtered = span[1] - span[0]
        elif bounds == []:
            filtered = total
        else:
            key = ("count", _key(filter))
            with id_list.lock:
                found = id_list.answers.get(key)
            if found is None:
                found = coll.count_documents(filter or {})
                with id_list.lock:
                    id_list.remember(key, found, 64)
            else:
                self.stats["answered"] += 1
            filtered = found
        return {"total_record_count": total, "filtered_record_count": filtered}

    def aggregate(self, coll: Collection, pipeline: list, cap: int) -> bytes:
        """Run a read-only pipeline; the whole result must fit ``cap``."""
        for stage in pipeline:
            for name in stage:
                if name in READ_ONLY_FORBIDDEN_STAGES:
                    raise bad_request(
                        f"Pipeline stage {name} is not allowed: aggregations are read-only."
                    )
        with coll.aggregate(pipeline) as cursor:
            body, _ = encode_capped(cursor, cap, short_pages=False)
        return body


def ensure_unique_locations(coll: Collection) -> bool:
    """Make ``location`` unique in ``coll`` with a unique index (once per process and collection).

    A plain ``location`` index left by an older stand-in is replaced. When existing records
    already share a location the index cannot be built: that is logged and False returned (the
    callers then fall back to their check-before-insert).
    """
    key = (id(coll.database.client), coll.full_name)
    if key in _unique_ready:
        return True
    with _unique_lock:
        if key in _unique_ready:
            return True
        try:
            info = coll.index_information()
            for name, spec in info.items():
                if spec.get("key") == [(UNIQUE_FIELD, 1)] and not spec.get("unique"):
                    coll.drop_index(name)
            coll.create_index(
                [(UNIQUE_FIELD, pymongo.ASCENDING)],
                name=_UNIQUE_INDEX,
                unique=True,
                partialFilterExpression={UNIQUE_FIELD: {"$type": "string"}},
            )
        except PyMongoError as exc:
            logger.error("no unique index on %s.%s: %s", coll.full_name, UNIQUE_FIELD, exc)
            return False
        _unique_ready.add(key)
        return True


def run_mongo(fn, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` translating MongoDB failures into the Lambda's 400 answers."""
    try:
        return fn(*args, **kwargs)
    except BulkWriteError:
        raise
    except OperationFailure as exc:
        details = exc.details or {}
        raise mongo_error(str(details.get("errmsg") or exc), exc.code) from None
    except (BSONError, TypeError, ValueError) as exc:
        raise mongo_error(str(exc), None, "MongoInvalidArgumentError") from None
    except PyMongoError as exc:
        logger.warning("MongoDB failed, answering 502: %s", exc)
        raise gateway(502, "Internal server error") from exc


# -- writes ------------------------------------------------------------------------------------
def parse_upsert(value: Any, where: str) -> bool:
    """The client sends ``"True"`` (a string); booleans and ``"False"`` are accepted too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_request(f'{where}: \'upsert\' must be true/false or "True"/"False", got {value!r}')


def stamp_update(update: Any, field: str | None, stamp: str, where: str) -> Any:
    """Validate an update document and add the server's modification stamp."""
    if isinstance(update, list):
        if not all(isinstance(stage, dict) for stage in update) or not update:
            raise mongo_error(
                f"{where}: an update pipeline must be a non-empty array of stages", None
            )
        return [*update, {"$set": {field: stamp}}] if field else update
    if not isinstance(update, dict) or not update:
        raise mongo_error(
            f"{where}: Update document requires atomic operators", None, "MongoInvalidArgumentError"
        )
    for key in update:
        if not key.startswith("$"):
            raise mongo_error(
                f"{where}: Update document requires atomic operators (got key {key!r})",
                None,
                "MongoInvalidArgumentError",
            )
    if field is None:
        return update
    update = dict(update)
    set_doc = update.get("$set", {})
    if not isinstance(set_doc, dict):
        raise mongo_error(f"{where}: $set must be an object, got {set_doc!r}")
    update["$set"] = {**set_doc, field: stamp}
    return update


def _require_object(value: Any, name: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise bad_request(f"{where}: '{name}' must be a JSON object, got {value!r}")
    return value


def _check_keys(body: dict, required: set[str], optional: set[str], where: str) -> None:
    missing = sorted(required - set(body))
    if missing:
        raise bad_request(f"{where}: missing required field(s) {missing}")
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise bad_request(
            f"{where}: unknown field(s) {unknown}; allowed: {sorted(required | optional)}"
        )


def insert_one(coll: Collection, doc: Any, field: str | None) -> dict:
    """``insert_one``: the body is the record; a missing ``_id`` gets a UUID4 string."""
    doc = _require_object(doc, "body", "insert_one")
    doc = dict(doc)
    if "_id" not in doc or doc["_id"] is None:
        doc["_id"] = str(uuid.uuid4())
    if field:
        doc[field] = now_iso()
    result = run_mongo(coll.insert_one, doc)
    return {"acknowledged": True, "insertedId": result.inserted_id}


def update_one(coll: Collection, body: Any, field: str | None) -> dict:
    """``update_one`` with ``{"filter", "update", "upsert"?}``."""
    body = _require_object(body, "body", "update_one")
    _check_keys(body, {"filter", "update"}, {"upsert", "arrayFilters"}, "update_one")
    filt = _require_object(body["filter"], "filter", "update_one")
    upsert = parse_upsert(body.get("upsert", False), "update_one")
    update = stamp_update(body["update"], field, now_iso(), "update_one")
    kwargs: dict[str, Any] = {"upsert": upsert}
    if "arrayFilters" in body:
        kwargs["array_filters"] = body["arrayFilters"]
    result = run_mongo(coll.update_one, filt, update, **kwargs)
    return {
        "acknowledged": True,
        "modifiedCount": result.modified_count,
        "upsertedId": result.upserted_id,
        "upsertedCount": 1 if result.upserted_id is not None else 0,
        "matchedCount": result.matched_count,
    }


def delete(coll: Collection, body: Any, many: bool) -> dict:
    """``delete_one`` / ``delete_many`` with ``{"filter"}``."""
    where = "delete_many" if many else "delete_one"
    body = _require_object(body, "body", where)
    _check_keys(body, {"filter"}, set(), where)
    filt = _require_object(body["filter"], "filter", where)
    fn = coll.delete_many if many else coll.delete_one
    result = run_mongo(fn, filt)
    return {"acknowledged": True, "deletedCount": result.deleted_count}


_BULK_NAMES = {
    "insertone": "insertOne",
    "updateone": "updateOne",
    "updatemany": "updateMany",
    "replaceone": "replaceOne",
    "deleteone": "deleteOne",
    "deletemany": "deleteMany",
}


def _bulk_op(index: int, item: Any, field: str | None, stamp: str) -> Any:
    where = f"bulk_write operation [{index}]"
    if not isinstance(item, dict) or len(item) != 1:
        raise bad_request(
            f"{where}: must be an object with exactly one key among {sorted(_BULK_NAMES.values())}"
            f" (e.g. UpdateOne), got {item!r}"[:500]
        )
    ((name, spec),) = item.items()
    kind = _BULK_NAMES.get(name.lower())
    if kind is None:
        raise bad_request(
            f"{where}: unknown operation {name!r}; allowed: {sorted(_BULK_NAMES.values())}"
        )
    spec = _require_object(spec, name, where)
    if kind == "insertOne":
        _check_keys(spec, {"document"}, set(), where)
        doc = dict(_require_object(spec["document"], "document", where))
        if doc.get("_id") is None:
            doc["_id"] = str(uuid.uuid4())
        if field:
            doc[field] = stamp
        return InsertOne(doc)
    if kind in ("updateOne", "updateMany"):
        _check_keys(spec, {"filter", "update"}, {"upsert", "arrayFilters"}, where)
        filt = _require_object(spec["filter"], "filter", where)
        update = stamp_update(spec["update"], field, stamp, where)
        upsert = parse_upsert(spec.get("upsert", False), where)
        cls = UpdateOne if kind == "updateOne" else UpdateMany
        return cls(filt, update, upsert=upsert, array_filters=spec.get("arrayFilters"))
    if kind == "replaceOne":
        _check_keys(spec, {"filter", "replacement"}, {"upsert"}, where)
        filt = _require_object(spec["filter"], "filter", where)
        replacement = dict(_require_object(spec["replacement"], "replacement", where))
        if any(k.startswith("$") for k in replacement):
            raise mongo_error(
                f"{where}: Replacement document must not contain atomic operators",
                None,
                "MongoInvalidArgumentError",
            )
        if field:
            replacement[field] = stamp
        return ReplaceOne(filt, replacement, upsert=parse_upsert(spec.get("upsert", False), where))
    _check_keys(spec, {"filter"}, set(), where)
    filt = _require_object(spec["filter"], "filter", where)
    return DeleteOne(filt) if kind == "deleteOne" else DeleteMany(filt)


def _bulk_shape(raw: Mapping[str, Any], inserted: list[dict]) -> dict:
    return {
        "ok": 1,
        "writeErrors": [
            {"index": e.get("index"), "code": e.get("code"), "errmsg": e.get("errmsg")}
            for e in raw.get("writeErrors", [])
        ],
        "insertedIds": inserted,
        "nInserted": raw.get("nInserted", 0),
        "nUpserted": raw.get("nUpserted", 0),
        "nMatched": raw.get("nMatched", 0),
        "nModified": raw.get("nModified", 0),
        "nRemoved": raw.get("nRemoved", 0),
        "upserted": [{"index": u["index"], "_id": u["_id"]} for u in raw.get("upserted", [])],
    }


def bulk_write(coll: Collection, body: Any, field: str | None) -> tuple[int, dict]:
    """Ordered ``bulk_write`` of Node-driver operations; returns ``(status, result)``.

    On a write error the batch stops (ordered, like the driver's default) and the answer is a
    400 whose body still carries the counts and the failing ``index``, so a caller knows exactly
    which operations landed.
    """
    if not isinstance(body, list):
        raise bad_request(
            f"bulk_write: body must be a JSON array of operations, got {body!r}"[:500]
        )
    if not body:
        raise mongo_error(
            "Invalid BulkOperation, Batch cannot be empty", None, "MongoInvalidArgumentError"
        )
    stamp = now_iso()
    ops = [_bulk_op(i, item, field, stamp) for i, item in enumerate(body)]
    inserted = [
        {"index": i, "_id": op._doc["_id"]} for i, op in enumerate(ops) if isinstance(op, InsertOne)
    ]
    try:
        result = run_mongo(coll.bulk_write, ops, ordered=True)
    except BulkWriteError as exc:
        raw = exc.details
        errors = raw.get("writeErrors") or [{}]
        stop = errors[0].get("index", len(ops))
        # Ordered: only operations before the first failing one were applied.
        shape = _bulk_shape(raw, [d for d in inserted if d["index"] < stop])
        first = shape["writeErrors"][0] if shape["writeErrors"] else {}
        shape = {
            "error": "MongoBulkWriteError",
            "detail": first.get("errmsg", "bulk write failed"),
            **shape,
        }
        return 400, shape
    return 200, _bulk_shape(result.bulk_api_result, inserted)
