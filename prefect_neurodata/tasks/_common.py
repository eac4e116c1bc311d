"""Shared pieces of the AIND tasks: retry rule, block loading, batching.

The S3 location rules live in `prefect_neurodata.clients.aind.utils` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from prefect.client.schemas.objects import State, TaskRun
from prefect_aws import AwsCredentials

from prefect_neurodata.blocks.docdb import DocDbApiCredentials
from prefect_neurodata.blocks.rds import RdsCredentials
from prefect_neurodata.clients.aind.utils import (
    S3Location,
    bucket_problem,
    parse_s3_location,
    prefix_problem,
)
from prefect_neurodata.clients.http import is_transient

__all__ = ["S3Location", "bucket_problem", "parse_s3_location", "prefix_problem"]

T = TypeVar("T")

TASK_RETRIES = 4
"""Task-level retries on top of the HTTP core's own request retries."""

TASK_RETRY_DELAYS = [1.0, 2.0, 5.0, 10.0]
"""Seconds before each task retry (items already done are skipped on the retry)."""


class TransientBatchError(RuntimeError):
    """Some items of a batch hit transient failures that item-level retries did not outlast.

    The items that did land are reported in the message; a task retry re-checks every item
    first, so nothing lands twice.
    """


def transient_only(task: Any, task_run: TaskRun, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task only for transient errors.

    Transient means what `prefect_neurodata.clients.http.is_transient` says (connection errors,
    timeouts, 429, 500, 502-504) or a `TransientBatchError`; validation errors, 4xx answers and
    bugs fail at once.
    """
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classifying, not handling
        return is_transient_error(exc)
    return False


def is_transient_error(exc: BaseException) -> bool:
    """Whether retrying later may fix ``exc`` (also looks into batch and chained errors)."""
    if isinstance(exc, TransientBatchError):
        return True
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors and all(isinstance(e, BaseException) for e in errors):
        return all(is_transient(e) for e in errors)
    if is_transient(exc):
        return True
    return exc.__cause__ is not None and is_transient(exc.__cause__)


def load_docdb(block: str | DocDbApiCredentials) -> DocDbApiCredentials:
    """The DocDB block itself, or the saved block of that name."""
    if isinstance(block, DocDbApiCredentials):
        return block
    return DocDbApiCredentials.load(block)


def load_rds(block: str | RdsCredentials) -> RdsCredentials:
    """The RDS block itself, or the saved block of that name."""
    if isinstance(block, RdsCredentials):
        return block
    return RdsCredentials.load(block)


def load_aws(
    aws: str | AwsCredentials | None, docdb: str | DocDbApiCredentials | None = None
) -> AwsCredentials:
    """AWS credentials for S3: the given block (or its name), else the DocDB block's own."""
    if isinstance(aws, AwsCredentials):
        return aws
    if aws:
        return AwsCredentials.load(aws)
    if docdb is None:
        raise ValueError("either an AWS credentials block or a DocDB block is needed for S3")
    return load_docdb(docdb).aws_credentials


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def validate_locations(values: Sequence[str]) -> list[S3Location]:
    """Validate every location, reporting all bad ones at once.

    Raises:
        ValueError: One line per invalid location.
    """
    good: list[S3Location] = []
    problems: list[str] = []
    for index, value in enumerate(values):
        try:
            good.append(parse_s3_location(value))
        except ValueError as exc:
            problems.append(f"locations[{index}]: {exc}")
    if problems:
        raise ValueError("invalid S3 location(s):\n  " + "\n  ".join(problems))
    return good
