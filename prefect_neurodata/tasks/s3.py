"""S3 helpers and tasks for AIND asset folders (``s3://bucket/<asset>/<core>.json``).

The plain functions take a boto3 S3 client; the tasks take an `AwsCredentials` block (or its
name) and build the client themselves, so no live client or secret crosses a task boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from botocore.exceptions import ClientError
from prefect import task
from prefect_aws import AwsCredentials

from prefect_neurodata.clients.http import map_bounded
from prefect_neurodata.errors import NeurodataInputError
from prefect_neurodata.tasks.common import load_aws, parse_s3_location
from prefect_neurodata.tasks.retries import task_options

S3_THREADS = 4
"""Concurrent S3 requests inside one task."""

CHECKPOINT_ROOT = ".neurodata"
"""Top-level folder of a bucket reserved for this package's checkpoints (never an asset)."""


class UnknownBucketError(NeurodataInputError):
    """An S3 bucket does not exist (or these credentials cannot see it); a retry cannot help."""

    def __init__(self, bucket: str) -> None:
        super().__init__(
            f"S3 bucket {bucket!r} does not exist or is not visible with these AWS credentials"
        )
        self.bucket = bucket


@contextlib.contextmanager
def naming_bucket(bucket: str) -> Iterator[None]:
    """Turn S3's ``NoSuchBucket`` (whose message does not say which) into `UnknownBucketError`.

    Example:
        ```python
        with naming_bucket("aind-open-dta"):
            s3.list_objects_v2(Bucket="aind-open-dta")  # UnknownBucketError names it
        ```
    """
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise UnknownBucketError(bucket) from exc
        raise


def canonical_json(value: Any) -> bytes:
    """The byte form of JSON files this package writes to S3.

    Indented, key-sorted UTF-8 (the AIND indexer's convention), so a file's MD5, which is its
    ETag for single-part uploads, tells whether its content equals a DocDB value without
    downloading it.
    """
    return json.dumps(value, indent=3, ensure_ascii=False, sort_keys=True).encode("utf-8")


def md5_hex(data: bytes) -> str:
    """Hex MD5 of ``data`` (comparable to a single-part upload's ETag)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def etag(obj: dict[str, Any]) -> str:
    """The ETag of a listed object without quotes."""
    return str(obj.get("ETag", "")).strip('"')


def s3_client(aws: str | AwsCredentials | None) -> Any:
    """A (cached) boto3 S3 client from an `AwsCredentials` block or its name."""
    return load_aws(aws).get_s3_client()


def list_prefixes(s3: Any, bucket: str, starts_with: str = "") -> list[str]:
    """Sorted top-level asset folders of ``bucket`` whose names start with ``starts_with``.

    Folders whose name starts with ``.`` (e.g. this package's checkpoints) are left out.
    """
    found: list[str] = []
    paginator = s3.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=starts_with.lstrip("/"), Delimiter="/")
    with naming_bucket(bucket):
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                prefix = common["Prefix"].rstrip("/")
                if not prefix.rsplit("/", 1)[-1].startswith("."):
                    found.append(prefix)
    return sorted(found)


def list_folder_files(
    s3: Any, bucket: str, prefixes: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Files directly inside each folder of ``prefixes``, with ETag, size and LastModified.

    One ranged listing over the sorted prefixes instead of one request per folder: a batch of
    500 asset folders costs a handful of requests.

    Returns:
        ``{prefix: {file name: listing entry}}``; folders with no objects map to ``{}``.
    """
    wanted = sorted(set(prefixes))
    result: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in wanted}
    if not wanted:
        return result
    # Key order is not name order: "abc-d/..." sorts before "abc/..." ('-' < '/') although
    # "abc" < "abc-d". Bound the scan by the folders' key prefixes, not by their names.
    blocks = sorted(p + "/" for p in wanted)
    first_block, last_block = blocks[0], blocks[-1]
    kwargs: dict[str, Any] = {"Bucket": bucket, "StartAfter": first_block}
    if "/" in wanted[0]:
        common = wanted[0].rsplit("/", 1)[0] + "/"
        if all(p.startswith(common) for p in wanted):
            kwargs["Prefix"] = common
    with naming_bucket(bucket):
        for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key > last_block and not key.startswith(last_block):
                    return result
                folder, _, name = key.rpartition("/")
                if folder in result:
                    result[folder][name] = obj
    return result


