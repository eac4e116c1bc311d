"""The one retry budget of every task: what is transient, and the options of a retried task.

Retries happen in exactly two layers, which never multiply with a third:

1. the HTTP core (`prefect_neurodata.clients.http.HttpClient`) retries a transient failure of
   one request, as its `RetryPolicy` allows (boto3 does the same for AWS calls);
2. a task retries its whole batch, only when what failed is transient (`is_transient_error`)
   and only after the core gave up; items already done are skipped by the retried batch.

Loops over the items of a batch do not retry. So the worst case per item in an outage is
``(core retries + 1) * (TASK_RETRIES + 1)`` requests, and an error that no retry can fix (a
4xx answer, an unknown bucket, refused credentials, invalid input) fails the task at once.

Example:
    ```python
    from prefect import task
    from prefect_neurodata.tasks.retries import task_options

    @task(name="count-assets", **task_options(tags=["docdb"]))
    def count_assets(block_name: str) -> int:
        ...
    ```
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prefect.cache_policies import NONE, CachePolicy
from prefect.client.schemas.objects import State, TaskRun

from prefect_neurodata.clients.http import is_transient
from prefect_neurodata.errors import NeurodataError

TASK_RETRIES = 4
"""Task-level retries of a batch, after the HTTP core's own request retries gave up."""

TASK_RETRY_DELAYS: list[float] = [1.0, 2.0, 5.0, 10.0]
"""Seconds before each task retry (items already done are skipped on the retry)."""

TASK_RETRY_JITTER = 0.3
"""Fraction of each task retry delay that is randomised (runs failing together spread out)."""

# Status codes of AWS answers that say "try again": throttling and server-side failures.
_AWS_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})

# SQLSTATE classes of Postgres errors a retry may outlive: connection exceptions (08),
# insufficient resources (53), operator intervention such as a restart (57P), serialization
# failures and deadlocks (40001, 40P01).
_PG_TRANSIENT_PREFIXES = ("08", "53", "57P", "40001", "40P01")

# Connection failures reported before Postgres could say anything (no SQLSTATE), as opposed to
# refused credentials or an unknown database, which a retry cannot fix.
_PG_CONNECT_FAILURES = (
    "could not connect",
    "connection refused",
    "server closed the connection",
    "connection timed out",
    "timeout expired",
    "could not receive data",
    "could not send data",
    "connection already closed",
    "ssl syscall error",
)


class TransientBatchError(RuntimeError, NeurodataError):
    """Some items of a batch hit transient failures that the HTTP core's retries did not
    outlast.

    The items that did land are reported in the message; a task retry re-checks every item
    first, so nothing lands twice.
    """

    @classmethod
    def raise_for(cls, failed: Sequence[str], total: int, what: str) -> None:
        """Raise when ``failed`` (the items that did not land) is not empty.

        Example:
            ```python
            # "1 of 5 registrations hit transient errors (first: s3://b/a); the ones that
            # landed are skipped on retry"
            TransientBatchError.raise_for(["s3://b/a"], 5, "registrations")
            ```
        """
        if failed:
            raise cls(
                f"{len(failed)} of {total} {what} hit transient errors (first: {failed[0]}); "
                "the ones that landed are skipped on retry"
            )


def is_transient_error(exc: BaseException) -> bool:
    """Whether retrying later may fix ``exc``: the one classifier of every task.

    Transient:

    * HTTP: connection errors, timeouts, 429, 500 and 502-504 (`clients.http.is_transient`);
    * AWS (botocore): throttling codes, 5xx answers, request timeouts and endpoint connection
      errors (botocore's own standard-mode checkers);
    * SQL (SQLAlchemy): disconnects (``connection_invalidated``), pool timeouts, and errors
      whose SQLSTATE is a connection, resource or restart class;
    * MongoDB (pymongo): ``AutoReconnect`` and server-selection timeouts;
    * a `TransientBatchError`, a group whose errors are all transient, or an error raised
      from a transient one.

    Anything else is not: 4xx answers, ``NoSuchBucket``/``AccessDenied``, refused passwords,
    validation errors and bugs fail at once.

    Example:
        ```python
        from botocore.exceptions import ClientError

        error = ClientError({"Error": {"Code": "NoSuchBucket"}}, "ListObjectsV2")
        assert not is_transient_error(error)
        ```
    """
    if isinstance(exc, TransientBatchError):
        return True
    for attribute in ("errors", "exceptions"):  # batch errors and exception groups
        group = getattr(exc, attribute, None)
        if (
            isinstance(group, (list, tuple))
            and group
            and all(isinstance(e, BaseException) for e in group)
        ):
            return all(is_transient_error(e) for e in group)
    if _is_transient_here(exc):
        return True
    cause = exc.__cause__
    return cause is not None and cause is not exc and _is_transient_here(cause)


