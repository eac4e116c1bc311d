"""S3 location helpers of the AIND clients: the official edge cases and our validation."""

from __future__ import annotations

import datetime as dt

import pytest

from prefect_neurodata.clients.aind import _wire
from prefect_neurodata.clients.aind.utils import (
    get_s3_bucket_and_prefix,
    get_s3_location,
    validate_s3_location,
)


@pytest.mark.parametrize(
    ("location", "bucket", "prefix"),
    [
        ("s3://some_bucket/some_prefix", "some_bucket", "some_prefix"),
        ("s3://b", "b", ""),
        ("s3://b/", "b", ""),
        ("s3://b//a/b//", "b", "a/b"),
        ("b/p", "", "b/p"),
        ("https://b.s3.amazonaws.com/p", "b.s3.amazonaws.com", "p"),
        ("s3://b/p#frag", "b", "p#frag"),
        ("s3://b/p?x=1", "b", "p"),
        ("s3://b/with space", "b", "with space"),
    ],
)
def test_get_s3_bucket_and_prefix_matches_the_official_edge_cases(location, bucket, prefix):
    assert get_s3_bucket_and_prefix(location) == {"bucket": bucket, "prefix": prefix}


@pytest.mark.parametrize(
    ("bucket", "prefix", "expected"),
    [
        ("b", "", "s3://b/"),
        ("", "p", "s3:///p"),
        ("b", "/a/b/", "s3://b/a/b"),
        ("b", "p", "s3://b/p"),
    ],
)
def test_get_s3_location(bucket, prefix, expected):
    assert get_s3_location(bucket, prefix) == expected


def test_validate_s3_location_normalises_and_names_bad_values():
    assert validate_s3_location("s3://aind-open-data/a/b/") == "s3://aind-open-data/a/b"
    assert validate_s3_location("s3://Legacy_Bucket.1/x") == "s3://Legacy_Bucket.1/x"
    with pytest.raises(ValueError, match=r"s3_location must be a string.*got int 5"):
        validate_s3_location(5)
    with pytest.raises(ValueError, match=r"location='s3://-bad/p'.*not a valid bucket name"):
        validate_s3_location("s3://-bad/p", field="location")


def test_datetime_wire_format():
    utc = dt.timezone.utc
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert _wire.format_datetime(dt.datetime(2025, 3, 17, tzinfo=utc)) == "2025-03-17T00:00:00Z"
    assert (
        _wire.format_datetime(dt.datetime(2025, 3, 17, 2, tzinfo=plus2)) == "2025-03-17T00:00:00Z"
    )
    assert (
        _wire.format_datetime(dt.datetime(2024, 5, 13, 22, 1, 56, 35469))
        == "2024-05-13T22:01:56.035469"
    )
    assert (
        _wire.encode({"d": dt.date(2020, 1, 2), "t": dt.time(1, 2)})
        == b'{"d":"2020-01-02","t":"01:02:00"}'
    )


def test_encode_names_unserialisable_field():
    with pytest.raises(TypeError, match=r"records\[3\]\.subject\.weight.*object"):
        _wire.encode({"subject": {"weight": object()}}, what="records[3]")
