"""Clients of the AIND DocDB REST API (the API Gateway in front of AWS DocumentDB).

Same classes, methods, arguments and defaults as ``aind_data_access_api.document_db``, speaking
the same wire protocol (``{scheme}://{host}/{version}/{database}/{collection}/{operation}``;
reads public, writes and admin calls signed with SigV4 for ``execute-api``). What differs:

* every request has a timeout and transient failures (connection errors, 429, 502-504) are
  retried with backoff; signed requests are re-signed on every attempt (`HttpClient`);
* ``host`` may carry an ``http://`` or ``https://`` scheme (``https`` when absent);
* `Client.retrieve_docdb_records` without a ``sort`` pages by ``_id`` key set (each request
  asks for ``_id`` after the last one received, the server's payload cap sizing each page):
  O(N) work for the server instead of skip/limit's re-scans, and every record exactly once
  even when pages come back short; with a ``sort`` it pages with skip/limit like the official
  client;
* `Client.upsert_list_of_docdb_records` sends its chunks concurrently and raises
  `BulkWriteFailed` naming the ``_id``s that did not land instead of returning unchecked
  responses;
* records, ids and filters may hold `uuid.UUID`, `datetime.datetime` (sent as ISO 8601; aware
  values in UTC with ``Z``, see `_wire.format_datetime`) and numpy values;
* bad input (a record without ``_id``, an unserialisable value, a record over the gateway's
  10 MB request limit, a malformed S3 location) raises before any request is sent, naming it.

Example:
    ```python
    from prefect_neurodata.clients.aind.document_db import MetadataDbClient

    with MetadataDbClient(host="api.allenneuraldynamics.org", version="v2") as client:
        count = client._count_records({"subject.subject_id": "731015"})
        records = client.retrieve_docdb_records(
            filter_query={"subject.subject_id": "731015"}, projection={"name": 1}
        )
    ```
"""

from __future__ import annotations

import io
import logging
from collections.abc import Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import requests
from typing_extensions import Self

from prefect_neurodata.clients import http
from prefect_neurodata.clients.aind import _wire
from prefect_neurodata.clients.aind.utils import validate_s3_location
from prefect_neurodata.clients.concurrency import PicklableLock
from prefect_neurodata.constants import DocDbVersion
from prefect_neurodata.errors import NeurodataError

if TYPE_CHECKING:
    import boto3

logger = logging.getLogger("prefect_neurodata.aind.document_db")

_ID_SORT = {"_id": 1}
# Ranges of a concurrent read hold this share of the first page's record count, so that most
# come back whole in one request despite uneven record sizes.
_RANGE_FILL = 0.9
# CPython's sys.getsizeof overhead of a compact ASCII str: the official client measures each
# record as getsizeof(json string) = len + 49, and chunk boundaries follow that measure.
_STR_OVERHEAD = 49
_JSON_HEADERS = {"Content-Type": "application/json"}

DEFAULT_RETRY = http.RetryPolicy(statuses=http.TRANSIENT_STATUSES | {500})
"""Retry policy of the DocDB clients: the shared transient statuses plus 500, because the
gateway surfaces a failed Lambda invocation as a 500/502. 500 is retried only for idempotent
requests (reads, upserts and deletes keyed by ``_id``), never for inserts without ``_id``,
registrations or QC submissions."""


PARALLEL_PAGE_BYTES = 1_000_000
"""A page smaller than this (bytes on the wire) was certainly not cut by the server's payload
cap (5-6 MB). A full read's first page at least this large, and not shown whole by the id read
sent along with it, is followed by concurrent ``_id`` ranges; an id page below it lists every
matching record. `Client.parallel_page_bytes` overrides it per client."""


def _is_duplicate_key(exc: http.ServiceError) -> bool:
    """Whether MongoDB refused a write as a duplicate key (E11000, code 11000)."""
    if exc.status_code != 400 or exc.response is None:
        return False
    return "E11000" in exc.response.text  # MongoDB's message for this error starts with it


def _acknowledged_insert(like: requests.Response | None, inserted_id: Any) -> requests.Response:
    """The success answer ``insert_one`` would have given, for an insert whose answer was lost."""
    answer = requests.Response()
    answer.status_code = 200
    answer.reason = "OK"
    answer.headers["Content-Type"] = "application/json"
    # requests keeps a read body in this attribute; filling it makes .json()/.content work.
    answer._content = http.dumps({"acknowledged": True, "insertedId": inserted_id})
    if like is not None:
        answer.url, answer.request, answer.encoding = like.url, like.request, "utf-8"
    return answer


class BulkWriteFailed(requests.HTTPError, NeurodataError):
    """Some chunks of `Client.upsert_list_of_docdb_records` did not land.

    Raised after every chunk was attempted. Upserts are keyed by ``_id``, so calling the method
    again with the records named in ``failed_ids`` (or with all of them) is safe.

    Attributes:
        failed_ids: ``_id`` of every record that did not land or could not be confirmed.
        errors: One exception per failed chunk.
        responses: The responses of the chunks that succeeded, in chunk order.
    """

    def __init__(
        self,
        failed_ids: list[Any],
        errors: list[BaseException],
        responses: list[requests.Response],
        total: int,
    ) -> None:
        self.failed_ids = failed_ids
        self.errors = errors
        self.responses = responses
        shown = ", ".join(repr(i) for i in failed_ids[:20])
        more = f" and {len(failed_ids) - 20} more" if len(failed_ids) > 20 else ""
        first = f"; first error: {errors[0]}" if errors else ""
        super().__init__(
            f"{len(failed_ids)} of {total} records did not land (_id {shown}{more}){first}",
            response=getattr(errors[0], "response", None) if errors else None,
        )


def _split_host(host: str) -> tuple[str, str]:
    """``(scheme, host)`` from a host that may carry an explicit http(s) scheme."""
    if not isinstance(host, str) or not host.strip("/ "):
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    scheme = "https"
    rest = host.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"host={host!r}: the scheme must be http:// or https://")
    rest = rest.strip("/")
    if not rest:
        raise ValueError(f"host={host!r} has no host name")
    return scheme, rest


def _with_id(projection: dict | None) -> tuple[dict | None, bool]:
    """A projection that keeps ``_id`` (keyset paging needs it) and whether to strip it after."""
    if projection and "_id" in projection and projection["_id"] in (0, False):
        return {k: v for k, v in projection.items() if k != "_id"}, True
    return projection, False


