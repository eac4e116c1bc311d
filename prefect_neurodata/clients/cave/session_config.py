"""Session defaults for the CAVE clients: retries, connection pools and timeouts.

Like caveclient, the defaults are module-wide and must be set *before* clients are created:

```python
from prefect_neurodata.clients.cave import set_session_defaults, CAVEclient

set_session_defaults(max_retries=5, pool_maxsize=16)
client = CAVEclient("my_datastack")
```

Per client, the same settings travel as one `TransportConfig` (``CAVEclient(..., timeout=...)``
or ``transport=``); `default_transport` is the config built from these defaults.

Unlike caveclient, retries are not done by urllib3 inside the session: they are done by the shared
HTTP core (`prefect_neurodata.clients.http.HttpClient`), which also retries 429 (honouring
``Retry-After``) and timeouts, never blindly resends a non-idempotent write, and puts a timeout
on every request (caveclient sets none).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from prefect_neurodata.clients.http import DEFAULT_TIMEOUT, RetryPolicy, Timeout, TransportConfig

logger = logging.getLogger(__name__)

SESSION_DEFAULTS: dict[str, Any] = {}
"""The current defaults; read them with `get_session_defaults`."""

_MAX_RETRIES_ATTR = "_neurodata_max_retries"


def set_session_defaults(
    max_retries: int = 3,
    pool_block: bool = False,
    pool_maxsize: int = 10,
    backoff_factor: float = 0.1,
    backoff_max: float = 120,
    status_forcelist: Iterable[int] | None = (502, 503, 504),
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Set the defaults used by every CAVE client created afterwards.

    Args:
        max_retries: Retries of a transient failure after the first attempt.
        pool_block: Whether a request waits for a free pooled connection.
        pool_maxsize: Pooled connections per host.
        backoff_factor: Seconds of the first backoff; doubles on each retry.
        backoff_max: Upper bound of one backoff, in seconds.
        status_forcelist: Statuses retried; 429 is always added (the server refused the
            request before acting on it, so retrying is safe even for writes).
        timeout: ``(connect, read)`` seconds for every request, or one number for both.

    Raises:
        ValueError: A value is out of range (the message names it).
    """
    if max_retries is None or int(max_retries) < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if pool_maxsize is None or int(pool_maxsize) < 1:
        raise ValueError(f"pool_maxsize must be an int >= 1, got {pool_maxsize!r}")
    if backoff_factor < 0 or backoff_max < 0:
        raise ValueError("backoff_factor and backoff_max must be >= 0")
    SESSION_DEFAULTS.update(
        max_retries=int(max_retries),
        pool_block=bool(pool_block),
        pool_maxsize=int(pool_maxsize),
        backoff_factor=float(backoff_factor),
        backoff_max=float(backoff_max),
        status_forcelist=tuple(status_forcelist or ()),
        timeout=timeout,
    )


def get_session_defaults() -> dict[str, Any]:
    """Return a copy of the current session defaults (see `set_session_defaults`)."""
    return dict(SESSION_DEFAULTS)


set_session_defaults()


def _or_default(value: Any, key: str) -> Any:
    return SESSION_DEFAULTS[key] if value is None else value


def patch_session(
    session: requests.Session,
    max_retries: int | None = None,
    pool_block: bool | None = None,
    pool_maxsize: int | None = None,
) -> None:
    """Configure the connection pool of ``session`` and record its retry budget.

    Mounts a pooled adapter for ``http://`` and ``https://`` with urllib3 retries switched off:
    the CAVE clients retry through the shared HTTP core instead, using the budget recorded here
    (see `retry_policy`), so a request is never retried by two layers at once.

    Args:
        session: Session to modify.
        max_retries: Retries per request; None uses the session defaults.
        pool_block: Whether to block when the pool is exhausted; None uses the defaults.
        pool_maxsize: Pooled connections per host; None uses the defaults.
    """
    max_retries = _or_default(max_retries, "max_retries")
    pool_block = _or_default(pool_block, "pool_block")
    pool_maxsize = _or_default(pool_maxsize, "pool_maxsize")
    adapter = HTTPAdapter(
        pool_connections=pool_maxsize,
        pool_maxsize=pool_maxsize,
        pool_block=pool_block,
        max_retries=0,
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    setattr(session, _MAX_RETRIES_ATTR, int(max_retries))


def retry_policy(max_retries: int | None = None) -> RetryPolicy:
    """The retry policy of a CAVE client from the session defaults.

    Args:
        max_retries: Overrides the default number of retries.
    """
    statuses = frozenset(SESSION_DEFAULTS["status_forcelist"]) | {429}
    return RetryPolicy(
        max_retries=int(_or_default(max_retries, "max_retries")),
        backoff_factor=SESSION_DEFAULTS["backoff_factor"],
        backoff_max=SESSION_DEFAULTS["backoff_max"],
        statuses=statuses,
    )


def default_transport() -> TransportConfig:
    """The `TransportConfig` of the current session defaults (what a CAVE client uses when it
    is given no transport of its own).

    Example:
        ```python
        set_session_defaults(max_retries=5, timeout=(5, 60))
        assert default_transport().retry.max_retries == 5
        ```
    """
    return TransportConfig(
        timeout=SESSION_DEFAULTS["timeout"],
        retry=retry_policy(),
        pool_maxsize=SESSION_DEFAULTS["pool_maxsize"],
        pool_block=SESSION_DEFAULTS["pool_block"],
    )


def session_max_retries(session: requests.Session) -> int:
    """The retry budget `patch_session` recorded on ``session`` (the default if none)."""
    return int(getattr(session, _MAX_RETRIES_ATTR, SESSION_DEFAULTS["max_retries"]))
