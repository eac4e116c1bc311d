"""Bad values stop the AIND flows before their first write, with a message naming them.

Each case checks the message (field, position, value, shortened when long) and that nothing
was written: no DocDB record, no QC entry, no ``metadata.nd.json``, no checkpoint.
"""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_neurodata.blocks import RdsCredentials
from prefect_neurodata.flows.metadata_sync import sync_metadata
from prefect_neurodata.flows.qc_attachment import AssetRef, QcAttachmentRequest, attach_qc
from tests.flows.aind_helpers import (
    docdb_block,
    records_in,
    s3_client,
    write_assets,
)
from tests.flows.test_qc_attachment import evaluation

pytestmark = pytest.mark.flows


def _keys(sandbox: Any, bucket: str) -> list[str]:
    listing = s3_client(sandbox).list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def _bucket_with_work(sandbox: Any, bucket: str) -> list[str]:
    """Two registered assets and one unknown folder: a sync would write to DocDB and S3."""
    s3 = s3_client(sandbox)
    names = write_assets(s3, bucket, 2, start=40_000)
    with docdb_block(sandbox.env).get_client() as client:
        for name in names:
            client.register_asset(f"s3://{bucket}/{name}")
    write_assets(s3, bucket, 1, start=40_100)
    return names


def _assert_nothing_synced(sandbox: Any, bucket: str, keys_before: list[str]) -> None:
    assert len(records_in(sandbox.env, bucket)) == 2  # the unknown folder is not registered
    assert _keys(sandbox, bucket) == keys_before  # no metadata.nd.json, no checkpoint


def test_export_table_longer_than_63_characters_stops_the_sync(
    sandbox: Any, saved_docdb_block: str, saved_rds_block: str, bucket: str
) -> None:
    _bucket_with_work(sandbox, bucket)
    before = _keys(sandbox, bucket)
    table = "asset_summary_" + "x" * 20_000
    with pytest.raises(Exception, match="export_table is 20014 bytes long") as info:
        sync_metadata(
            {"bucket": bucket, "export_table": table, "lookback_days": None},
            docdb_block=saved_docdb_block,
            rds_block=saved_rds_block,
        )
    assert "at most 63" in str(info.value)
    assert len(str(info.value)) < 2_000  # the 20,014-character value is shortened
    _assert_nothing_synced(sandbox, bucket, before)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_qc_value_stops_the_attachment(
    sandbox: Any, saved_docdb_block: str, bucket: str, value: float
) -> None:
    (name,) = write_assets(s3_client(sandbox), bucket, 1, start=40_200)
    location = f"s3://{bucket}/{name}"
    with docdb_block(sandbox.env).get_client() as client:
        client.register_asset(location)
    broken = evaluation("Noise floor")
    broken["metrics"][0]["value"] = {"value": value, "unit": "uV"}
    request = QcAttachmentRequest(
        assets=[AssetRef(location=location)], evaluations=[evaluation("Fine"), broken]
    )
    expected = (
        rf"evaluations\[1\] \('Noise floor'\)\.metrics\[0\]\.value\.value is {value!r}; "
        "JSON cannot carry NaN or infinity"
    )
    with pytest.raises(ValueError, match=expected):
        attach_qc(request, docdb_block=saved_docdb_block)
    (record,) = records_in(sandbox.env, bucket)
    assert (record.get("quality_control") or {}).get("evaluations") in (None, [])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("wrong", ["port", "username"])
def test_unusable_rds_stops_the_sync_before_any_write(
    sandbox: Any, saved_docdb_block: str, postgres_url: str, bucket: str, wrong: str
) -> None:
    url = sa.engine.make_url(postgres_url)
    settings = {
        "host": url.host,
        "port": url.port,
        "username": url.username,
        "password": "never-shown-secret",
        "database": url.database,
        "drivername": url.drivername,
    }
    settings[wrong] = _closed_port() if wrong == "port" else "no_such_role"
    block_name = f"test-aind-rds-wrong-{wrong}"
    RdsCredentials(**settings).save(block_name, overwrite=True)
    _bucket_with_work(sandbox, bucket)
    before = _keys(sandbox, bucket)
    with pytest.raises(ValueError, match="cannot be used with the block's credentials") as info:
        sync_metadata(
            {"bucket": bucket, "export_table": "asset_summary", "lookback_days": None},
            docdb_block=saved_docdb_block,
            rds_block=block_name,
        )
    message = str(info.value)
    assert f"{url.database!r} at {url.host}:{settings['port']}" in message
    assert ("no_such_role" in message) if wrong == "username" else ("refused" in message)
    assert "never-shown-secret" not in message
    _assert_nothing_synced(sandbox, bucket, before)


def test_exported_file_count_is_the_same_on_a_rerun(
    sandbox: Any,
    saved_docdb_block: str,
    saved_rds_block: str,
    postgres_url: str,
    bucket: str,
) -> None:
    names = _bucket_with_work(sandbox, bucket)
    table = f"files_{bucket.replace('-', '_')}"
    request = {"bucket": bucket, "export_table": table, "lookback_days": None}
    engine = sa.create_engine(postgres_url)
    counts = []
    for _run in range(2):
        sync_metadata(request, docdb_block=saved_docdb_block, rds_block=saved_rds_block)
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f'SELECT name, s3_files FROM "{table}"')).all()
        counts.append({row.name: row.s3_files for row in rows})
    assert counts[0] == counts[1]
    s3 = s3_client(sandbox)
    for name in names:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/")["Contents"]
        assert counts[1][name] == len(listed)  # the metadata.nd.json written is counted