def _strip_ids(records: list[dict]) -> list[dict]:
    for record in records:
        record.pop("_id", None)
    return records


def _within(filter_query: dict | None, id_condition: dict[str, Any]) -> dict:
    """``filter_query`` and ``{"_id": id_condition}``.

    Merged into the filter's top level when it has no ``_id`` key (the same query: top-level
    keys are ANDed, and a server continuing its open cursor recognises this shape), wrapped in
    ``$and`` otherwise.
    """
    condition = {"_id": id_condition}
    if not filter_query:
        return condition
    if "_id" not in filter_query:
        return {**filter_query, **condition}
    return {"$and": [filter_query, condition]}


def filter_list_pipeline(
    filter_key: str, filter_values: list[Any], projection: dict | None = None
) -> list[dict]:
    """The aggregation of ``fetch_records_by_filter_list``: ``$match`` + ``$in`` (+ ``$project``).

    Example:
        >>> filter_list_pipeline("name", ["a", "b"], {"_id": 1})
        [{'$match': {'name': {'$in': ['a', 'b']}}}, {'$project': {'_id': 1}}]
    """
    pipeline: list[dict] = [{"$match": {filter_key: {"$in": filter_values}}}]
    if projection:
        pipeline.append({"$project": projection})
    return pipeline


def _distinct_values(filter_values: list[Any]) -> list[Any]:
    """``filter_values`` without repeats (equal when their JSON is), first occurrences kept.

    Names and ids are plain strings, and two strings are equal exactly when their JSON is: then
    the strings themselves are the keys, which spares encoding each one (most of a filter
    list's client CPU). Other values, and strings orjson refuses (lone surrogates), go through
    `_wire.identity_key`, which also names a value that cannot be sent.
    """
    if all(type(value) is str for value in filter_values):
        try:
            "".join(filter_values).encode()
        except UnicodeEncodeError:
            pass  # the path below names the offending value
        else:
            return list(dict.fromkeys(filter_values))
    values: list[Any] = []
    seen: set[str] = set()
    for index, value in enumerate(filter_values):
        key = _wire.identity_key(value, what=f"filter_values[{index}]")
        if key not in seen:
            seen.add(key)
            values.append(value)
    return values


def _decoded_key(value: Any) -> str | tuple[str]:
    """A key of a value decoded from JSON, equal exactly when the values' JSON is.

    A decoded value whose JSON is a string is a `str`, so a string is its own key; any other
    value is keyed by its JSON text inside a tuple, which never equals a string.
    """
    return value if type(value) is str else (_wire.identity_key(value),)


def filter_list_chunk_size(projection: dict | None) -> int:
    """Values per ``$in`` request of ``fetch_records_by_filter_list`` (whole records are bigger).

    Example:
        >>> filter_list_chunk_size(None), filter_list_chunk_size({"_id": 1})
        (100, 500)
    """
    return 500 if projection else 100


def _after(filter_query: dict | None, last: Any) -> dict:
    """``filter_query`` and ``_id > last`` (see `_within`)."""
    return _within(filter_query, {"$gt": last})


