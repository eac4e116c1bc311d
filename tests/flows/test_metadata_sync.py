"""Metadata sync flow through a real Prefect API against DocDB/S3 stand-ins and real Postgres."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_neurodata.flows.metadata_sync import MetadataSyncRequest, sync_metadata
from prefect_neurodata.tasks.s3 import canonical_json, md5_hex
from tests.flows.aind_helpers import (
    FAULTS_20,
    comparable,
    docdb_block,
    new_bucket,
    records_in,
    s3_client,
    write_assets,
)

pytestmark = pytest.mark.flows


def _registered_bucket(sandbox: Any, bucket: str, count: int) -> list[str]:
    names = write_assets(s3_client(sandbox), bucket, count)
    with docdb_block(sandbox.env).get_client() as client:
        for name in names:
            client.register_asset(f"s3://{bucket}/{name}")
    return names


def _twin(sandbox: Any, bucket: str, count: int) -> tuple[str, list[str]]:
    twin = new_bucket(sandbox, f"{bucket}-twin")
    _registered_bucket(sandbox, twin, count)
    return twin, _registered_bucket(sandbox, bucket, count)


def _edit(sandbox: Any, bucket: str, names: list[str]) -> None:
    """Change subject.json of some assets and add one unregistered asset folder."""
    s3 = s3_client(sandbox)
    for name in names:
        key = f"{name}/subject.json"
        subject = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        subject["genotype"] = "Pvalb-IRES-Cre/wt"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(subject).encode())
    write_assets(s3, bucket, 1, start=500)


def _nd_files(sandbox: Any, bucket: str) -> dict[str, bytes]:
    s3 = s3_client(sandbox)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/metadata.nd.json"):
                found[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return found


def _request(bucket: str, **overrides: Any) -> MetadataSyncRequest:
    values: dict[str, Any] = {"bucket": bucket, "batch_size": 10, "lookback_days": None}
    values.update(overrides)
    return MetadataSyncRequest(**values)


def test_syncs_both_ways_exports_and_converges(
    sandbox: Any,
    saved_docdb_block: str,
    saved_rds_block: str,
    postgres_url: str,
    bucket: str,
) -> None:
    names = _registered_bucket(sandbox, bucket, 30)
    _edit(sandbox, bucket, names[:3])
    table = f"summary_{bucket.replace('-', '_')}"

    first = sync_metadata(
        _request(bucket, export_table=table),
        docdb_block=saved_docdb_block,
        rds_block=saved_rds_block,
    )

    assert first.complete and first.assets == 31 and first.batches_run == 4
    assert first.counts["records_upserted"] == 3
    assert first.counts["fields_upserted"] == 3
    assert first.counts["registered"] == 1
    assert first.counts["nd_written"] == 31
    records = {r["name"]: r for r in records_in(sandbox.env, bucket)}
    assert len(records) == 31
    for name in names[:3]:
        assert records[name]["subject"]["genotype"] == "Pvalb-IRES-Cre/wt"
    assert records[names[3]]["subject"]["genotype"] == "wt/wt"
    nd = _nd_files(sandbox, bucket)
    assert len(nd) == 31
    for name, record in records.items():
        assert json.loads(nd[f"{name}/metadata.nd.json"]) == record

    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f'SELECT name, subject_id, sync_outcome FROM "{table}"')).all()
    assert len(rows) == 31
    assert {r.name for r in rows} == set(records)
    assert {r.sync_outcome for r in rows if r.name == names[0]} == {"fields updated from S3"}

    second = sync_metadata(
        _request(bucket, export_table=table),
        docdb_block=saved_docdb_block,
        rds_block=saved_rds_block,
    )
    assert second.generation == first.generation + 1 and not second.resumed
    assert second.counts["records_upserted"] == 0
    assert second.counts["registered"] == 0
    assert second.counts["nd_written"] == 0
    assert second.exported_rows == 31
    assert {r["name"]: r for r in records_in(sandbox.env, bucket)} == records


def test_lookback_skips_old_changes(sandbox: Any, saved_docdb_block: str, bucket: str) -> None:
    names = _registered_bucket(sandbox, bucket, 5)
    _edit(sandbox, bucket, names[:1])
    summary = sync_metadata(
        _request(bucket, lookback_days=0, export_table=None), docdb_block=saved_docdb_block
    )
    # Files changed a moment ago are older than a zero-day lookback cutoff taken afterwards.
    assert summary.counts["records_upserted"] == 0
    assert summary.cutoff is not None


def test_vanished_prefixes_are_reported_and_only_deregistered_on_request(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    names = _registered_bucket(sandbox, bucket, 4)
    s3 = s3_client(sandbox)
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=f"{names[1]}/")["Contents"]:
        s3.delete_object(Bucket=bucket, Key=obj["Key"])
    gone = f"s3://{bucket}/{names[1]}"

    report = sync_metadata(_request(bucket, export_table=None), docdb_block=saved_docdb_block)
    assert report.vanished == [gone] and report.deregistered == []
    assert gone in {r["location"] for r in records_in(sandbox.env, bucket)}

    cleaned = sync_metadata(
        _request(bucket, export_table=None, deregister_vanished=True),
        docdb_block=saved_docdb_block,
    )
    assert cleaned.deregistered == [gone]
    assert gone not in {r["location"] for r in records_in(sandbox.env, bucket)}


def test_invalid_input_fails_before_any_write(sandbox: Any, saved_docdb_block: str) -> None:
    with pytest.raises(ValueError, match="not a valid S3 bucket name"):
        MetadataSyncRequest(bucket="Not_A_Bucket")
    with pytest.raises(ValueError, match="bucket 'no-such-bucket-here' cannot be read"):
        sync_metadata(_request("no-such-bucket-here"), docdb_block=saved_docdb_block)


def test_partial_run_resumes_to_the_same_state(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    twin, names = _twin(sandbox, bucket, 30)
    for target in (bucket, twin):
        _edit(sandbox, target, names[::4])
    sync_metadata(_request(twin, export_table=None), docdb_block=saved_docdb_block)

    partial = sync_metadata(
        _request(bucket, export_table=None, max_batches=2), docdb_block=saved_docdb_block
    )
    assert not partial.complete and partial.batches_run == 2
    rest = sync_metadata(_request(bucket, export_table=None), docdb_block=saved_docdb_block)
    assert rest.resumed and rest.batches_skipped == 2 and rest.batches_run == 2
    assert rest.counts["records_upserted"] == len(names[::4])

    assert comparable(records_in(sandbox.env, bucket), bucket) == comparable(
        records_in(sandbox.env, twin), twin
    )
    assert len(_nd_files(sandbox, bucket)) == len(_nd_files(sandbox, twin)) == 31


def test_killed_sync_resumes_to_the_same_state(
    sandbox: Any, saved_docdb_block: str, prefect_api: str, bucket: str
) -> None:
    twin, names = _twin(sandbox, bucket, 40)
    for target in (bucket, twin):
        _edit(sandbox, target, names[::3])
    sync_metadata(_request(twin, export_table=None, batch_size=5), docdb_block=saved_docdb_block)

    script = (
        "from prefect_neurodata.flows.metadata_sync import MetadataSyncRequest, sync_metadata\n"
        f"sync_metadata(MetadataSyncRequest(bucket={bucket!r}, batch_size=5, lookback_days=None,"
        f" export_table=None), docdb_block={saved_docdb_block!r})\n"
    )
    s3 = s3_client(sandbox)
    # Slow every DocDB call down so the run is still busy when it is killed.
    sandbox.faults("docdb", latency_ms=120)
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        markers: list[str] = []
        while time.monotonic() < deadline and process.poll() is None:
            listing = s3.list_objects_v2(Bucket=bucket, Prefix=".neurodata/metadata-sync/")
            markers = [o["Key"] for o in listing.get("Contents", []) if "/batch-" in o["Key"]]
            if len(markers) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the sync finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        sandbox.faults("docdb")
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert 2 <= len(markers) < 8

    rest = sync_metadata(
        _request(bucket, export_table=None, batch_size=5), docdb_block=saved_docdb_block
    )
    assert rest.resumed and rest.complete and rest.batches_skipped >= 2
    assert comparable(records_in(sandbox.env, bucket), bucket) == comparable(
        records_in(sandbox.env, twin), twin
    )
    nd = _nd_files(sandbox, bucket)
    assert len(nd) == 41
    for record in records_in(sandbox.env, bucket):
        key = record["location"].split("/", 3)[3] + "/metadata.nd.json"
        assert md5_hex(nd[key]) == md5_hex(canonical_json(record))


def test_same_state_under_injected_faults(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    twin, names = _twin(sandbox, bucket, 30)
    for target in (bucket, twin):
        _edit(sandbox, target, names[::2])
    sync_metadata(_request(twin, export_table=None), docdb_block=saved_docdb_block)
    sandbox.faults("docdb", **FAULTS_20)
    try:
        faulted = sync_metadata(_request(bucket, export_table=None), docdb_block=saved_docdb_block)
    finally:
        sandbox.faults("docdb")
    assert faulted.complete
    assert comparable(records_in(sandbox.env, bucket), bucket) == comparable(
        records_in(sandbox.env, twin), twin
    )
    assert len(_nd_files(sandbox, bucket)) == 31


def test_newer_docdb_edits_are_not_overwritten_by_older_files(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    names = _registered_bucket(sandbox, bucket, 3)
    time.sleep(1.1)  # S3 keeps whole seconds: make the DocDB edit clearly newer than the files
    (record,) = [r for r in records_in(sandbox.env, bucket) if r["name"] == names[0]]
    with docdb_block(sandbox.env).get_client() as client:
        client.upsert_one_docdb_record(
            {"_id": record["_id"], "subject": {**record["subject"], "genotype": "edited in DocDB"}}
        )
    summary = sync_metadata(_request(bucket, export_table=None), docdb_block=saved_docdb_block)
    assert summary.counts["records_upserted"] == 0
    after = {r["name"]: r for r in records_in(sandbox.env, bucket)}
    assert after[names[0]]["subject"]["genotype"] == "edited in DocDB"
    nd = _nd_files(sandbox, bucket)[f"{names[0]}/metadata.nd.json"]
    assert json.loads(nd)["subject"]["genotype"] == "edited in DocDB"
