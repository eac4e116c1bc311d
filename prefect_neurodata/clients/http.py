"""The one HTTP core shared by every client of this package (AIND and CAVE alike).

It gives each client the same behaviour on the wire:

* one `TransportConfig` (timeout, retry policy, pool size, TLS verify, optional session
  factory) built by a public factory and handed to every subclient, which builds its session
  and `HttpClient` from it;
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
  datetimes, numpy and pandas values, and names the field it cannot serialise; bulk reads
  decode with the cyclic garbage collector paused (`collection_paused`);
* bounded concurrency for independent pages or partitions (`imap_bounded`, `map_bounded`).

The pieces live in modules of their own and are re-exported here: `clients.retry` (the retry
policy), `clients.service_errors` (`ServiceError`, URL redaction), `clients.codec` (JSON) and
`clients.concurrency` (bounded maps).

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
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter

from prefect_neurodata import __version__
from prefect_neurodata.clients.codec import (
    JSON_OPTIONS,
    collection_paused,
    dumps,
    encode_default,
    loads,
)
from prefect_neurodata.clients.concurrency import imap_bounded, map_bounded
from prefect_neurodata.clients.retry import (
    IDEMPOTENT_METHODS,
    STATUSES_SAFE_FOR_WRITES,
    TRANSIENT_STATUSES,
    RetryPolicy,
    never_reached_server,
    parse_retry_after,
)
from prefect_neurodata.clients.service_errors import (
    ServiceError,
    is_transient,
    redact_url,
    server_message,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "JSON_OPTIONS",
    "TRANSIENT_STATUSES",
    "HttpClient",
    "RetryPolicy",
    "ServiceError",
    "Timeout",
    "TransportConfig",
    "collection_paused",
    "decode_json",
    "dumps",
    "encode_default",
    "imap_bounded",
    "is_transient",
    "loads",
    "map_bounded",
    "new_session",
    "parse_retry_after",
    "redact_url",
    "server_message",
]

logger = logging.getLogger("prefect_neurodata.http")

Timeout = float | tuple[float, float] | None

DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 300.0)
"""Seconds to wait for a connection and for each read of the response."""


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


@dataclasses.dataclass(frozen=True)
class TransportConfig:
    """Every transport setting of a client in one object: timeout, retries, pool and TLS.

    A public factory (``CAVEclient(...)``, ``MetadataDbClient(...)``) builds one and passes it
    down to each of its subclients, which build their sessions and `HttpClient` from it
    (`new_session`, `http_client`), so a setting is decided in one place and never patched
    onto a client afterwards. Like httpx's ``Timeout``/``Limits`` or botocore's ``Config``,
    it is immutable: derive a variant with `replace` or `with_overrides`.

    Attributes:
        timeout: ``(connect, read)`` seconds for every request, or one number for both.
        retry: The retry policy of transient failures.
        pool_maxsize: Pooled connections per host.
        pool_block: Whether a request waits for a free pooled connection.
        verify: TLS verification: True, False, or a CA bundle path.
        session_factory: Builds the `requests.Session` instead of `new_session` (for a custom
            transport adapter, proxies or client certificates); it must be a module-level
            function for clients to stay picklable.

    Example:
        ```python
        from prefect_neurodata.clients.http import RetryPolicy, TransportConfig

        config = TransportConfig(timeout=(5, 60), retry=RetryPolicy(max_retries=2))
        patient = config.with_overrides(timeout=(5, 600))
        http = patient.http_client(base_headers={"Accept": "application/json"})
        ```
    """

    timeout: Timeout = DEFAULT_TIMEOUT
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    pool_maxsize: int = 10
    pool_block: bool = False
    verify: bool | str = True
    session_factory: Callable[[], requests.Session] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pool_maxsize, bool) or int(self.pool_maxsize) < 1:
            raise ValueError(f"pool_maxsize must be an int >= 1, got {self.pool_maxsize!r}")
        parts = self.timeout if isinstance(self.timeout, tuple) else (self.timeout,)
        if any(part is not None and not part > 0 for part in parts):
            raise ValueError(f"timeout must be positive seconds or None, got {self.timeout!r}")

    def replace(self, **changes: Any) -> TransportConfig:
        """A copy with ``changes`` applied (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(
        self,
        *,
        timeout: Timeout = None,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        verify: bool | str | None = None,
    ) -> TransportConfig:
        """A copy in which every argument that is not None replaces this config's value.

        The seed clients' constructors take ``max_retries``/``pool_maxsize``/``pool_block``
        with None meaning "the default"; this applies exactly the ones a caller gave.
        """
        changes: dict[str, Any] = {}
        if timeout is not None:
            changes["timeout"] = timeout
        if max_retries is not None:
            changes["retry"] = dataclasses.replace(self.retry, max_retries=int(max_retries))
        if pool_maxsize is not None:
            changes["pool_maxsize"] = int(pool_maxsize)
        if pool_block is not None:
            changes["pool_block"] = bool(pool_block)
        if verify is not None:
            changes["verify"] = verify
        return self.replace(**changes) if changes else self

    def new_session(self, headers: Mapping[str, str] | None = None) -> requests.Session:
        """A session with this config's pool and TLS settings (or from `session_factory`)."""
        if self.session_factory is not None:
            session = self.session_factory()
            if headers:
                session.headers.update(headers)
            return session
        return new_session(
            pool_maxsize=self.pool_maxsize,
            pool_block=self.pool_block,
            verify=self.verify,
            headers=headers,
        )

    def http_client(
        self,
        session: requests.Session | None = None,
        *,
        base_headers: Mapping[str, str] | None = None,
    ) -> HttpClient:
        """An `HttpClient` over ``session`` (a new one from `new_session` when omitted)."""
        return HttpClient(
            session if session is not None else self.new_session(),
            timeout=self.timeout,
            retry=self.retry,
            base_headers=base_headers,
        )


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
        cookies: dict[str, str] | None = None,
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
            # Always sent streaming: an unstreamed body is then read here in one piece
            # (`_read_body`), inside this try so that a broken read is retried like a failed send.
            settings = self.session.merge_environment_settings(
                prepared.url or url, {}, True, self.session.verify, None
            )
            try:
                response = self.session.send(
                    prepared, timeout=request_timeout, allow_redirects=allow_redirects, **settings
                )
                if not stream:
                    _read_body(response)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                may_resend = idempotent or never_reached_server(exc)
                if not may_resend or attempt >= self.retry.max_retries:
                    raise
                delay = self.retry.backoff(attempt)
                self._log_retry(method, url, type(exc).__name__, attempt, delay)
            else:
                status = response.status_code
                retryable = status in self.retry.statuses and (
                    idempotent or status in STATUSES_SAFE_FOR_WRITES
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


def _read_body(response: requests.Response) -> None:
    """Read the whole body of a streamed response into ``response.content`` at once.

    requests reads an unstreamed body in 10 KB pieces, each going through several layers of
    urllib3 calls. A 5 MB DocDB page takes about 500 of them, and on a full read of 213 MB the
    per-piece overhead cost more CPU than the socket reads. With ``chunk_size=None`` urllib3
    reads the body (up to its Content-Length) in one call. requests still maps read errors to
    its own exceptions (`requests.ConnectionError`, `ChunkedEncodingError`, ...), and the
    connection goes back to the pool once the body is read, as with an unstreamed request.
    """
    # requests' own unstreamed path fills the same attribute (`Response.content`).
    response._content = b"".join(response.iter_content(chunk_size=None))


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