class Client:
    """Client of one DocDB collection behind the REST API.

    Args:
        host: The API host, e.g. ``api.allenneuraldynamics.org``, optionally with a port or a
            path prefix, and optionally with an ``http://`` or ``https://`` scheme.
        database: The database name.
        collection: The collection name.
        version: The API version segment, ``v1`` (aind-data-schema 1.x records) or ``v2``.
        boto: The boto3 session whose credentials and region sign writes; the default
            credential chain when omitted.
        session: The requests session to send through; a pooled one is created when omitted.
            It is closed by `close`.
        timeout: ``(connect, read)`` timeout in seconds for every request.
        retry: The retry policy for transient failures (default `DEFAULT_RETRY`).
        max_workers: Requests in flight for concurrent reads and chunked writes.
        ids_per_request: Deprecated and ignored (retrievals no longer fetch ``_id`` chunks
            with ``$in``); still accepted so that existing callers keep working.
        transport: Every transport setting at once (`TransportConfig`: timeout, retry policy,
            pool, TLS verify, session factory); when given it replaces ``timeout`` and
            ``retry``.

    Example:
        ```python
        client = Client(host="http://127.0.0.1:8000", database="metadata_index",
                        collection="data_assets")
        records = client.retrieve_docdb_records(filter_query={"name": "x"}, limit=1)
        client.close()
        ```
    """

    def __init__(
        self,
        host: str,
        database: str,
        collection: str,
        version: DocDbVersion = "v1",
        boto: boto3.session.Session | None = None,
        session: requests.Session | None = None,
        *,
        timeout: http.Timeout = http.DEFAULT_TIMEOUT,
        retry: http.RetryPolicy | None = None,
        max_workers: int = 8,
        ids_per_request: int = 100,
        transport: http.TransportConfig | None = None,
    ) -> None:
        self.scheme, self.host = _split_host(host)
        self.database = database
        self.collection = collection
        self.version = version
        self.max_workers = max(1, int(max_workers))
        self.transport = (
            transport
            if transport is not None
            else http.TransportConfig(
                timeout=timeout,
                retry=retry if retry is not None else DEFAULT_RETRY,
                pool_maxsize=max(10, self.max_workers),
            )
        )
        self.timeout = self.transport.timeout
        self.retry = self.transport.retry
        self.ids_per_request = max(1, int(ids_per_request))  # deprecated, unused
        self.parallel_page_bytes = PARALLEL_PAGE_BYTES
        self._boto = boto
        self._session = session
        self._http_client: http.HttpClient | None = None
        self._lock = PicklableLock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(host={self.scheme}://{self.host!s}, "
            f"database={self.database!r}, collection={self.collection!r}, "
            f"version={self.version!r})"
        )

    # -- plumbing -------------------------------------------------------------------------

    @property
    def boto(self) -> boto3.session.Session:
        """Boto3 session (created on first use from the default credential chain)."""
        if self._boto is None:
            import boto3

            self._boto = boto3.session.Session()
        return self._boto

    @property
    def session(self) -> requests.Session:
        """Requests session (created on first use)."""
        with self._lock:
            if self._session is None:
                pool_maxsize = max(self.transport.pool_maxsize, self.max_workers)
                self._session = self.transport.replace(pool_maxsize=pool_maxsize).new_session()
            return self._session

    @property
    def _http(self) -> http.HttpClient:
        session = self.session
        with self._lock:
            if self._http_client is None or self._http_client.session is not session:
                self._http_client = http.HttpClient(session, timeout=self.timeout, retry=self.retry)
            return self._http_client

    @property
    def _base_url(self) -> str:
        return f"{self.scheme}://{self.host}/{self.version}/{self.database}/{self.collection}"

    @property
    def _version_url(self) -> str:
        return f"{self.scheme}://{self.host}/{self.version}"

    def _auth(self) -> _wire.SigV4Auth:
        return _wire.SigV4Auth(self.boto, "execute-api")

    def close(self) -> None:
        """Close the clients (the requests session, including one passed in)."""
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get_json(self, url: str, params: Mapping[str, str] | None) -> Any:
        response = self._http.request("GET", url, params=params)
        return http.decode_json(response)

    def _signed(
        self,
        method: str,
        url: str,
        body: bytes | None,
        *,
        idempotent: bool,
    ) -> requests.Response:
        if body is not None and len(body) > _wire.MAX_BODY_BYTES:
            raise ValueError(
                f"{method} {url}: the request body is {len(body):,} bytes, over the gateway's "
                f"{_wire.GATEWAY_REQUEST_LIMIT:,}-byte request limit"
            )
        return self._http.request(
            method,
            url,
            data=body,
            headers=_JSON_HEADERS,
            auth=self._auth(),
            idempotent=idempotent,
        )

    @staticmethod
    def _read_params(
        filter_query: dict | None,
        projection: dict | None,
        sort: dict | None,
        limit: int,
        skip: int,
    ) -> dict[str, str]:
        # Same keys and order as the official client: limit, skip, filter, projection, sort.
        params = {"limit": str(int(limit)), "skip": str(int(skip))}
        if filter_query is not None:
            params["filter"] = _wire.encode_param(filter_query, what="filter_query")
        if projection is not None:
            params["projection"] = _wire.encode_param(projection, what="projection")
        if sort is not None:
            params["sort"] = _wire.encode_param(sort, what="sort")
        return params

    # -- raw reads (private in the official client, used by its docs and helpers) --------------

    def _count_records(self, filter_query: dict | None = None) -> dict[str, int]:
        """``GET .../count_documents``: ``{"total_record_count", "filtered_record_count"}``."""
        params = None
        if filter_query is not None:
            params = {"filter": _wire.encode_param(filter_query, what="filter_query")}
        return self._get_json(f"{self._base_url}/count_documents", params)

    def _find_records(
        self,
        filter_query: dict | None = None,
        projection: dict | None = None,
        sort: dict | None = None,
        limit: int = 0,
        skip: int = 0,
    ) -> list[dict]:
        """``GET .../find``: one page; the server may return fewer than ``limit`` records."""
        records, _ = self._read_page(
            f"{self._base_url}/find", filter_query, projection, sort, limit, skip
        )
        return records

    def _get_records(
        self,
        filter_query: dict | None = None,
        projection: dict | None = None,
        sort: dict | None = None,
        limit: int = 0,
        skip: int = 0,
    ) -> list[dict]:
        """Legacy ``GET`` of the bare collection URL (413 when the result is too large)."""
        records, _ = self._read_page(self._base_url, filter_query, projection, sort, limit, skip)
        return records

    def _read_page(
        self,
        url: str,
        filter_query: dict | None,
        projection: dict | None,
        sort: dict | None,
        limit: int,
        skip: int,
    ) -> tuple[list[dict], int]:
        """One page of records from a read endpoint, with its size on the wire.

        The one reader behind `_find_records`, `_get_records` and `_find_sized`: the
        endpoints differ only in their URL.

        Args:
            url: The read endpoint (``.../find`` or the bare collection URL).
            filter_query: Filter to apply; None for all records.
            projection: Subset of fields to return; None for all fields.
            sort: Sort order; None for the server's natural order.
            limit: Maximum number of records; 0 for as many as the server sends.
            skip: Number of matching records to skip.

        Returns:
            ``(records, bytes of the response body)``.
        """
        params = self._read_params(filter_query, projection, sort, limit, skip)
        response = self._http.request("GET", url, params=params)
        return http.decode_json(response), len(response.content)

    # -- reads ------------------------------------------------------------------------------

    def retrieve_docdb_records(
        self,
        filter_query: dict | None = None,
        projection: dict | None = None,
        sort: dict | None = None,
        limit: int = 0,
        paginate: bool | None = None,
        paginate_batch_size: int | None = None,
        paginate_max_iterations: int | None = None,
    ) -> list[dict]:
        """Retrieve records as a list of dicts, every matching record exactly once.

        With ``limit`` or ``sort``, pages are fetched with skip/limit (``skip`` advancing by the
        records actually received) exactly as the official client fetches them, so the same
        records come back in the same order: the requested one, or the server's natural order
        without ``sort``.

        The cyclic garbage collector is paused while the records are decoded
        (`http.collection_paused`): the result holds no reference cycles, and re-examining it
        after every page cost a full read most of its CPU time.

        Without either (the caller reads everything), records come back in ``_id`` order, read
        as `iter_docdb_pages` reads them: the first page together with the ``_id``s of the
        whole result (one round trip when they match), then by ``_id`` key set, and when the
        first page shows the result spans several pages, the rest in ``_id`` ranges fetched
        concurrently (``max_workers`` requests in flight). The server resumes from its ``_id``
        index, so a full read costs it O(N), where skip/limit re-scans every skipped record.

        Args:
            filter_query: Filter to apply; None for all records.
            projection: Subset of fields to return; None for all fields.
            sort: Sort order, e.g. ``{"created": -1}``; None for ``_id`` order.
            limit: Maximum number of records; 0 for all.
            paginate: Deprecated and ignored (pagination is always on).
            paginate_batch_size: Deprecated and ignored.
            paginate_max_iterations: Deprecated and ignored.

        Returns:
            The records.

        Raises:
            ServiceError: The server answered an error (after retries).
            TypeError: The filter, projection or sort cannot be serialised.
        """
        del paginate, paginate_batch_size, paginate_max_iterations
        if limit is None:
            limit = 0
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        with http.collection_paused():  # the result is acyclic: collections free nothing
            if sort or limit:
                return self._skip_limit_records(filter_query, projection, sort, limit)
            records: list[dict] = []
            for page in self._keyset_pages(filter_query, projection):
                records.extend(page)
            return records

    def iter_docdb_pages(
        self,
        filter_query: dict | None = None,
        projection: dict | None = None,
        sort: dict | None = None,
        *,
        page_size: int = 0,
    ) -> Iterator[list[dict]]:
        """Every matching record exactly once, a page at a time, with flat memory.

        The streaming form of `retrieve_docdb_records` for reads of everything that matches:
        at most ``max_workers`` pages are held at once, whatever the size of the result.

        Without ``sort``, pages come in ``_id`` order. Each request is ``find`` with
        ``{<filter>, "_id": {"$gt": <last _id received>}}`` (``$and`` when the filter has an
        ``_id`` key of its own), sorted by ``{"_id": 1}``, ``limit`` 0 so that the server's
        payload cap sizes each page. The first page is read together with the ``_id``s of the
        whole result (projection ``{"_id": 1}``, about 50 bytes a record): when that id page
        is below ``parallel_page_bytes`` (not cut by the cap) and lists exactly the page's
        records, the page is the whole result, one round trip whatever its size. When the
        first page is large (at least ``parallel_page_bytes``: the cap may have cut it) and
        more ids follow, the ``_id``s after it (those already read, else one request) are read
        in consecutive ``_id`` ranges of about one page each, ``max_workers`` at a time,
        yielded in order.
        Each range ends when its last ``_id`` arrived (or on an empty page, if that record was
        deleted meanwhile). ``$gt`` only matches ``_id``s of the same BSON type, so after the
        last key-set page comes back empty one skip page (``skip`` = records received, sorted
        by ``_id``) confirms the end: usually empty; otherwise it holds records of another
        ``_id`` type and key-set paging resumes from its last ``_id`` (records it repeats are
        dropped). A projection excluding ``_id`` is sent with ``_id`` kept (paging needs it)
        and the ``_id``s are removed from the result.

        With ``sort``, pages are fetched with skip/limit in the requested order, like the
        official client.

        Args:
            filter_query: Filter to apply; None for all records.
            projection: Subset of fields to return; None for all fields.
            sort: Sort order; None for ``_id`` order.
            page_size: Records per request, each page requested in turn (``_id`` order only);
                0 lets the server's payload cap size the pages and reads ranges concurrently.

        Yields:
            Non-empty lists of records.

        Raises:
            ValueError: ``page_size`` is negative, or given together with ``sort``.

        Example:
            ```python
            with MetadataDbClient(host="api.allenneuraldynamics.org") as client:
                names = set()
                for page in client.iter_docdb_pages(projection={"name": 1}):
                    names.update(record["name"] for record in page)
            ```
        """
        if page_size < 0 or (page_size and sort):
            raise ValueError(
                f"page_size must be >= 0 and pages in _id order (no sort), got "
                f"page_size={page_size!r}, sort={sort!r}"
            )
        if sort:
            yield from self._skip_limit_pages(filter_query, projection, sort, 0)
        else:
            yield from self._keyset_pages(filter_query, projection, page_size=page_size)

    def iter_docdb_records(
        self,
        filter_query: dict | None = None,
        projection: dict | None = None,
        sort: dict | None = None,
    ) -> Iterator[dict]:
        """Every matching record exactly once, one at a time (see `iter_docdb_pages`).

        Example:
            ```python
            with MetadataDbClient(host="api.allenneuraldynamics.org") as client:
                n = sum(1 for _ in client.iter_docdb_records({"subject.subject_id": "731015"}))
            ```
        """
        for page in self.iter_docdb_pages(filter_query, projection, sort):
            yield from page

    def _skip_limit_records(
        self, filter_query: dict | None, projection: dict | None, sort: dict | None, limit: int
    ) -> list[dict]:
        records: list[dict] = []
        for page in self._skip_limit_pages(filter_query, projection, sort, limit):
            records.extend(page)
        return records

    def _skip_limit_pages(
        self, filter_query: dict | None, projection: dict | None, sort: dict | None, limit: int
    ) -> Iterator[list[dict]]:
        received = 0
        while True:
            remaining = limit - received if limit else 0
            page = self._find_records(filter_query, projection, sort, remaining, received)
            logger.debug(
                "(skip=%d, limit=%d): Retrieved %d records", received, remaining, len(page)
            )
            if not page:
                return
            if limit and received + len(page) >= limit:
                yield page[: limit - received]
                return
            received += len(page)
            yield page

    def _find_sized(
        self, filter_query: dict, projection: dict | None, limit: int, skip: int
    ) -> tuple[list[dict], int]:
        """One ``find`` page sorted by ``_id`` and its size on the wire in bytes."""
        return self._read_page(
            f"{self._base_url}/find", filter_query, projection, _ID_SORT, limit, skip
        )

    def _keyset_pages(
        self,
        filter_query: dict | None,
        projection: dict | None,
        *,
        page_size: int = 0,
        limit: int = 0,
    ) -> Iterator[list[dict]]:
        """Pages in ``_id`` order, each request asking for ``_id`` after the last one seen.

        See `iter_docdb_pages`. With ``page_size`` or ``limit`` every page is requested in
        turn (no concurrent ranges).
        """
        projection, strip = _with_id(projection)
        last: Any = None
        served_ids: list[Any] = []
        seen: set[str] | None = None  # served ids' keys, built once a skip page has records
        may_overlap = not page_size and not limit and self.max_workers > 1
        known: tuple[list[Any], int] | None = None  # ids after the first page, from its id read
        while True:
            remaining = limit - len(served_ids) if limit else 0
            size = min(page_size, remaining) if page_size and remaining else page_size or remaining
            if not served_ids and may_overlap:
                page, nbytes, ids, ids_bytes = self._first_page_and_ids(filter_query, projection)
                if ids is not None and ids[: len(page)] == [r["_id"] for r in page]:
                    if page and len(ids) == len(page) and ids_bytes < self.parallel_page_bytes:
                        # The id page was not cut by the payload cap and lists exactly the
                        # records that came: the whole result took one round trip (the
                        # official client needs two), whatever the page's size.
                        yield _strip_ids(page) if strip else page
                        return
                    if page and len(ids) > len(page):
                        known = (ids[len(page) :], ids_bytes)  # the cap cut the page
            elif not served_ids:
                page, nbytes = self._find_sized(filter_query or {}, projection, size, 0)
            else:
                page, nbytes = self._find_sized(_after(filter_query, last), projection, size, 0)
            if page:
                last = page[-1]["_id"]
            elif served_ids:
                page = self._find_records(
                    filter_query or {}, projection, _ID_SORT, size, len(served_ids)
                )
                if page:
                    logger.debug("skip page after _id %r: %d records", last, len(page))
                    last = page[-1]["_id"]  # resume after the whole page, duplicates included
                    if seen is None:
                        seen = {_wire.identity_key(i) for i in served_ids}
                    page = [r for r in page if _wire.identity_key(r["_id"]) not in seen]
                    if not page:
                        return  # only records already served: the collection changed meanwhile
            if not page:
                return
            served_ids.extend(record["_id"] for record in page)
            if seen is not None:
                seen.update(_wire.identity_key(record["_id"]) for record in page)
            if limit and len(served_ids) >= limit:
                page = page[: len(page) - (len(served_ids) - limit)]
                yield _strip_ids(page) if strip else page
                return
            yield _strip_ids(page) if strip else page
            if may_overlap and seen is None and nbytes >= self.parallel_page_bytes:
                may_overlap = False  # once: what follows the ranges is checked in turn
                ranges = self._range_pages(filter_query, projection, last, len(page), known)
                while True:
                    try:
                        ranged = next(ranges)
                    except StopIteration as stop:
                        complete = stop.value
                        break
                    served_ids.extend(record["_id"] for record in ranged)
                    last = ranged[-1]["_id"]
                    yield _strip_ids(ranged) if strip else ranged
                if complete:
                    return

    def _first_page_and_ids(
        self, filter_query: dict | None, projection: dict | None
    ) -> tuple[list[dict], int, list[Any] | None, int]:
        """The first key-set page, with the ``_id``s of the whole filter read alongside.

        Both are ``find`` sorted by ``{"_id": 1}`` (the id read with projection ``{"_id": 1}``,
        about 50 bytes a record), sent at once. An id page below ``parallel_page_bytes`` was not
        cut by the payload cap, so it lists every record present when it was read: a record
        page with exactly those ids is the whole result, and when the cap cut the record page,
        the ids after it are known without another round trip.

        Returns ``(page, its bytes on the wire, ids or None when the id read failed, the id
        page's bytes)``.
        """
        pool = ThreadPoolExecutor(1, thread_name_prefix="neurodata-ids")
        try:
            id_read = pool.submit(self._find_sized, filter_query or {}, {"_id": 1}, 0, 0)
            page, nbytes = self._find_sized(filter_query or {}, projection, 0, 0)
            try:
                id_page, ids_bytes = id_read.result()
                ids: list[Any] | None = [record.get("_id") for record in id_page]
            except Exception:  # noqa: BLE001 - only a shortcut: the pages confirm the end anyway
                ids, ids_bytes = None, 0
        finally:
            pool.shutdown(wait=True)  # nothing left running behind the caller's back
        return page, nbytes, ids, ids_bytes

    def _range_pages(
        self,
        filter_query: dict | None,
        projection: dict | None,
        after: Any,
        per_page: int,
        known: tuple[list[Any], int] | None = None,
    ) -> Generator[list[dict], None, bool]:
        """The records after ``after`` as consecutive ``_id`` ranges read concurrently.

        One request reads the ``_id``s that follow (projection ``{"_id": 1}``), unless they are
        ``known`` already (``(ids after `after`, bytes of the id page they came from)``, read
        along with the first page); they are cut
        into ranges of about ``per_page`` records, read ``max_workers`` at a time and yielded
        in order. When the server's payload cap cut that id page too, the ids after it are
        read next, and so on. Nothing more is yielded once the ids are not all strings (range
        bounds must share one BSON type to order them) or too few to overlap anything; the
        key-set pages that follow then read the rest in turn.

        Returns (as the generator's value) True when the ranges covered every ``_id`` after
        ``after`` (the last id page was not cut and held only strings): then every record
        present since that id read was served, and no page is needed to confirm the end.
        """
        per_range = max(1, int(per_page * _RANGE_FILL))

        def read(bound: tuple[str, str]) -> list[dict]:
            first, end = bound
            condition: dict[str, Any] = {"$gte": first, "$lte": end}
            records: list[dict] = []
            while True:
                page = self._find_records(
                    _within(filter_query, condition), projection, _ID_SORT, 0, 0
                )
                records.extend(page)
                if not page or page[-1]["_id"] == end:
                    return records
                condition = {"$gt": page[-1]["_id"], "$lte": end}

        while True:
            if known is None:
                ids_page, nbytes = self._find_sized(_after(filter_query, after), {"_id": 1}, 0, 0)
                ids = [record.get("_id") for record in ids_page]
            else:
                (ids, nbytes), known = known, None
            if not ids:
                return nbytes < self.parallel_page_bytes
            if len(ids) <= per_range or not all(type(i) is str for i in ids):
                return False
            str_ids = cast(list[str], ids)  # every id was checked to be a str just above
            bounds = [
                (str_ids[start], str_ids[min(start + per_range, len(ids)) - 1])
                for start in range(0, len(ids), per_range)
            ]
            for records in http.imap_bounded(read, bounds, self.max_workers):
                if records:
                    yield records
            if nbytes < self.parallel_page_bytes:
                return all(type(i) is str for i in ids)  # the id page held every id
            after = ids[-1]

    def aggregate_docdb_records(self, pipeline: list[dict]) -> list[dict]:
        """Run a read-only aggregation pipeline (``POST .../aggregate``, unsigned).

        Args:
            pipeline: The stages, e.g. ``[{"$match": {...}}, {"$count": "n"}]``.

        Returns:
            The resulting documents.
        """
        body = _wire.encode(pipeline, what="pipeline")
        response = self._http.request(
            "POST",
            f"{self._base_url}/aggregate",
            data=body,
            headers=_JSON_HEADERS,
            idempotent=True,
        )
        return http.decode_json(response)

    def fetch_records_by_filter_list(
        self,
        filter_key: str,
        filter_values: list[str],
        projection: dict | None = None,
        *,
        chunk_size: int | None = None,
    ) -> list[dict]:
        """Records whose ``filter_key`` is one of ``filter_values`` (``$match`` with ``$in``).

        Long value lists are split into chunks of ``chunk_size`` values sent as concurrent
        aggregations; a chunk whose result the server refuses as too large (413) is halved and
        retried. Order: the records of each chunk in the server's order, chunks in the order of
        ``filter_values`` (with a single chunk this is exactly the official client's order). A
        record matching values of several chunks is returned once (first occurrence).

        Args:
            filter_key: The field to filter on.
            filter_values: The values to match (duplicates are ignored).
            projection: Subset of fields to return; None returns all fields.
            chunk_size: Values per request; default 500 with a projection, 100 without.

        Returns:
            The matching records.
        """
        values = _distinct_values(filter_values)
        if chunk_size is None:
            chunk_size = filter_list_chunk_size(projection)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size!r}")
        request_projection, strip = _with_id(projection) if projection else (None, False)
        chunks = [values[i : i + chunk_size] for i in range(0, len(values), chunk_size)] or [[]]

        def fetch(chunk: list[Any]) -> list[dict]:
            return self._match_in(filter_key, chunk, request_projection)

        with http.collection_paused():  # the result is acyclic: collections free nothing
            pages = list(http.imap_bounded(fetch, chunks, self.max_workers))
        if len(pages) == 1:
            records = pages[0]
        else:
            records, ids = [], set[str | tuple[str]]()
            for page in pages:
                for record in page:
                    marker = record.get("_id")
                    marker_key = _decoded_key(marker) if marker is not None else None
                    if marker_key is not None and marker_key in ids:
                        continue
                    if marker_key is not None:
                        ids.add(marker_key)
                    records.append(record)
        return _strip_ids(records) if strip else records

    def _match_in(self, key: str, values: list[Any], projection: dict | None) -> list[dict]:
        pipeline = filter_list_pipeline(key, values, projection)
        try:
            return self.aggregate_docdb_records(pipeline)
        except http.ServiceError as exc:
            if exc.status_code != 413 or len(values) < 2:
                raise
        half = len(values) // 2
        return self._match_in(key, values[:half], projection) + self._match_in(
            key, values[half:], projection
        )

    # -- writes (signed) ------------------------------------------------------------------

    def insert_one_docdb_record(self, record: dict) -> requests.Response:
        """Insert one new record (``POST .../insert_one``, signed).

        A record without ``_id`` gets one from the server; such an insert is never retried
        after it may have reached the server, so it cannot be duplicated.

        A record with ``_id`` is retried like any idempotent write. When an earlier attempt
        landed but its answer was lost (a gateway 504 after the write), the retry meets the
        server's duplicate-key error; the record is then read back, and if it is stored as sent,
        the insert is reported as done (``{"acknowledged": true, "insertedId": ...}``) instead of
        as a duplicate. A different record under that ``_id`` still raises.

        Args:
            record: The record.

        Returns:
            The response, e.g. ``{"acknowledged": true, "insertedId": ...}``.
        """
        if not isinstance(record, Mapping):
            raise TypeError(f"record must be a dict, got {type(record).__name__}")
        body = _wire.encode(record, what="record")
        url = f"{self._base_url}/insert_one"
        if record.get("_id") is None:
            return self._signed("POST", url, body, idempotent=False)
        try:
            return self._signed("POST", url, body, idempotent=True)
        except http.ServiceError as exc:
            sent = http.loads(body)
            if exc.attempts < 2 or not _is_duplicate_key(exc) or not self._stored_as(sent):
                raise
            logger.warning(
                "insert_one: an earlier attempt stored _id %r but its answer was lost; "
                "reporting the insert as done",
                sent["_id"],
            )
            return _acknowledged_insert(exc.response, sent["_id"])

    def _stored_as(self, sent: dict[str, Any]) -> bool:
        """Whether the record under ``sent["_id"]`` holds every field of ``sent`` unchanged."""
        stored = self._find_records({"_id": sent["_id"]}, limit=1)
        return len(stored) == 1 and all(stored[0].get(k) == v for k, v in sent.items())

    def upsert_one_docdb_record(self, record: dict) -> requests.Response:
        """Upsert one record by ``_id`` (``POST .../update_one`` with ``$set``, signed).

        Keys not in ``record`` are left untouched; dotted keys such as
        ``"data_description.project_name"`` update nested fields.

        Args:
            record: The record, with its ``_id``.

        Returns:
            The response, e.g. ``{"acknowledged": true, "matchedCount": 1, ...}``.

        Raises:
            ValueError: ``record`` has no ``_id``, or holds NaN or infinity (nothing is sent;
                the official client would store null).
        """
        if not isinstance(record, Mapping) or record.get("_id") is None:
            raise ValueError("Record does not have an _id field.")
        _wire.reject_non_finite_records([record])
        body = _wire.encode(
            {"filter": {"_id": record["_id"]}, "update": {"$set": record}, "upsert": "True"},
            what="record",
        )
        return self._signed("POST", f"{self._base_url}/update_one", body, idempotent=True)

    def upsert_list_of_docdb_records(
        self,
        records: list[dict],
        max_payload_size: float = 5e6,
        *,
        max_workers: int | None = None,
    ) -> list[requests.Response]:
        """Upsert many records by ``_id`` with ``bulk_write``, in chunks of bounded size.

        Chunks are packed greedily in record order like the official client: each record
        counts as the length of its JSON plus 49 bytes, and a record joins the current chunk
        while the running total stays within ``max_payload_size``; a record larger than that is
        sent alone. A chunk is also closed before its body would exceed the gateway's 10 MB
        request limit. Chunks are sent concurrently (upserts keyed by ``_id`` are idempotent,
        so retries are safe); when some fail, the others still finish and then
        `BulkWriteFailed` names the records that did not land.

        Args:
            records: The records, each with an ``_id``.
            max_payload_size: Chunk size budget in bytes. Default 5e6.
            max_workers: Chunks in flight; defaults to the client's ``max_workers``.

        Returns:
            One response per chunk, in chunk order (all successful).

        Raises:
            ValueError: A record has no ``_id`` or alone exceeds the 10 MB request limit
                (nothing is sent; the message gives the record's index).
            TypeError: A value cannot be serialised (nothing is sent; the message names it).
            BulkWriteFailed: Some chunks failed after retries.
        """
        if not records:
            return []
        missing = [
            i
            for i, record in enumerate(records)
            if not isinstance(record, Mapping) or record.get("_id") is None
        ]
        if missing:
            shown = ", ".join(f"records[{i}]" for i in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise ValueError(f"A record does not have an _id field: {shown}{more}.")
        _wire.reject_non_finite_records(records)

        # Every record is encoded once up front to validate it and size the chunks, and again
        # when its chunk is sent: only the chunks in flight are held as bytes, not all of them.
        op_sizes: list[int] = []
        sizes: list[int] = []
        for index, record in enumerate(records):
            op_size, record_size = _upsert_op_size(record, index)
            if op_size + 2 > _wire.MAX_BODY_BYTES:
                raise ValueError(
                    f"records[{index}] (_id={record['_id']!r}) is {op_size:,} bytes as an upsert,"
                    f" over the gateway's {_wire.GATEWAY_REQUEST_LIMIT:,}-byte request limit; "
                    "nothing was sent"
                )
            op_sizes.append(op_size)
            sizes.append(record_size + _STR_OVERHEAD)

        chunks = self._chunk(op_sizes, sizes, max_payload_size)
        url = f"{self._base_url}/bulk_write"

        def send(chunk: list[int]) -> tuple[requests.Response | None, BaseException | None, int]:
            body = _bulk_write_body(records, chunk)
            try:
                response = self._signed("POST", url, body, idempotent=True)
            except Exception as exc:  # noqa: BLE001 - reported together after all chunks
                return None, exc, _first_failed(exc, len(chunk))
            return response, None, len(chunk)

        workers = max(1, max_workers or self.max_workers)
        if len(chunks) == 1:
            outcomes = [send(chunks[0])]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="neurodata-upsert") as pool:
                outcomes = list(pool.map(send, chunks))

        responses: list[requests.Response] = []
        failed_ids: list[Any] = []
        errors: list[BaseException] = []
        for chunk, (response, error, landed) in zip(chunks, outcomes, strict=True):
            if error is None and response is not None:
                responses.append(response)
                continue
            errors.append(error)  # type: ignore[arg-type]
            failed_ids.extend(records[i]["_id"] for i in chunk[landed:])
        if errors:
            raise BulkWriteFailed(failed_ids, errors, responses, len(records))
        return responses

    @staticmethod
    def _chunk(op_sizes: list[int], sizes: list[int], max_payload_size: float) -> list[list[int]]:
        chunks: list[list[int]] = []
        current: list[int] = []
        total = 0
        body = 2
        for index, size in enumerate(sizes):
            op_bytes = op_sizes[index] + 1
            if current and (
                total + size > max_payload_size or body + op_bytes > _wire.MAX_BODY_BYTES
            ):
                chunks.append(current)
                current, total, body = [], 0, 2
            current.append(index)
            total += size
            body += op_bytes
        if current:
            chunks.append(current)
        return chunks

    def delete_one_record(self, data_asset_record_id: str) -> requests.Response:
        """Delete one record by ``_id`` (``DELETE .../delete_one``, signed).

        Returns:
            The response, e.g. ``{"acknowledged": true, "deletedCount": 1}`` (0 when absent).
        """
        body = _wire.encode({"filter": {"_id": data_asset_record_id}}, what="data_asset_record_id")
        return self._signed("DELETE", f"{self._base_url}/delete_one", body, idempotent=True)

    def delete_many_records(self, data_asset_record_ids: list[str]) -> requests.Response:
        """Delete records by ``_id`` (``DELETE .../delete_many`` with ``$in``, signed).

        Returns:
            The response, e.g. ``{"acknowledged": true, "deletedCount": 2}``.
        """
        body = _wire.encode(
            {"filter": {"_id": {"$in": list(data_asset_record_ids)}}},
            what="data_asset_record_ids",
        )
        return self._signed("DELETE", f"{self._base_url}/delete_many", body, idempotent=True)