def _is_transient_here(exc: BaseException) -> bool:
    return (
        is_transient(exc)
        or _is_transient_aws(exc)
        or _is_transient_sql(exc)
        or _is_transient_mongo(exc)
        or isinstance(exc, (TimeoutError, ConnectionError))
    )


def _is_transient_aws(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError
        from botocore.retries import standard
    except ImportError:  # pragma: no cover - botocore is a declared dependency
        return False
    if isinstance(exc, ClientError):
        context = standard.RetryContext(attempt_number=1, parsed_response=exc.response)
        if standard.ThrottledRetryableChecker().is_retryable(context):
            return True
        if standard.TransientRetryableChecker().is_retryable(context):
            return True
        metadata = exc.response.get("ResponseMetadata", {})
        return metadata.get("HTTPStatusCode") in _AWS_TRANSIENT_STATUSES
    context = standard.RetryContext(attempt_number=1, caught_exception=exc)
    return bool(standard.TransientRetryableChecker().is_retryable(context))


def _is_transient_sql(exc: BaseException) -> bool:
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - sqlalchemy is a declared dependency
        return False
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa_exc.OperationalError):
        return False
    code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
    if code:
        return str(code).startswith(_PG_TRANSIENT_PREFIXES)
    message = str(exc.orig).lower()
    return any(marker in message for marker in _PG_CONNECT_FAILURES)


def _is_transient_mongo(exc: BaseException) -> bool:
    try:
        from pymongo import errors as mongo_errors
    except ImportError:  # pragma: no cover - pymongo is a declared dependency
        return False
    return isinstance(exc, (mongo_errors.AutoReconnect, mongo_errors.ServerSelectionTimeoutError))


def retry_transient_only(task: Any, task_run: TaskRun, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task only for a transient error
    (`is_transient_error`)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classifying, not handling
        return is_transient_error(exc)
    return False


def task_options(
    *,
    tags: Iterable[str] = (),
    retries: int = TASK_RETRIES,
    retry_delay_seconds: float | list[float] | None = None,
    cache_policy: CachePolicy = NONE,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments of ``@task`` for a task of this package: the one retry budget.

    Args:
        tags: Tags for concurrency limits (``docdb``, ``s3``, ``rds``, ``cave``, ``write``);
            left out when empty, so a shared options dict may be combined with per-task
            ``tags=``.
        retries: Batch retries after the HTTP core gave up.
        retry_delay_seconds: Seconds before each retry (default `TASK_RETRY_DELAYS`).
        cache_policy: Result cache policy; ``NONE`` (the default) for writes and live reads.
        **overrides: Any other ``@task`` option, e.g. ``timeout_seconds``.

    Returns:
        ``retries``, ``retry_delay_seconds``, ``retry_jitter_factor``, ``retry_condition_fn``
        (`retry_transient_only`), ``tags`` and ``cache_policy``, plus ``overrides``.

    Example:
        ```python
        @task(name="export-rds-table", **task_options(tags=["rds", "write"]))
        def export_rows(rds: str, table: str, rows: list[dict]) -> int:
            ...
        ```
    """
    options: dict[str, Any] = {
        "retries": retries,
        "retry_delay_seconds": (
            list(TASK_RETRY_DELAYS) if retry_delay_seconds is None else retry_delay_seconds
        ),
        "retry_jitter_factor": TASK_RETRY_JITTER,
        "retry_condition_fn": retry_transient_only,
        "cache_policy": cache_policy,
    }
    if tags:
        options["tags"] = list(tags)
    options.update(overrides)
    return options


__all__ = [
    "TASK_RETRIES",
    "TASK_RETRY_DELAYS",
    "TASK_RETRY_JITTER",
    "TransientBatchError",
    "is_transient_error",
    "retry_transient_only",
    "task_options",
]
