"""Retry rules of the HTTP core: which statuses are transient, backoff with jitter, and
whether a failed request may be resent.

`RetryPolicy` is the one policy object (carried by `clients.http.TransportConfig`);
`never_reached_server` tells a failure that certainly did not deliver the request (so even a
non-idempotent write may be resent) from one that might have.

Example:
    ```python
    from prefect_neurodata.clients.retry import RetryPolicy

    policy = RetryPolicy(max_retries=3, backoff_factor=0.5)
    assert 0.25 <= policy.backoff(0) <= 0.5
    ```
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import random

import requests
import urllib3.exceptions

TRANSIENT_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})
"""Statuses that say "try again later" rather than "this request is wrong"."""

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
"""Methods that HTTP defines as idempotent; POST and PATCH are not."""

# 429 means the server refused the request before acting on it, so even a write may be resent.
# A 502/503/504 may come from a gateway after the backend already applied the write.
STATUSES_SAFE_FOR_WRITES: frozenset[int] = frozenset({429})


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


def never_reached_server(exc: BaseException) -> bool:
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
        # ``reason`` is an exception for urllib3's MaxRetryError but a plain string for others
        # (an SSL failure's reason is its message): follow exceptions only.
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__]
        pending.extend(item for item in linked if isinstance(item, BaseException))
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return False
