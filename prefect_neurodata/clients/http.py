"""The one HTTP core shared by every client of this package (AIND and CAVE alike).

It gives each client the same behaviour on the wire:

* pooled `requests.Session` objects (`new_session`), with urllib3's own retries switched off
  so that there is exactly one retry policy, the one here;
* a timeout on every request (`DEFAULT_TIMEOUT`, configurable per client and per call), because
  a hung socket inside a worker thread cannot be interrupted by Prefect's task timeouts;
* retries of transient failures only (connection errors, read timeouts, 429 honouring
  ``Retry-After``, 502/503/504) with exponential backoff and jitter (`RetryPolicy`);
* no blind retry of non-idempotent writes: a POST is retried only when the server certainly did
  not act on it (the connection was never made, or the server answered 429), unless the caller
  says the request is idempotent (a read sent as POST, an upsert keyed by ``_id``);
* request authentication (for example SigV4) re-applied on every attempt, so a retried request
  never reuses an old signature;
* one error type, `ServiceError`, a `requests.HTTPError` that carries the status, method, URL
  (with secrets redacted) and the server's own message;
* fast JSON through orjson (`dumps`, `loads`, `decode_json`) that also understands UUIDs,
  datetimes, numpy and pandas values, and names the field it cannot serialise;
* bounded concurrency for independent pages or partitions (`imap_bounded`, `map_bounded`).

Example:
    ```python
    from prefect_neurodata.clients.http import HttpClient, RetryPolicy

    http = HttpClient(timeout=(5, 60), retry=RetryPolicy(max_retries=3))
    response = http.request("GET", "https://api.example.org/v1/items", params={"limit": 10})
    items = http.json(response)
    ```
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import email.utils
import enum
import logging
import pathlib
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from prefect_neurodata import __version__

logger = logging.getLogger("prefect_neurodata.http")

Timeout = float | tuple[float, float] | None

DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 300.0)
"""Seconds to wait for a connection and for each read of the response."""

TRANSIENT_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})
"""Statuses that say "try again later" rather than "this request is wrong"."""

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
"""Methods that HTTP defines as idempotent; POST and PATCH are not."""

# 429 means the server refused the request before acting on it, so even a write may be resent.
# A 502/503/504 may come from a gateway after the backend already applied the write.
_STATUSES_SAFE_FOR_WRITES: frozenset[int] = frozenset({429})

_SENSITIVE_QUERY_KEYS: frozenset[str] = frozenset(
    {
        "token",
        "middle_auth_token",
        "access_token",
        "auth_token",
        "password",
        "secret",
        "api_key",
        "apikey",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried.

    Attributes:
        max_retries: Retries after the first attempt; 0 disables retrying.
        backoff_factor: Seconds of the first backoff; each further retry doubles it.
        backoff_max: Upper bound of one backoff in seconds.
        jitter: Fraction of each backoff that is randomised (0 = none, 1 = full jitter), so that
            many clients failing together do not retry in lockstep.
        statuses: Response statuses that are retried.
        retry_after_max: Upper bound in seconds for a server's ``Retry-After``.

    Example:
        ```python
        policy = RetryPolicy(max_retries=8, backoff_factor=1.0)
        policy.backoff(3)  # a value between 4 and 8 seconds
        ```
    """

    max_retries: int = 5
    backoff_factor: float = 0.5
    backoff_max: float = 60.0
    jitter: float = 0.5
    statuses: frozenset[int] = TRANSIENT_STATUSES
    retry_after_max: float = 300.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.backoff_factor < 0 or self.backoff_max < 0:
            raise ValueError("backoff_factor and backoff_max must be >= 0")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_retries=0)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0)."""
        base = min(self.backoff_max, self.backoff_factor * (2**attempt))
        return base * (1.0 - self.jitter * random.random())

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait, preferring the server's ``Retry-After`` when it sent one."""
        server_delay = parse_retry_after(retry_after)
        if server_delay is not None:
            return min(server_delay, self.retry_after_max)
        return self.backoff(attempt)


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds or as an HTTP date; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def redact_url(url: str) -> str:
    """Return ``url`` without credentials: user info and sensitive query values are masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SENSITIVE_QUERY_KEYS else v) for k, v in pairs]
        )
    else:
        query = ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def server_message(response: requests.Response, limit: int = 2000) -> str:
    """Extract the human-readable message a server put in an error response."""
    text = response.text or ""
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        texts = [body.get(key) for key in ("message", "detail", "msg", "errorMessage", "Message")]
        main = next((value for value in texts if value), None)
        if main is not None and not isinstance(main, str):
            main = orjson.dumps(main).decode()
        kind = body.get("error")
        if isinstance(kind, str) and kind and main and kind not in main:
            # e.g. {"error": "MongoServerError", "detail": "..."}: the kind says what failed.
            return f"{kind}: {main}"[:limit]
        if main or kind:
            return str(main or kind)[:limit]
    return text.strip()[:limit] or (response.reason or "")


class ServiceError(requests.HTTPError):
    """An HTTP error answered by a remote service.

    Subclasses `requests.HTTPError`, so code written against the seed clients' ``except
    requests.HTTPError`` keeps working, and adds what a person needs to act on it.

    Attributes:
        status_code: The HTTP status.
        method: The request method.
        url: The request URL with credentials redacted.
        server_message: The service's own explanation (its ``message``/``detail`` field, or text).
        attempts: How many attempts were made before giving up.
    """

    def __init__(
        self,
        *,
        status_code: int,
        method: str,
        url: str,
        server_message: str,
        reason: str = "",
        attempts: int = 1,
        response: requests.Response | None = None,
    ) -> None:
        self.status_code = status_code
        self.method = method
        self.url = redact_url(url)
        self.server_message = server_message
        self.reason = reason
        self.attempts = attempts
        kind = "Client Error" if status_code < 500 else "Server Error"
        retried = f" (after {attempts} attempts)" if attempts > 1 else ""
        message = (
            f"{status_code} {kind}: {reason or server_message or 'no reason given'} "
            f"for {method} {self.url}{retried}"
        )
        if server_message and server_message != reason:
            message += f": {server_message}"
        super().__init__(message, response=response)

    @property
    def is_transient(self) -> bool:
        """Whether a later retry of the same request may succeed."""
        return self.status_code in TRANSIENT_STATUSES or self.status_code == 500

    @classmethod
    def from_response(cls, response: requests.Response, attempts: int = 1) -> ServiceError:
        """Build the error for a failed response."""
        request = response.request
        return cls(
            status_code=response.status_code,
            method=(request.method if request is not None else None) or "?",
            url=response.url or (request.url if request is not None else "") or "",
            server_message=server_message(response),
            reason=response.reason or "",
            attempts=attempts,
            response=response,
        )


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure that retrying later may fix (used by Prefect retry rules).

    Connection errors, timeouts, 429, 500 and 502-504 are transient; any other HTTP error and
    every validation error is not.
    """
    if isinstance(exc, ServiceError):
        return exc.is_transient
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code in TRANSIENT_STATUSES | {500}
    return isinstance(
        exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    )


