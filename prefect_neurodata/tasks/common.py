"""Shared pieces of the tasks and flows: block loading, S3 locations, batching.

Retry rules live in `prefect_neurodata.tasks.retries`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prefect_aws import AwsCredentials

from prefect_neurodata.blocks.docdb import DocDbApiCredentials
from prefect_neurodata.blocks.rds import RdsCredentials

T = TypeVar("T")


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


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BAD_PREFIX_CHARS = re.compile(r"[\x00-\x1f\x7f\\{}^%`\[\]\"<>~#|]")


@dataclass(frozen=True, order=True)
class S3Location:
    """A validated ``s3://bucket/prefix`` asset location (prefix without surrounding slashes)."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        """The canonical ``s3://bucket/prefix`` form used as DocDB ``location``."""
        return f"s3://{self.bucket}/{self.prefix}"

    def __str__(self) -> str:
        return self.uri


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid S3 bucket name, or None."""
    if not _BUCKET_RE.match(bucket or "") or ".." in bucket:
        return (
            f"bucket {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, "
            "digits, dots or dashes)"
        )
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot name an asset folder, or None."""
    stripped = prefix.strip("/")
    if not stripped:
        return "the prefix is empty (an asset is a folder below the bucket)"
    if "//" in stripped:
        return f"prefix {prefix!r} has an empty path segment ('//')"
    if any(part in (".", "..") for part in stripped.split("/")):
        return f"prefix {prefix!r} has a '.' or '..' segment"
    if _BAD_PREFIX_CHARS.search(stripped):
        return f"prefix {prefix!r} has characters that are not safe in S3 keys"
    if len(stripped.encode()) > 900:
        return f"prefix {prefix[:40]!r}... is longer than 900 bytes"
    return None


def parse_s3_location(value: str) -> S3Location:
    """Validate and normalise one asset location.

    Raises:
        ValueError: Naming the value and what is wrong with it.
    """
    if not isinstance(value, str) or not value.startswith("s3://"):
        raise ValueError(f"{value!r} is not an S3 location (expected s3://bucket/prefix)")
    bucket, _, prefix = value[len("s3://") :].partition("/")
    problem = bucket_problem(bucket) or prefix_problem(prefix)
    if problem:
        raise ValueError(f"{value!r}: {problem}")
    return S3Location(bucket, prefix.strip("/"))


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