def check_bucket(aws: str | AwsCredentials | None, bucket: str) -> None:
    """Fail before any write when ``bucket`` cannot be reached with these credentials.

    Raises:
        ValueError: ``bucket '<name>' cannot be read: <S3 error code>``.
    """
    try:
        s3_client(aws).head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", exc)
        raise ValueError(f"bucket {bucket!r} cannot be read: {code}") from exc


def read_json(s3: Any, bucket: str, key: str) -> Any:
    """Download and parse one JSON object."""
    with naming_bucket(bucket):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def read_json_uri(uri: str, aws: str | AwsCredentials | None = None) -> Any:
    """Parse a JSON document from ``s3://bucket/key`` or a local path."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key:
            raise ValueError(f"{uri!r} is not an S3 object URI (expected s3://bucket/key)")
        return read_json(s3_client(aws), bucket, key)
    with open(uri.removeprefix("file://"), encoding="utf-8") as handle:
        return json.load(handle)


def put_bytes(s3: Any, bucket: str, key: str, data: bytes) -> None:
    """Upload one object (JSON content type)."""
    with naming_bucket(bucket):
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/json")


def missing_files(s3: Any, bucket: str, prefix: str, required: Sequence[str]) -> list[str] | None:
    """Which of ``required`` files are missing in a folder; None if the folder does not exist.

    Raises:
        UnknownBucketError: The bucket does not exist (a typo must not read as "no folder").

    Uses one HEAD request per required file (cheap on S3 and its stand-ins); only when some are
    missing does it list the folder to tell "incomplete" from "absent".
    """
    missing = []
    for name in required:
        try:
            s3.head_object(Bucket=bucket, Key=f"{prefix}/{name}")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchKey", "NotFound"):
                missing.append(name)
            elif code == "NoSuchBucket":
                raise UnknownBucketError(bucket) from exc
            else:
                raise
    if missing or not required:
        with naming_bucket(bucket):
            page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=1)
        if not page.get("KeyCount", len(page.get("Contents", []))):
            return None
    return missing


@task(name="inspect-asset-folders", **task_options(tags=["s3"]))
def inspect_asset_folders(
    aws: str | AwsCredentials | None, locations: list[str], required: list[str]
) -> dict[str, list[str] | None]:
    """Check that asset folders exist and hold the required files (a batch per task).

    Args:
        aws: `AwsCredentials` block or its name.
        locations: ``s3://bucket/prefix`` locations (already validated).
        required: File names each folder must contain, e.g. ``["data_description.json"]``.

    Returns:
        ``{location: missing file names}`` (``[]`` when complete), None for absent folders.

    Example:
        ```python
        report = inspect_asset_folders(
            "my-aws", ["s3://aind-open-data/ecephys_1_2024-01-01_00-00-00"], ["subject.json"]
        )
        ```
    """
    s3 = s3_client(aws)

    def one(location: str) -> list[str] | None:
        parsed = parse_s3_location(location)
        return missing_files(s3, parsed.bucket, parsed.prefix, required)

    return dict(zip(locations, map_bounded(one, locations, S3_THREADS), strict=True))


@task(name="list-asset-prefixes", **task_options(tags=["s3"]))
def list_asset_prefixes(
    aws: str | AwsCredentials | None, bucket: str, starts_with: Iterable[str] = ("",)
) -> list[str]:
    """Sorted top-level asset folders of ``bucket`` whose names start with any of ``starts_with``.

    Example:
        ```python
        prefixes = list_asset_prefixes("my-aws", "aind-open-data")
        ```
    """
    s3 = s3_client(aws)
    found: set[str] = set()
    for start in starts_with:
        found.update(list_prefixes(s3, bucket, start))
    return sorted(found)
