"""Shared pieces of the tasks and flows: block loading, S3 locations, batching.

The S3 location rules live in `prefect_neurodata.clients.aind.utils` (re-exported here).

Retry rules live in `prefect_neurodata.tasks.retries`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import TypeVar, cast

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials

from prefect_neurodata.blocks.docdb import DocDbApiCredentials
from prefect_neurodata.blocks.rds import RdsCredentials
from prefect_neurodata.clients.aind.utils import (
    S3Location,
    bucket_problem,
    parse_s3_location,
    prefix_problem,
)

__all__ = [
    "S3Location",
    "block_or_saved",
    "bucket_problem",
    "chunks",
    "load_aws",
    "load_docdb",
    "load_rds",
    "load_saved",
    "parse_s3_location",
    "prefix_problem",
    "utc_now_iso",
    "validate_locations",
]

T = TypeVar("T")
B = TypeVar("B", bound=Block)


def load_saved(block_type: type[B], name: str) -> B:
    """The saved block ``name`` of ``block_type``, typed as that block.

    ``Block.load`` is ``sync_compatible``: called from synchronous code (every task of this
    package) it returns the block itself, but its declared type also allows a coroutine.

    Example:
        ```python
        docdb = load_saved(DocDbApiCredentials, "neurodata-docdb")
        ```
    """
    return cast(B, block_type.load(name))


def block_or_saved(block_type: type[B], block: B | str) -> B:
    """``block`` itself when it is a ``block_type``, else the saved block of that name.

    Flows and tasks take either a block or, better, its saved name (a name is a small,
    secret-free parameter); this is the one place that tells the two apart.

    Example:
        ```python
        rds = block_or_saved(RdsCredentials, "neurodata-rds")
        ```
    """
    if isinstance(block, block_type):
        return block
    return load_saved(block_type, cast(str, block))


def load_docdb(block: str | DocDbApiCredentials) -> DocDbApiCredentials:
    """The DocDB block itself, or the saved block of that name."""
    return block_or_saved(DocDbApiCredentials, block)


def load_rds(block: str | RdsCredentials) -> RdsCredentials:
    """The RDS block itself, or the saved block of that name."""
    return block_or_saved(RdsCredentials, block)


def load_aws(
    aws: str | AwsCredentials | None, docdb: str | DocDbApiCredentials | None = None
) -> AwsCredentials:
    """AWS credentials for S3: the given block (or its name), else the DocDB block's own."""
    if isinstance(aws, AwsCredentials) or aws:
        return block_or_saved(AwsCredentials, aws)
    if docdb is None:
        raise ValueError("either an AWS credentials block or a DocDB block is needed for S3")
    return load_docdb(docdb).aws_credentials


def utc_now_iso() -> str:
    """The current time in UTC as an ISO 8601 string (``+00:00`` offset), as records keep it."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


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
