"""DocDB REST API stand-in: API Gateway + Lambda behaviour over a real MongoDB-wire server.

Run it like the launcher does::

    NEURODATA_SANDBOX_MONGO_URI=mongodb://127.0.0.1:27117/ \\
    python -m uvicorn --factory prefect_neurodata.sandbox.docdb.app:create_app \\
        --host 127.0.0.1 --port 8080

Routes (``{v}`` is ``v1`` or ``v2``; ``v2`` maps database ``<db>`` to ``<db>_v2``, so
``/v2/metadata_index/...`` lives in ``metadata_index_v2``; databases: ``metadata_index``,
``schemas``, ``analysis``). Signed = AWS SigV4 ``execute-api`` required:

===========================================  ======  ======
path                                         method  signed
===========================================  ======  ======
/{v}/{db}/{coll}                             GET     no
/{v}/{db}/{coll}/find                        GET     no
/{v}/{db}/{coll}/count_documents             GET     no
/{v}/{db}/{coll}/aggregate                   POST    no
/{v}/{db}/{coll}/insert_one                  POST    yes
/{v}/{db}/{coll}/update_one                  POST    yes
/{v}/{db}/{coll}/bulk_write                  POST    yes
/{v}/{db}/{coll}/delete_one                  DELETE  yes
/{v}/{db}/{coll}/delete_many                 DELETE  yes
/{v}/assets/register                         POST    yes
/{v}/assets/deregister                       DELETE  yes
/{v}/add_qc_evaluation                       POST    yes
/{v}/data_summary/{id}                       GET     yes
===========================================  ======  ======

Status codes and bodies chosen, checked in this order (gateway first, then the Lambda):

* 413 ``{"message": "Request Too Long"}``: request body plus headers over
  ``NEURODATA_SANDBOX_REQUEST_BYTES`` (10 MB, API Gateway's payload limit; its default
  REQUEST_TOO_LARGE gateway response). The body is drained first so the client reads the answer
  instead of a broken pipe.
* 404 ``{"message": "Not Found"}``: unknown path, version or database. The reference's client
  tests see 404 (not REST API's 403 "Missing Authentication Token") on unknown paths, i.e. the
  routing is done behind a proxy resource, which also answers a known path with the wrong method
  by 405 ``{"message": "Method Not Allowed"}`` plus ``Allow``.
* 403 ``{"message": ...}`` on signed routes, with API Gateway's texts (see ``sigv4.py``):
  ``Missing Authentication Token``, ``The request signature we calculated does not match ...``,
  ``Signature expired: ...``, ``The security token included in the request is invalid.``,
  ``Credential should be scoped to ...``.
* 400 ``{"error": "BadRequest", "detail": ...}``: unknown/duplicate query parameters, non-integer
  ``limit``/``skip``, malformed JSON in a parameter or the body, wrong body fields. Same keys as
  the reference's QC 400 ``{"detail", "error"}``.
* 400 ``{"error": "MongoServerError", "detail": errmsg, "code": n}``: MongoDB rejected the
  command (the reference's clients see the text "MongoServerError"); argument errors the Node
  driver raises itself use ``"error": "MongoInvalidArgumentError"``.
* 413 ``{"message": "Response payload size exceeded maximum allowed payload size (N bytes)."}``:
  one record larger than the page budget in ``find``, or a bare GET / aggregate result over it
  (the reference: 413 is the safest emulation of the Lambda's response limit).
* 409 ``{"error": "Conflict", "detail": ...}``: ``assets/register`` of an already registered
  location (the real answer is unknown; a conflict lets a re-running flow tell "done" apart).
  ``location`` is unique through a unique index, so of concurrent registrations of one location
  exactly one lands; ``insert_one``/``bulk_write``/``update_one`` that would duplicate a
  location get MongoDB's E11000 answer (400, code 11000), as from a real unique index.
* 404 ``{"error": "NotFound", "detail": ...}``: ``add_qc_evaluation`` / ``data_summary`` of an
  unknown record.
* Success shapes follow the Node driver (reference 1.4): ``insert_one`` ``{"acknowledged",
  "insertedId"}``; ``update_one`` ``{"acknowledged", "modifiedCount", "upsertedId",
  "upsertedCount", "matchedCount"}``; ``delete_one``/``delete_many`` the newer
  ``{"acknowledged", "deletedCount"}`` (one shape for both); ``bulk_write`` ``{"ok",
  "writeErrors", "insertedIds", "nInserted", "nUpserted", "nMatched", "nModified", "nRemoved",
  "upserted"}``, and on a write error the same counts with status 400, ``"error":
  "MongoBulkWriteError"`` and the failing ``index`` (ordered: later operations did not run);
  ``count_documents`` ``{"total_record_count", "filtered_record_count"}``; ``register`` 201.

``find`` pages are capped at ``NEURODATA_SANDBOX_PAGE_BYTES`` (default 5 MB): a page that would
overflow is cut short (fewer than ``limit`` records), as the production ``/find`` does, and the
client continues with ``skip``. Like a server with an ``_id`` index, ``find`` with an empty or
``_id``-range-only filter (``$gt``/``$gte``/``$lt``/``$lte``, also inside ``$and``), sorted by
``_id`` or unsorted, and ``count_documents`` of such filters are answered from a cached sorted
``_id`` list (see ``id_index.IdIndex``): O(page), not O(collection) as SecantusDB's own scans.
Unsorted reads therefore come in ``_id`` order, the stand-in's stable natural order. Whole
documents (no projection) served on that path stay in memory, encoded, within
``NEURODATA_SANDBOX_DOC_CACHE_BYTES`` (1.5 GB) per collection: repeated full reads are served
from memory, as DocumentDB serves its working set, and reach MongoDB only for the id list and
the write counters. Reads MongoDB must evaluate (other filters, filtered counts) are kept too, by
their exact request, while the id list lives: the same request is answered again from memory
(SecantusDB takes seconds per filtered query over 15,000 records, where an indexed DocumentDB
takes milliseconds). Writes
through the API refresh that list at once; writes made straight to MongoDB (the seeder) are
noticed through the server's write counters (``serverStatus`` ``opcounters``) on the next read.

Writes into ``metadata_index`` stamp ``last_modified`` (v1) or ``_last_modified`` (v2) with the
server's UTC time; ``schemas`` and ``analysis`` records are stored as sent.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import anyio
import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from prefect_neurodata.sandbox.docdb import writes
from prefect_neurodata.sandbox.docdb.assets import Assets
from prefect_neurodata.sandbox.docdb.config import DocDBConfig
from prefect_neurodata.sandbox.docdb.errors import (
    NOT_FOUND_ROUTE,
    REQUEST_TOO_LONG,
    ApiError,
    bad_request,
    gateway,
    run_mongo,
)
from prefect_neurodata.sandbox.docdb.pages import PageTooLarge, dumps, too_large
from prefect_neurodata.sandbox.docdb.store import DATABASES, Store
from prefect_neurodata.sandbox.faults import FaultMiddleware
from prefect_neurodata.sandbox.sigv4 import SignatureError, SigV4Verifier

logger = logging.getLogger("prefect_neurodata.sandbox.docdb")

VERSIONS = ("v1", "v2")
READ_PARAMS = ("limit", "skip", "filter", "projection", "sort")
COLLECTION_OPS: dict[str, tuple[str, bool]] = {
    "find": ("GET", False),
    "count_documents": ("GET", False),
    "aggregate": ("POST", False),
    "insert_one": ("POST", True),
    "update_one": ("POST", True),
    "bulk_write": ("POST", True),
    "delete_one": ("DELETE", True),
    "delete_many": ("DELETE", True),
}
WRITE_OPS = frozenset(
    {"insert_one", "update_one", "bulk_write", "delete_one", "delete_many"}
    | {"register", "deregister", "add_qc_evaluation"}
)
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,119}$")
# Bodies larger than this are not even drained before the 413: the connection is closed.
_DRAIN_LIMIT = 256 * 1024 * 1024


class DocDBApp:
    """Request dispatcher holding the store, the verifier and the configuration."""

    def __init__(self, config: DocDBConfig) -> None:
        self.config = config
        self.store = Store(config.mongo_uri, doc_cache_bytes=config.doc_cache_bytes)
        self.assets = Assets(config)
        self.verifier = SigV4Verifier(
            config.access_key_id,
            config.secret_access_key,
            config.aws_region,
            session_token=config.session_token,
        )

    # -- routing -------------------------------------------------------------------------------
    def route(self, path: str) -> tuple[str, bool, str, dict[str, str]]:
        """Resolve a path to ``(method, signed, operation, args)`` or raise the 404."""
        parts = path.split("/")
        if len(parts) < 3 or parts[0] != "" or parts[1] not in VERSIONS:
            raise NOT_FOUND_ROUTE
        version, rest = parts[1], parts[2:]
        args = {"version": version}
        if rest == ["add_qc_evaluation"]:
            return "POST", True, "add_qc_evaluation", args
        if len(rest) == 2 and rest[0] == "assets" and rest[1] in ("register", "deregister"):
            method = "POST" if rest[1] == "register" else "DELETE"
            return method, True, rest[1], args
        if len(rest) == 2 and rest[0] == "data_summary" and rest[1]:
            return "GET", True, "data_summary", {**args, "record_id": rest[1]}
        if len(rest) in (2, 3) and rest[0] in DATABASES and _COLLECTION_RE.match(rest[1]):
            if rest[1].startswith("system."):
                raise NOT_FOUND_ROUTE
            args.update(db=rest[0], coll=rest[1])
            if len(rest) == 2:
                return "GET", False, "get", args
            if rest[2] in COLLECTION_OPS:
                method, signed = COLLECTION_OPS[rest[2]]
                return method, signed, rest[2], args
        raise NOT_FOUND_ROUTE

    async def handle(self, request: Request) -> Response:
        """Starlette endpoint: answer one request (errors become their JSON answers)."""
        try:
            return await self._handle(request)
        except ApiError as exc:
            return Response(
                exc.encode(), exc.status, headers=exc.headers, media_type="application/json"
            )

    async def _handle(self, request: Request) -> Response:
        body = await self._read_capped(request)
        method, signed, op, args = self.route(request.url.path)
        if request.method != method:
            raise gateway(405, "Method Not Allowed", {"Allow": method})
        if signed:
            self._verify(request, body)
        query = self._query(request, op)
        handler: Callable[..., tuple[int, Any]] = getattr(self, "op_" + op)
        try:
            status, payload = await anyio.to_thread.run_sync(lambda: handler(args, query, body))
        finally:
            if op in WRITE_OPS:
                # Open read cursors would not see this write: later pages must re-query.
                self.store.invalidate()
        content = payload if isinstance(payload, bytes) else dumps(payload)
        return Response(content, status, media_type="application/json")

    async def _read_capped(self, request: Request) -> bytes:
        cap = self.config.request_bytes
        header_bytes = sum(len(k) + len(v) + 4 for k, v in request.scope["headers"])
        budget = cap - header_bytes - len(request.scope.get("raw_path", b"")) - 16
        declared = request.headers.get("content-length")
        over = declared is not None and declared.isdigit() and int(declared) > budget
        if over and int(declared or 0) > _DRAIN_LIMIT:
            raise REQUEST_TOO_LONG
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > budget:
                over = True
                chunks.clear()
            if size > _DRAIN_LIMIT:
                break
            if not over:
                chunks.append(chunk)
        if over:
            raise REQUEST_TOO_LONG
        return b"".join(chunks)

    def _verify(self, request: Request, body: bytes) -> None:
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]
        }
        try:
            self.verifier.verify(
                request.method,
                request.url.scheme,
                request.url.path,
                request.scope.get("query_string", b""),
                headers,
                body,
            )
        except SignatureError as exc:
            raise gateway(403, exc.message) from None

    @staticmethod
    def _query(request: Request, op: str) -> dict[str, str]:
        pairs = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), True)
        allowed: tuple[str, ...]
        if op in ("find", "get"):
            allowed = READ_PARAMS
        elif op == "count_documents":
            allowed = ("filter",)
        else:
            allowed = ()
        query: dict[str, str] = {}
        for key, value in pairs:
            if key not in allowed:
                names = ", ".join(allowed) if allowed else "none"
                raise bad_request(f"Unknown query parameter {key!r} for {op}; allowed: {names}.")
            if key in query:
                raise bad_request(f"Query parameter {key!r} given more than once.")
            query[key] = value
        return query

    # -- parameter parsing ---------------------------------------------------------------------
    @staticmethod
    def _json_param(query: dict[str, str], name: str) -> Any:
        raw = query.get(name)
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(
                f"Query parameter {name!r} is not valid JSON ({exc}): {raw[:200]!r}"
            ) from None

    @staticmethod
    def _int_param(query: dict[str, str], name: str) -> int:
        raw = query.get(name)
        if raw is None:
            return 0
        try:
            value = int(raw)
        except ValueError:
            raise bad_request(
                f"Query parameter {name!r} must be an integer, got {raw!r}."
            ) from None
        if value < 0:
            raise bad_request(f"Query parameter {name!r} must be >= 0, got {raw!r}.")
        return value

    def _read_args(self, query: dict[str, str]) -> dict[str, Any]:
        filt = self._json_param(query, "filter")
        if filt is not None and not isinstance(filt, dict):
            raise bad_request(f"Query parameter 'filter' must be a JSON object, got {filt!r}.")
        projection = self._json_param(query, "projection")
        if projection is not None and not isinstance(projection, dict):
            raise bad_request(
                f"Query parameter 'projection' must be a JSON object, got {projection!r}."
            )
        sort = self._json_param(query, "sort")
        if sort is not None:
            if not isinstance(sort, dict):
                raise bad_request(f"Query parameter 'sort' must be a JSON object, got {sort!r}.")
            for key, direction in sort.items():
                if direction not in (1, -1) and not isinstance(direction, dict):
                    raise bad_request(
                        f"Query parameter 'sort': direction of {key!r} must be 1 or -1,"
                        f" got {direction!r}."
                    )
        return {
            "filter": filt or {},
            "projection": projection or None,
            # A JSON object keeps its key order through orjson, so the sort spec does too.
            "sort": list(sort.items()) if sort else None,
            "limit": self._int_param(query, "limit"),
            "skip": self._int_param(query, "skip"),
        }

    @staticmethod
    def _json_body(body: bytes) -> Any:
        if not body:
            raise bad_request("Request body is empty; a JSON body is required.")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"Malformed JSON body: {exc}") from None

    def _coll(self, args: dict[str, str]):
        return self.store.collection(args["version"], args["db"], args["coll"])

    def _stamp(self, args: dict[str, str]) -> str | None:
        return writes.STAMP_FIELD[args["version"]] if args["db"] == "metadata_index" else None

    def _metadata(self, version: str):
        return self.store.collection(version, "metadata_index", "data_assets")

    # -- operations (run in a worker thread) ----------------------------------------------------
    def _page(self, args: dict, query: dict, *, short_pages: bool) -> tuple[int, bytes]:
        read = self._read_args(query)
        cap = self.config.page_bytes
        try:
            body, _ = run_mongo(
                self.store.find_page, self._coll(args), cap=cap, short_pages=short_pages, **read
            )
        except PageTooLarge:
            raise too_large(cap) from None
        return 200, body

    def op_find(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``GET .../find``: a page capped by bytes (short pages allowed)."""
        return self._page(args, query, short_pages=True)

    def op_get(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """Legacy bare GET: the whole answer must fit (413 otherwise)."""
        return self._page(args, query, short_pages=False)

    def op_count_documents(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``GET .../count_documents``."""
        filt = self._read_args(query)["filter"]
        return 200, run_mongo(self.store.count, self._coll(args), filt)

    def op_aggregate(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``POST .../aggregate`` with a JSON array of stages."""
        pipeline = self._json_body(body)
        if not isinstance(pipeline, list) or not all(isinstance(s, dict) for s in pipeline):
            raise bad_request("aggregate: body must be a JSON array of pipeline stages.")
        try:
            return 200, run_mongo(
                self.store.aggregate, self._coll(args), pipeline, self.config.page_bytes
            )
        except PageTooLarge:
            raise too_large(self.config.page_bytes) from None

    def op_insert_one(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``POST .../insert_one``."""
        return 200, writes.insert_one(self._coll(args), self._json_body(body), self._stamp(args))

    def op_update_one(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``POST .../update_one``."""
        return 200, writes.update_one(self._coll(args), self._json_body(body), self._stamp(args))

    def op_bulk_write(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``POST .../bulk_write``."""
        return writes.bulk_write(self._coll(args), self._json_body(body), self._stamp(args))

    def op_delete_one(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``DELETE .../delete_one``."""
        return 200, writes.delete(self._coll(args), self._json_body(body), many=False)

    def op_delete_many(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``DELETE .../delete_many``."""
        return 200, writes.delete(self._coll(args), self._json_body(body), many=True)

    def op_register(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``POST /{v}/assets/register`` -> 201."""
        version = args["version"]
        return 201, self.assets.register(version, self._metadata(version), self._json_body(body))

    def op_deregister(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``DELETE /{v}/assets/deregister``."""
        return 200, self.assets.deregister(self._metadata(args["version"]), self._json_body(body))

    def op_add_qc_evaluation(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``POST /{v}/add_qc_evaluation``."""
        version = args["version"]
        return 200, self.assets.add_qc_evaluation(
            version, self._metadata(version), self._json_body(body)
        )

    def op_data_summary(self, args: dict, query: dict, body: bytes) -> tuple[int, Any]:
        """``GET /{v}/data_summary/{id}``."""
        version = args["version"]
        return 200, self.assets.data_summary(version, self._metadata(version), args["record_id"])


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(config: DocDBConfig | None = None) -> FaultMiddleware:
    """Build the DocDB stand-in ASGI app (wrapped in the fault middleware).

    Args:
        config: explicit settings; by default read from ``NEURODATA_SANDBOX_*`` variables.

    Returns:
        The ASGI app; ``.app`` is the inner FastAPI app, ``.app.state.docdb`` the dispatcher.

    Example:
        >>> app = create_app(DocDBConfig(mongo_uri="mongodb://127.0.0.1:1/"))
        >>> app.service
        'docdb'
    """
    cfg = config or DocDBConfig.from_env()
    docdb = DocDBApp(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Index builds take ~0.5 s each on a seeded collection: keep them off the start-up path.
        threading.Thread(target=_ensure_indexes, args=(docdb.store,), daemon=True).start()
        try:
            yield
        finally:
            docdb.store.close()

    api = FastAPI(
        title="DocDB REST stand-in",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    api.state.docdb = docdb
    api.add_route("/{path:path}", docdb.handle, methods=ALL_METHODS, include_in_schema=False)

    def health() -> dict[str, Any]:
        docdb.store.ping()
        return {
            "mongo": "ok",
            "page_bytes": cfg.page_bytes,
            "request_bytes": cfg.request_bytes,
            "find": dict(docdb.store.stats),
        }

    return FaultMiddleware(api, service="docdb", health=health)


def _ensure_indexes(store: Store) -> None:
    try:
        store.ensure_indexes()
    except Exception:  # the API still works without them, only slower
        logger.exception("could not create the metadata indexes")