_UPSERT_PARTS = (b'{"UpdateOne":{"filter":{"_id":', b'},"update":{"$set":', b'},"upsert":"True"}}')


def _upsert_op_parts(record: Mapping[str, Any], index: int) -> tuple[bytes, ...]:
    """The pieces of the ``bulk_write`` operation upserting ``record`` by ``_id`` (the official
    client's ``{"UpdateOne": {"filter": {"_id": ...}, "update": {"$set": ...}, "upsert":
    "True"}}``), to be written one after the other."""
    head, middle, tail = _UPSERT_PARTS
    record_json = _wire.encode(record, what=f"records[{index}]")
    id_json = _wire.encode(record["_id"], what=f"records[{index}]._id")
    return head, id_json, middle, record_json, tail


def _upsert_op_size(record: Mapping[str, Any], index: int) -> tuple[int, int]:
    """``(operation bytes, record JSON bytes)`` of `_upsert_op_parts` without keeping them."""
    parts = _upsert_op_parts(record, index)
    return sum(map(len, parts)), len(parts[3])


def _bulk_write_body(records: list[dict], chunk: list[int]) -> bytes:
    """The ``bulk_write`` body of the records at the indexes ``chunk``: a JSON array of ops.

    Written into one growing buffer whose bytes are handed over without a copy: joining each
    operation's bytes and then the operations held a chunk three times over (about 18 MB for
    a 5.8 MB body), once per request in flight; this holds it about once.
    """
    buffer = io.BytesIO()
    buffer.write(b"[")
    for position, index in enumerate(chunk):
        if position:
            buffer.write(b",")
        buffer.writelines(_upsert_op_parts(records[index], index))
    buffer.write(b"]")
    return buffer.getvalue()