def _never_reached_server(exc: BaseException) -> bool:
    """True when the request certainly was not delivered (no connection could be made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(
            current, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
        ):
            return True
        pending.extend([getattr(current, "reason", None), current.__cause__, current.__context__])
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return False


def new_session(
    *,
    pool_maxsize: int = 10,
    pool_block: bool = False,
    verify: bool | str = True,
    headers: Mapping[str, str] | None = None,
) -> requests.Session:
    """Create a pooled `requests.Session` for use with `HttpClient`.

    Args:
        pool_maxsize: Connections kept per host; raise it to match the concurrency of
            parallel page or partition fetches.
        pool_block: Whether a request waits for a free pooled connection instead of opening
            an extra one.
        verify: TLS verification: True, False, or a CA bundle path.
        headers: Headers sent with every request of this session.

    Returns:
        A session whose adapters do no retries of their own.
    """
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=pool_maxsize,
        pool_maxsize=pool_maxsize,
        max_retries=0,
        pool_block=pool_block,
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.verify = verify
    default_agent = session.headers["User-Agent"]
    session.headers["User-Agent"] = f"prefect-neurodata/{__version__} {default_agent}"
    if headers:
        session.headers.update(headers)
    return session


_MISSING: Any = object()


class HttpClient:
    """Sends requests with this package's timeout, retry and error rules.

    Args:
        session: The session to send through; a pooled one is created when omitted.
        timeout: Default ``(connect, read)`` timeout in seconds for every request.
        retry: The retry policy for transient failures.
        base_headers: Headers added to every request (per-call headers win).
        sleep: The function used to wait between attempts (tests pass a recorder).

    Example:
        ```python
        http = HttpClient()
        response = http.request("POST", "https://example.org/query", json={"q": 1},
                                idempotent=True)
        ```
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        base_headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session if session is not None else new_session()
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.base_headers = dict(base_headers or {})
        self._sleep = sleep

    def close(self) -> None:
        """Close the underlying session and its pooled connections."""
        self.session.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        json: Any = _MISSING,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        auth: requests.auth.AuthBase | None = None,
        idempotent: bool | None = None,
        stream: bool = False,
        timeout: Timeout = _MISSING,
        raise_for_status: bool = True,
        allow_redirects: bool = True,
    ) -> requests.Response:
        """Send one request, retrying transient failures as the policy allows.

        Args:
            method: HTTP method.
            url: Absolute URL.
            params: Query parameters.
            json: A body to encode with `dumps` (sent as ``application/json``).
            data: A raw body (bytes or str); mutually exclusive with ``json``.
            headers: Extra headers for this request.
            cookies: Cookies for this request.
            auth: A requests auth hook; it runs again for every attempt, so signatures that
                embed a timestamp (SigV4) are fresh on each retry.
            idempotent: Whether the request may be repeated without changing the outcome.
                Defaults to True for GET, HEAD, OPTIONS, PUT and DELETE.
            stream: Leave the body unread for the caller to stream.
            timeout: Overrides the client's default timeout.
            raise_for_status: Raise `ServiceError` for any status >= 400.
            allow_redirects: Follow redirects.

        Returns:
            The final response.

        Raises:
            ServiceError: The server answered with an error status (after any retries).
            requests.ConnectionError: The server could not be reached (after any retries).
            requests.Timeout: The server did not answer in time (after any retries).
            TypeError: ``json`` holds a value that cannot be serialised; the message names it.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        merged_headers = {**self.base_headers, **(headers or {})}
        body: bytes | str | None = data
        if json is not _MISSING:
            if data is not None:
                raise ValueError("pass either json= or data=, not both")
            body = dumps(json)
            merged_headers.setdefault("Content-Type", "application/json")
        request_timeout = self.timeout if timeout is _MISSING else timeout

        attempt = 0
        while True:
            prepared = self.session.prepare_request(
                requests.Request(
                    method,
                    url,
                    params=params,
                    data=body,
                    headers=merged_headers,
                    cookies=cookies,
                    auth=auth,
                )
            )
            settings = self.session.merge_environment_settings(
                prepared.url, {}, stream, self.session.verify, None
            )
            try:
                response = self.session.send(
                    prepared, timeout=request_timeout, allow_redirects=allow_redirects, **settings
                )
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                may_resend = idempotent or _never_reached_server(exc)
                if not may_resend or attempt >= self.retry.max_retries:
                    raise
                delay = self.retry.backoff(attempt)
                self._log_retry(method, url, type(exc).__name__, attempt, delay)
            else:
                status = response.status_code
                retryable = status in self.retry.statuses and (
                    idempotent or status in _STATUSES_SAFE_FOR_WRITES
                )
                if not retryable or attempt >= self.retry.max_retries:
                    if raise_for_status and status >= 400:
                        raise ServiceError.from_response(response, attempts=attempt + 1)
                    return response
                delay = self.retry.delay(attempt, response.headers.get("Retry-After"))
                response.close()
                self._log_retry(method, url, f"HTTP {status}", attempt, delay)
            self._sleep(delay)
            attempt += 1

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """`request` with GET."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        """`request` with POST."""
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> requests.Response:
        """`request` with PUT."""
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        """`request` with DELETE."""
        return self.request("DELETE", url, **kwargs)

    @staticmethod
    def json(response: requests.Response) -> Any:
        """Decode a response body as JSON (see `decode_json`)."""
        return decode_json(response)

    def _log_retry(self, method: str, url: str, reason: str, attempt: int, delay: float) -> None:
        logger.warning(
            "%s %s failed with %s; retry %d of %d in %.2f s",
            method,
            redact_url(url),
            reason,
            attempt + 1,
            self.retry.max_retries,
            delay,
        )


def _default(value: Any) -> Any:
    """Encode the types orjson leaves to us."""
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    type_module = type(value).__module__
    if type_module.startswith(("numpy", "pandas")):
        # Non-contiguous or object arrays, pandas Series/Index/arrays, numpy scalars orjson
        # refuses, and pandas' missing-value markers.
        if hasattr(value, "tolist"):
            return value.tolist()
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if type(value).__name__ in {"NAType", "NaTType"}:
            return None
        if hasattr(value, "item"):
            return value.item()
    raise TypeError(f"type {type(value).__name__} is not JSON serialisable")


def dumps(value: Any, *, what: str = "body") -> bytes:
    """Serialise ``value`` to JSON bytes with orjson.

    Handles str/int/float/bool/None, dicts (non-string keys are stringified), lists, tuples,
    UUIDs, datetimes and dates (ISO 8601), dataclasses, enums, Decimals, sets, paths, pydantic
    models, numpy arrays and scalars, and pandas values. NaN and infinity become ``null``.

    Args:
        value: What to serialise.
        what: The name used for the root of ``value`` in error messages.

    Returns:
        UTF-8 JSON.

    Raises:
        TypeError: A value cannot be serialised; the message gives its path, e.g.
            ``records[3].subject.weight``, and its type.
    """
    try:
        return orjson.dumps(value, default=_default, option=_JSON_OPTIONS)
    except TypeError as exc:
        path, bad = _find_unserialisable(value, what)
        if path is None:
            raise TypeError(f"cannot serialise {what} to JSON: {exc}") from exc
        raise TypeError(
            f"cannot serialise {path} to JSON: value of type {type(bad).__name__} is not supported"
        ) from exc


def _find_unserialisable(value: Any, path: str) -> tuple[str | None, Any]:
    """Depth-first search for the first leaf orjson cannot encode."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                try:
                    orjson.dumps({key: None}, default=_default, option=_JSON_OPTIONS)
                except TypeError:
                    return f"{path} key {key!r}", key
            found = _find_unserialisable(item, f"{path}.{key}")
            if found[0] is not None:
                return found
        return None, None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_unserialisable(item, f"{path}[{index}]")
            if found[0] is not None:
                return found
        return None, None
    try:
        orjson.dumps(value, default=_default, option=_JSON_OPTIONS)
    except TypeError:
        return path, value
    return None, None


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON with orjson."""
    return orjson.loads(data)


def decode_json(response: requests.Response) -> Any:
    """Decode a response body as JSON.

    Raises:
        requests.JSONDecodeError: The body is empty or not JSON (the same error type the seed
            clients raise), with the method and URL in the message.
    """
    content = response.content
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        request = response.request
        where = f"{request.method} {redact_url(request.url or '')}" if request else "response"
        doc = content.decode("utf-8", "replace")[:200] if content else ""
        raise requests.JSONDecodeError(f"{where} returned invalid JSON: {exc}", doc, 0) from exc


def imap_bounded(fn: Callable[[T], R], items: Iterable[T], max_workers: int = 4) -> Iterator[R]:
    """Apply ``fn`` to ``items`` with at most ``max_workers`` calls in flight, yielding in order.

    Results are yielded as soon as the next one in order is ready, and no more than
    ``max_workers`` results are held at once, so a consumer that writes each result away keeps
    memory bounded however many items there are.

    Args:
        fn: The function; it must be safe to call from several threads.
        items: The inputs, consumed lazily.
        max_workers: Calls in flight; 1 runs everything in the calling thread.

    Raises:
        Exception: The first exception raised by ``fn``, in input order; pending calls are
            cancelled.
    """
    if max_workers <= 1:
        for item in items:
            yield fn(item)
        return
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="neurodata") as pool:
        window: deque[Future[R]] = deque()
        try:
            for item in iterator:
                window.append(pool.submit(fn, item))
                if len(window) >= max_workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


def map_bounded(fn: Callable[[T], R], items: Iterable[T], max_workers: int = 4) -> list[R]:
    """Like `imap_bounded` but returns a list."""
    return list(imap_bounded(fn, items, max_workers))
