"""Reads under a byte budget: page encoding and the cursors kept open between pages.

The gateway in front of the Lambda caps a response's size, so a ``find`` answer is a JSON array
cut to that cap (`encode_capped`). A client paging through a long read (``skip`` growing by the
records served, or key-set ``{"_id": {"$gt": last}}``) continues the MongoDB cursor of its
previous page (`CursorCache`, `OpenCursor`) instead of opening a new one, which SecantusDB
would pay for with a pass over the whole collection. The `Store` in ``store.py`` decides when
to use them; the encoding here is shared by every read path (and by the routes' error bodies).
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import orjson
from bson import Decimal128, ObjectId

from prefect_neurodata.sandbox.docdb.errors import ApiError, gateway

_ORJSON_OPTS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


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


def json_key(value: Any) -> bytes:
    """Exact, hashable key of a filter, projection or sort (``b""`` when empty).

    Used to recognise a request that repeats or continues an earlier one.
    """
    # Key order is kept: an embedded-document equality match depends on it.
    return orjson.dumps(value, default=_default) if value else b""


def keeps_id(projection: dict | None) -> bool:
    """Whether documents read with ``projection`` still carry their ``_id``."""
    return not projection or projection.get("_id", 1) not in (0, False)


def keyset_base(
    filter: dict, sort: list | None, skip: int, projection: dict | None
) -> tuple[Any, dict] | None:
    """``(X, rest_of_filter)`` for a key-set page request ``{_id: {$gt: X}, ...}`` sorted by _id."""
    if skip or sort != [("_id", 1)] or not keeps_id(projection):
        return None
    bound = filter.get("_id")
    if not isinstance(bound, dict) or list(bound) != ["$gt"]:
        return None
    return bound["$gt"], {k: v for k, v in filter.items() if k != "_id"}


class OpenCursor:
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
        """Close the MongoDB cursor (errors ignored: it may already be gone)."""
        with contextlib.suppress(Exception):
            self.cursor.close()

    def close(self) -> None:
        """Stop the read-ahead and close the cursor."""
        with contextlib.suppress(Exception):
            self.wait()
        self.close_cursor()


class CursorCache:
    """Open cursors awaiting their next page (bounded, idle ones expire)."""

    # SecantusDB keeps a cursor's whole result in memory (~100 MB for 10k records of 10 KB),
    # so only a few paginations stay open, briefly.
    MAX_OPEN = 6
    IDLE_SECONDS = 30.0

    def __init__(self) -> None:
        self._entries: list[OpenCursor] = []
        self._lock = threading.Lock()
        self.generation = 0

    def take(
        self, query_key: tuple, skip: int, keyset: tuple | None, coll_name: str, proj: bytes
    ) -> OpenCursor | None:
        """Remove and return the open cursor that continues this request, if any.

        A cursor continues the request when it ran the same query and has served exactly
        ``skip`` documents, or (``keyset``: ``(last _id, rest of filter)`` of a key-set page
        request, see :func:`keyset_base`) when it last served that ``_id`` for the same rest of
        filter and projection ``proj`` in collection ``coll_name``. Idle cursors expire here.
        """
        with self._lock:
            expired = self._expire()
            found = None
            for i, entry in enumerate(self._entries):
                hit = entry.query_key == query_key and entry.position == skip
                if not hit and keyset is not None and entry.keyset_key is not None:
                    hit = (
                        entry.keyset_key == (coll_name, json_key(keyset[1]), proj)
                        and entry.last_id == keyset[0]
                        and entry.last_id is not None
                    )
                if hit:
                    found = self._entries.pop(i)
                    break
        for old in expired:
            old.close()
        return found

    def put(self, entry: OpenCursor) -> None:
        """Keep ``entry`` for its next page (closed instead if a write happened meanwhile)."""
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
        """Close every open cursor (after a write through the API, or on shutdown)."""
        with self._lock:
            self.generation += 1
            entries, self._entries = self._entries, []
        for entry in entries:
            entry.close()

    def _expire(self) -> list[OpenCursor]:
        now = time.monotonic()
        expired = [e for e in self._entries if now - e.used > self.IDLE_SECONDS]
        if expired:
            self._entries = [e for e in self._entries if now - e.used <= self.IDLE_SECONDS]
        return expired
