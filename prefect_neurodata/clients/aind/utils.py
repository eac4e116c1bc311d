"""Common helpers for working with DocDB records and their S3 locations.

Same functions, arguments and defaults as ``aind_data_access_api.utils``. The difference is in
how they fetch: `paginate_docdb` pages by ``_id`` (keyset) instead of skip/limit, so walking a
collection costs the server O(N) work instead of O(N^2 / page), and the lookups by a list of
values are chunked and fetched concurrently by the client.

Example:
    ```python
    from prefect_neurodata.clients.aind.document_db import MetadataDbClient
    from prefect_neurodata.clients.aind.utils import paginate_docdb

    with MetadataDbClient(host="api.allenneuraldynamics.org") as client:
        for page in paginate_docdb(client, page_size=200, projection={"name": 1}):
            print(len(page))
    ```
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from prefect_neurodata.clients.aind.document_db import Client, MetadataDbClient

# S3 location rules, the one home for every layer (clients, tasks, flows).
# Bucket names as AWS allows them today: 3-63 lowercase letters, digits, '.' and '-', starting and
# ending with a letter or digit, no '..'. Buckets made before March 2018 in us-east-1 may also
# hold upper case and '_' ("legacy" names): the drop-in client accepts those (the official one
# checks nothing), while the flows, which create locations, hold new input to today's rule.
_BUCKET_NAME = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_BUCKET_RE = re.compile(rf"^{_BUCKET_NAME}$")
_LEGACY_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{1,61}[A-Za-z0-9]$")
# Characters AWS advises against in keys (control characters, \ { } ^ % ` [ ] " < > ~ # |).
_UNSAFE_KEY_CHARS = r'\x00-\x1f\x7f\\{}^%`\[\]"<>~#|'
_BAD_PREFIX_CHARS = re.compile(f"[{_UNSAFE_KEY_CHARS}]")

# The same rule as JSON-schema patterns, for run forms (Prefect validates a deployment's
# parameters against them before a run exists). Both are written in the syntax Python's `re`
# and JavaScript share. A pattern is a necessary condition: what it accepts, the functions
# below may still refuse ('..' segments, over-long prefixes), never the other way round.
S3_BUCKET_PATTERN = _BUCKET_RE.pattern
"""JSON-schema pattern of a bucket name as `bucket_problem` accepts it (today's rule)."""
S3_LOCATION_PATTERN = rf"^s3://{_BUCKET_NAME}/+[^{_UNSAFE_KEY_CHARS}/][^{_UNSAFE_KEY_CHARS}]*$"
"""JSON-schema pattern of an asset location ``s3://bucket/prefix`` (`parse_s3_location`)."""
S3_URI_OR_PATH_PATTERN = rf"^(?:s3://{_BUCKET_NAME}(?:/[^{_UNSAFE_KEY_CHARS}]*)?|(?!\w+://)\S.*)$"
"""JSON-schema pattern of a destination: ``s3://bucket[/prefix]`` or a local path (no scheme)."""
MAX_PREFIX_BYTES = 900
"""Asset prefixes stay well below S3's 1,024-byte key limit, leaving room for the files."""


def bucket_problem(bucket: str, *, allow_legacy: bool = False) -> str | None:
    """Why ``bucket`` is not a valid S3 bucket name, or None.

    Args:
        bucket: The name.
        allow_legacy: Also accept pre-2018 us-east-1 names (upper case and ``_``).

    Example:
        >>> bucket_problem("aind-open-data") is None
        True
        >>> bucket_problem("Legacy_Bucket", allow_legacy=True) is None
        True
    """
    pattern = _LEGACY_BUCKET_RE if allow_legacy else _BUCKET_RE
    if not isinstance(bucket, str) or not pattern.match(bucket) or ".." in bucket:
        return (
            f"bucket {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, "
            "digits, dots or dashes, starting and ending with a letter or digit)"
        )
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot name an asset folder below a bucket, or None.

    Example:
        >>> prefix_problem("ecephys_1_2024-01-01_10-00-00") is None
        True
        >>> prefix_problem("a/../b")
        "prefix 'a/../b' has a '.' or '..' segment"
    """
    stripped = prefix.strip("/")
    if not stripped:
        return "the prefix is empty (an asset is a folder below the bucket)"
    if "//" in stripped:
        return f"prefix {prefix!r} has an empty path segment ('//')"
    if any(part in (".", "..") for part in stripped.split("/")):
        return f"prefix {prefix!r} has a '.' or '..' segment"
    if _BAD_PREFIX_CHARS.search(stripped):
        return f"prefix {prefix!r} has characters that are not safe in S3 keys"
    if len(stripped.encode()) > MAX_PREFIX_BYTES:
        return f"prefix {prefix[:40]!r}... is longer than {MAX_PREFIX_BYTES} bytes"
    return None


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


def parse_s3_location(value: str) -> S3Location:
    """Validate and normalise one asset location (today's bucket rule, safe prefix).

    Raises:
        ValueError: Naming the value and what is wrong with it.

    Example:
        >>> parse_s3_location("s3://aind-open-data/ecephys_1/").uri
        's3://aind-open-data/ecephys_1'
    """
    if not isinstance(value, str) or not value.startswith("s3://"):
        raise ValueError(f"{value!r} is not an S3 location (expected s3://bucket/prefix)")
    bucket, _, prefix = value[len("s3://") :].partition("/")
    problem = bucket_problem(bucket) or prefix_problem(prefix)
    if problem:
        raise ValueError(f"{value!r}: {problem}")
    return S3Location(bucket, prefix.strip("/"))


def get_s3_bucket_and_prefix(s3_location: str) -> dict[str, str]:
    """Split ``s3://bucket/prefix`` into its bucket and prefix.

    Like the official helper, the scheme is not checked, leading and trailing slashes are
    stripped from the prefix, a query string is dropped and ``#`` stays in the prefix. Use
    `validate_s3_location` to reject malformed locations.

    Args:
        s3_location: For example ``"s3://some_bucket/some_prefix"``.

    Returns:
        For example ``{"bucket": "some_bucket", "prefix": "some_prefix"}``.

    Example:
        >>> get_s3_bucket_and_prefix("s3://b//a/b//")
        {'bucket': 'b', 'prefix': 'a/b'}
    """
    parts = urlparse(s3_location, allow_fragments=False)
    return {"bucket": parts.netloc, "prefix": parts.path.strip("/")}


def get_s3_location(bucket: str, prefix: str) -> str:
    """Build ``s3://{bucket}/{prefix}`` with the prefix's surrounding slashes removed.

    Example:
        >>> get_s3_location("b", "/p/")
        's3://b/p'
    """
    return f"s3://{bucket}/{prefix.strip('/')}"


def validate_s3_location(s3_location: Any, *, field: str = "s3_location") -> str:
    """Check that ``s3_location`` is a well-formed ``s3://bucket/prefix`` and normalise it.

    Trailing slashes are removed (``s3://b/p/`` and ``s3://b/p`` name the same asset).

    Args:
        s3_location: The value to check.
        field: Its name in error messages.

    Returns:
        The location without trailing slashes.

    Raises:
        ValueError: The value is not a string, has another scheme, an invalid bucket name, no
            prefix, empty path segments, whitespace, a query or a fragment. The message names
            the field, the value and what is wrong.

    Example:
        >>> validate_s3_location("s3://aind-open-data/ecephys_1_2023-01-01_00-00-00/")
        's3://aind-open-data/ecephys_1_2023-01-01_00-00-00'
    """

    def bad(reason: str) -> ValueError:
        return ValueError(f"{field}={s3_location!r} is not a valid S3 location: {reason}")

    if not isinstance(s3_location, str):
        raise ValueError(
            f"{field} must be a string like 's3://bucket/prefix', "
            f"got {type(s3_location).__name__} {s3_location!r}"
        )
    if s3_location != s3_location.strip() or any(c.isspace() for c in s3_location):
        raise bad("it contains whitespace")
    if not s3_location.startswith("s3://"):
        raise bad("it must start with 's3://'")
    rest = s3_location[len("s3://") :]
    if "?" in rest or "#" in rest:
        raise bad("it must not contain '?' or '#'")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise bad("the bucket name is empty")
    if bucket_problem(bucket, allow_legacy=True):
        raise bad(
            f"bucket {bucket!r} is not a valid bucket name (3-63 characters: letters, digits, "
            "'.', '-' and, in legacy names, '_', starting and ending with a letter or digit)"
        )
    prefix = prefix.rstrip("/")
    if not prefix:
        raise bad("the prefix (the asset's folder after the bucket) is empty")
    if "//" in prefix or prefix.startswith("/"):
        raise bad("the prefix has an empty path segment ('//')")
    return f"s3://{bucket}/{prefix}"


def does_metadata_record_exist_in_docdb(
    docdb_api_client: MetadataDbClient, bucket: str, prefix: str
) -> bool:
    """Whether DocDB has a record whose ``location`` is ``s3://{bucket}/{prefix}``.

    Args:
        docdb_api_client: The client to query.
        bucket: The S3 bucket.
        prefix: The S3 prefix (surrounding slashes are ignored).

    Returns:
        True if there is a record in DocDB, otherwise False.
    """
    records = docdb_api_client.retrieve_docdb_records(
        filter_query={"location": get_s3_location(bucket, prefix)},
        projection={"_id": 1},
        limit=1,
    )
    return len(records) > 0


def get_record_from_docdb(docdb_api_client: MetadataDbClient, record_id: str) -> dict | None:
    """Download the record with ``_id == record_id``, or None when there is none.

    Args:
        docdb_api_client: The client to query.
        record_id: The record's ``_id`` (a `uuid.UUID` works too).

    Returns:
        The record as a dict, or None.
    """
    records = docdb_api_client.retrieve_docdb_records(filter_query={"_id": record_id}, limit=1)
    return records[0] if records else None


def paginate_docdb(
    docdb_api_client: MetadataDbClient,
    page_size: int = 500,
    filter_query: dict | None = None,
    projection: dict | None = None,
) -> Iterator[list[dict]]:
    """Yield every matching record exactly once, a page at a time, in ``_id`` order.

    Pages are requested by ``_id`` keyset (each request asks for ``_id`` greater than the last
    one seen), so the server never re-scans skipped records and a record inserted or deleted
    meanwhile cannot shift others between pages. A page may hold fewer than ``page_size``
    records when the server's payload cap cuts it short. When a keyset page comes back empty,
    one skip page confirms the end (it finds ``_id``s of another BSON type, which ``$gt`` never
    matches); iteration ends when that page is empty too.

    Args:
        docdb_api_client: The client to query.
        page_size: Records per request (the server may return fewer). Default is 500.
        filter_query: The filter; None means all records.
        projection: Fields to return; None means all fields.

    Yields:
        Non-empty lists of records.
    """
    if page_size <= 0:
        raise ValueError(f"page_size must be > 0, got {page_size!r}")
    yield from docdb_api_client.iter_docdb_pages(
        filter_query or {}, projection or {}, page_size=page_size
    )


def fetch_records_by_filter_list(
    docdb_api_client: Client,
    filter_key: str,
    filter_values: list[str],
    projection: dict | None = None,
) -> list[dict]:
    """Records whose ``filter_key`` is one of ``filter_values``.

    Up to one request's worth of values (`filter_list_chunk_size`) this is 1.10's call,
    ``docdb_api_client.aggregate_docdb_records(pipeline=[{"$match": ...}, {"$project": ...}])``;
    longer lists go through `Client.fetch_records_by_filter_list`, which splits them into
    concurrent requests the gateway accepts.

    Args:
        docdb_api_client: The client to query.
        filter_key: The field to filter on.
        filter_values: The values to match.
        projection: Fields to return; None returns all fields.

    Example:
        ```python
        records = fetch_records_by_filter_list(client, "name", ["asset_a", "asset_b"])
        ```
    """
    # Imported here: document_db imports this module.
    from prefect_neurodata.clients.aind.document_db import (
        filter_list_chunk_size,
        filter_list_pipeline,
    )

    if len(filter_values) <= filter_list_chunk_size(projection):
        pipeline = filter_list_pipeline(filter_key, filter_values, projection)
        return docdb_api_client.aggregate_docdb_records(pipeline=pipeline)
    return docdb_api_client.fetch_records_by_filter_list(
        filter_key=filter_key, filter_values=filter_values, projection=projection
    )


def build_docdb_location_to_id_map(
    docdb_api_client: MetadataDbClient, bucket: str, prefixes: list[str]
) -> dict[str, str]:
    """Map ``s3://bucket/prefix`` locations to the ``_id`` of their DocDB record.

    Locations without a record are absent from the result. Prefixes may carry the trailing
    slash of an S3 listing.

    Args:
        docdb_api_client: The client to query.
        bucket: The S3 bucket.
        prefixes: Prefixes in that bucket.

    Returns:
        For example ``{"s3://bucket/prefix": "abc-1234"}``.

    Example:
        ```python
        build_docdb_location_to_id_map(client, "my-bucket", ["ecephys_1_2024-01-01_01-01-01"])
        ```
    """
    locations = [get_s3_location(bucket, prefix) for prefix in prefixes]
    records = fetch_records_by_filter_list(
        docdb_api_client=docdb_api_client,
        filter_key="location",
        filter_values=locations,
        projection={"_id": 1, "location": 1},
    )
    return {record["location"]: record["_id"] for record in records}