def _first_failed(exc: BaseException, chunk_len: int) -> int:
    """How many leading operations of a failed chunk landed (ordered bulk writes stop at the
    first write error and report its index); 0 when unknown."""
    response = getattr(exc, "response", None)
    if response is None:
        return 0
    try:
        body = http.decode_json(response)
    except (ValueError, requests.JSONDecodeError):
        return 0
    errors = body.get("writeErrors") if isinstance(body, dict) else None
    if not errors:
        return 0
    found = [e.get("index") for e in errors if isinstance(e, dict)]
    indexes = [i for i in found if isinstance(i, int) and 0 <= i < chunk_len]
    return min(indexes) if indexes else 0


class MetadataDbClient(Client):
    """Client of the metadata collection, with asset registration, QC and summaries.

    Example:
        ```python
        client = MetadataDbClient(host="api.allenneuraldynamics.org", version="v2")
        client.register_asset("s3://aind-open-data/ecephys_642478_2023-01-17_13-56-29")
        ```
    """

    def __init__(
        self,
        host: str,
        database: str = "metadata_index",
        collection: str = "data_assets",
        version: DocDbVersion = "v1",
        boto: boto3.session.Session | None = None,
        session: requests.Session | None = None,
        **options: Any,
    ) -> None:
        super().__init__(host, database, collection, version, boto, session, **options)

    def _admin(
        self, method: str, path: str, payload: Any, *, idempotent: bool, what: str
    ) -> dict[str, Any]:
        body = None if payload is None else _wire.encode(payload, what=what)
        response = self._signed(method, f"{self._version_url}/{path}", body, idempotent=idempotent)
        return http.decode_json(response)

    def register_asset(self, s3_location: str) -> dict[str, Any]:
        """Register a data asset in Code Ocean and DocDB from the metadata at ``s3_location``.

        ``POST /{version}/assets/register`` with ``{"s3_location": ...}`` (signed; the server
        reads the core metadata JSON files at the top level of the location).

        Args:
            s3_location: ``s3://bucket/prefix`` of the asset (validated first).

        Returns:
            The registration response, e.g. ``{"message": ..., "registered_co": true,
            "registered_docdb": true}``.
        """
        location = validate_s3_location(s3_location)
        return self._admin(
            "POST", "assets/register", {"s3_location": location}, idempotent=False, what="body"
        )

    def register_co_result(
        self, s3_location: str, name: str, co_asset_id: str, co_computation_id: str
    ) -> dict[str, Any]:
        """Register a Code Ocean result asset and add its metadata to DocDB.

        Args:
            s3_location: ``s3://bucket/prefix`` of the result.
            name: The result asset's name.
            co_asset_id: The Code Ocean asset id.
            co_computation_id: The Code Ocean computation id.

        Returns:
            The registration response.
        """
        location = validate_s3_location(s3_location)
        for field, value in (
            ("name", name),
            ("co_asset_id", co_asset_id),
            ("co_computation_id", co_computation_id),
        ):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{field} must be a non-empty string, got {value!r}")
        payload = {
            "s3_location": location,
            "name": name,
            "co_asset_id": co_asset_id,
            "co_computation_id": co_computation_id,
        }
        return self._admin("POST", "assets/register", payload, idempotent=False, what="body")

    def deregister_asset(self, s3_location: str) -> dict[str, Any]:
        """De-register an asset from Code Ocean and remove its DocDB record.

        ``DELETE /{version}/assets/deregister`` with ``{"s3_location": ...}`` (signed). Not
        retried once it may have reached the server: a repeated de-registration would fail.

        Args:
            s3_location: ``s3://bucket/prefix`` of the asset.

        Returns:
            The response, e.g. ``{"message": ..., "deregistered_co": true,
            "deregistered_docdb": true}``.
        """
        location = validate_s3_location(s3_location)
        return self._admin(
            "DELETE", "assets/deregister", {"s3_location": location}, idempotent=False, what="body"
        )

    def add_qc_evaluation(self, data_asset_id: str, qc_contents: dict[str, Any]) -> dict[str, Any]:
        """Add QC evaluations (or other QC content) to a data asset.

        ``POST /{version}/add_qc_evaluation`` with ``{**qc_contents, "data_asset_id": id}``
        (signed). Not retried once it may have reached the server (it appends).

        Args:
            data_asset_id: The record's ``_id``.
            qc_contents: For example ``{"qc_evaluation": [<QCEvaluation as JSON>, ...]}``.

        Returns:
            The response, e.g. ``{"acknowledged": true, "matchedCount": 1}``.
        """
        if data_asset_id is None or (isinstance(data_asset_id, str) and not data_asset_id):
            raise ValueError(f"data_asset_id must be a record _id, got {data_asset_id!r}")
        if not isinstance(qc_contents, Mapping):
            raise TypeError(f"qc_contents must be a dict, got {type(qc_contents).__name__}")
        payload = {**qc_contents, "data_asset_id": data_asset_id}
        return self._admin(
            "POST", "add_qc_evaluation", payload, idempotent=False, what="qc_contents"
        )

    def generate_data_summary(self, record_id: str) -> dict[str, Any]:
        """Get the generated summary of the record ``record_id`` (``GET
        /{version}/data_summary/{record_id}``, signed)."""
        if record_id is None or not str(record_id).strip():
            raise ValueError(f"record_id must be a record _id, got {record_id!r}")
        from urllib.parse import quote

        return self._admin(
            "GET",
            f"data_summary/{quote(str(record_id), safe='')}",
            None,
            idempotent=True,
            what="record_id",
        )


