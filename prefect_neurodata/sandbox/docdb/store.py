"""MongoDB reads of the DocDB stand-in: the `Store` and the databases it serves.

`Store` owns the MongoDB client and answers ``find``, ``count_documents`` and ``aggregate``
under the gateway's byte budget, choosing per request between the cached sorted ``_id`` lists
(``id_index.py``), a cursor left open by the previous page (``pages.py``) and a fresh query.
Writes are in ``writes.py``; every write through the API calls `Store.invalidate`.

Everything here is synchronous (pymongo) and runs in a worker thread of the ASGI app.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pymongo
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from prefect_neurodata.sandbox.docdb.errors import bad_request
from prefect_neurodata.sandbox.docdb.id_index import (
    DOC_CACHE_BYTES,
    WHOLE_DOCUMENTS,
    IdIndex,
    IdList,
    id_bounds,
    id_direction,
)
from prefect_neurodata.sandbox.docdb.pages import (
    CursorCache,
    OpenCursor,
    PageTooLarge,
    dumps,
    encode_capped,
    json_key,
    keeps_id,
    keyset_base,
)
from prefect_neurodata.sandbox.docdb.writes import UNIQUE_FIELD, ensure_unique_locations

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
# Requests with a limit at least this large are treated as pages of a longer read.
PAGER_MIN_LIMIT = 50
# ``_id`` batch of one ``$in`` fetch; SecantusDB answers it from the ``_id`` index in O(batch).
_MAX_IN_BATCH = 2_000
# Read-aheads running or queued at once per id list (e.g. one per concurrent reader).
_AHEAD_RUNNING = 4


def database_name(version: str, db: str) -> str:
    """Physical database behind ``/{version}/{db}``."""
    return db if version == "v1" else f"{db}_v2"


def _ids_only(projection: dict | None) -> bool:
    """Whether ``projection`` keeps ``_id`` alone (``{"_id": 1}``): served from the id list."""
    return (
        projection is not None
        and list(projection) == ["_id"]
        and projection["_id"] in (1, True)
        and not isinstance(projection["_id"], float)
    )


class _Find(NamedTuple):
    """One ``find`` request as the store's read paths pass it along (see `Store.find_page`)."""

    filter: dict
    projection: dict | None
    sort: list[tuple[str, Any]] | None
    limit: int
    skip: int
    cap: int
    short_pages: bool


class _StaleIds(Exception):
    """An ``_id`` of the cached list is no longer in the collection (a direct write)."""


class Store:
    """pymongo access for the stand-in (collections cached, page-size estimates kept).

    Args:
        uri: MongoDB URI.
        id_list_ttl: seconds a collection's cached ``_id`` list is trusted when the server's
            write counters cannot be read (see :class:`IdIndex`).

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
        self._cursors = CursorCache()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docdb-read-ahead")
        self._ids = IdIndex(id_list_ttl, self._write_counters, doc_cache_bytes)
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
        # The answer lives with the collection's id list, so any write drops it (see IdList).
        id_list = self._ids_of(coll)
        key = (
            "find",
            json_key(filter),
            json_key(projection),
            json_key(sort),
            limit,
            skip,
            cap,
            short_pages,
        )
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
        query_key = (coll.full_name, json_key(filter), json_key(projection), json_key(sort))
        keyset = keyset_base(filter, sort, skip, projection)
        entry = self._cursors.take(query_key, skip, keyset, coll.full_name, json_key(projection))
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
        keyset_ok = sort == [("_id", 1)] and keeps_id(projection)
        entry = OpenCursor(
            cursor,
            query_key,
            skip,
            (coll.full_name, json_key(base_filter), json_key(projection)) if keyset_ok else None,
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
        bounds = id_bounds(filter)
        direction = id_direction(sort)
        if bounds is None or direction is None or not keeps_id(projection):
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
                    self._avg_size[(coll.full_name, json_key(projection))] = avg
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
        self, coll: Collection, id_list: IdList, projection: dict | None, ids: list[Any]
    ) -> None:
        """Fetch and encode the likely next page in a worker while the client reads this one."""
        pk = json_key(projection)
        with id_list.lock:
            for key in [k for k, f in id_list.pending.items() if f.done()]:
                del id_list.pending[key]
            if pk == WHOLE_DOCUMENTS:
                ids = [i for i in ids if i not in id_list.docs]
            if not ids or len(id_list.pending) >= _AHEAD_RUNNING or (pk, ids[0]) in id_list.ahead:
                return
            id_list.pending[(pk, ids[0])] = self._pool.submit(
                self._fetch_ahead, coll, id_list, projection, ids
            )

    def _fetch_ahead(
        self, coll: Collection, id_list: IdList, projection: dict | None, ids: list[Any]
    ) -> None:
        pk = json_key(projection)
        try:
            parts = {
                doc["_id"]: dumps(doc)
                for doc in coll.find({"_id": {"$in": ids}}, projection or None, batch_size=len(ids))
            }
        except Exception:  # only an optimisation: the request fetches them itself
            return
        with id_list.lock:
            id_list.keep(pk, parts, ahead=True)

    def _ids_of(self, coll: Collection) -> IdList:
        found = self._ids.get(coll)
        self.stats["id_lists"] = self._ids.builds
        return found

    def _fetch_encode(
        self,
        coll: Collection,
        id_list: IdList,
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
        pk = json_key(projection)
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
                if pk == WHOLE_DOCUMENTS:
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
                if pk == WHOLE_DOCUMENTS:
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

    def _serve(self, entry: OpenCursor, coll: Collection, limit: int, cap: int):
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
        avg = self._avg_size.get((coll.full_name, json_key(projection)))
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
        bounds = id_bounds(filter or {})
        span = id_list.span(bounds) if bounds is not None else None
        if span is not None:
            filtered = span[1] - span[0]
        elif bounds == []:
            filtered = total
        else:
            key = ("count", json_key(filter))
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
