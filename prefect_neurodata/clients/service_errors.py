"""Errors answered by remote services, and how they are reported without leaking secrets.

`ServiceError` is the one HTTP error type of every client (a `requests.HTTPError`, so seed-style
``except requests.HTTPError`` keeps working, and a `prefect_neurodata.errors.NeurodataError`);
`redact_url` masks credentials in every URL that reaches a message or a log line.

Example:
    ```python
    from prefect_neurodata.clients.service_errors import redact_url

    assert redact_url("https://u:p@x.org/a?token=abc") == "https://x.org/a?token=%2A%2A%2A"
    ```
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import requests

from prefect_neurodata.clients.retry import TRANSIENT_STATUSES
from prefect_neurodata.errors import NeurodataError

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


class ServiceError(requests.HTTPError, NeurodataError):
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