class SchemaDbClient(Client):
    """Client of the schemas database."""

    def __init__(
        self,
        host: str,
        collection: str,
        database: str = "schemas",
        version: DocDbVersion = "v1",
        boto: boto3.session.Session | None = None,
        session: requests.Session | None = None,
        **options: Any,
    ) -> None:
        super().__init__(host, database, collection, version, boto, session, **options)

    def retrieve_schema_records(
        self,
        schema_version: str | None = None,
        projection: dict | None = None,
        sort: dict | None = None,
        limit: int = 0,
    ) -> list[dict]:
        """Retrieve schema records (legacy ``GET`` of the collection URL).

        Args:
            schema_version: Only the schema with this ``_id``; None for all.
            projection: Subset of fields to return.
            sort: Sort order.
            limit: Maximum number of records; 0 for all.
        """
        filter_query = {"_id": schema_version} if schema_version else None
        return self._get_records(filter_query, projection, sort, limit, 0)


class AnalysisDbClient(Client):
    """Client of the analysis database (the same CRUD methods as `Client`)."""

    def __init__(
        self,
        host: str,
        collection: str,
        database: str = "analysis",
        version: DocDbVersion = "v1",
        boto: boto3.session.Session | None = None,
        session: requests.Session | None = None,
        **options: Any,
    ) -> None:
        super().__init__(host, database, collection, version, boto, session, **options)
