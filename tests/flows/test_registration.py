"""Asset registration flow through a real Prefect API against the DocDB and S3 stand-ins."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from prefect.client.orchestration import get_client

from prefect_neurodata.flows.registration import (
    CodeOceanResult,
    RegistrationRequest,
    register_assets,
)
from tests.flows.aind_helpers import (
    FAULTS_20,
    asset_name,
    comparable,
    core_files,
    new_bucket,
    records_in,
    s3_client,
    write_asset,
    write_assets,
)

pytestmark = pytest.mark.flows


def test_registers_new_assets_once(sandbox: Any, saved_docdb_block: str, bucket: str) -> None:
    names = write_assets(s3_client(sandbox), bucket, 12)
    request = RegistrationRequest(bucket=bucket, prefixes=names, batch_size=5)

    first = register_assets(request, docdb_block=saved_docdb_block)

    assert (first.requested, first.registered, first.already_registered) == (12, 12, 0)
    records = records_in(sandbox.env, bucket)
    assert sorted(r["name"] for r in records) == sorted(names)
    assert {row.record_id for row in first.rows} == {r["_id"] for r in records}
    assert records[0]["subject"]["subject_id"] == names[0].split("_")[1]

    second = register_assets(request, docdb_block=saved_docdb_block)
    assert (second.registered, second.already_registered) == (0, 12)
    assert len(records_in(sandbox.env, bucket)) == 12

    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(artifact_filter=None, limit=200)
    keys = {a.key for a in artifact}
    assert "asset-registration" in keys


def test_code_ocean_results_use_register_co_result(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    name = "3f0c2a9e-5b7d-4a4e-9a53-0d6c1b0c5e11"
    processing = {"processing": core_files("x_1_y", 1)["processing"]}
    write_asset(s3_client(sandbox), bucket, name, processing)
    result = CodeOceanResult(
        s3_location=f"s3://{bucket}/{name}",
        name="ecephys_700001_2025-03-02_10-01-00_sorted_2025-03-05_12-00-00",
        co_asset_id=name,
        co_computation_id="c0ffee00-0000-4000-8000-000000000001",
    )
    summary = register_assets(
        RegistrationRequest(code_ocean_results=[result]), docdb_block=saved_docdb_block
    )
    assert summary.registered == 1
    (record,) = records_in(sandbox.env, bucket)
    assert record["name"] == result.name
    assert record["external_links"] == {"Code Ocean": [name]}


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://bucket/prefix", "is not an S3 location"),
        ("s3://Bad_Bucket/prefix", "not a valid S3 bucket name"),
        ("s3://good-bucket/", "the prefix is empty"),
        ("s3://good-bucket/a/../b", "'..' segment"),
    ],
)
def test_bad_locations_fail_before_any_write(
    sandbox: Any, saved_docdb_block: str, bucket: str, location: str, expected: str
) -> None:
    good = write_assets(s3_client(sandbox), bucket, 1)[0]
    request = RegistrationRequest(locations=[f"s3://{bucket}/{good}", location])
    with pytest.raises(ValueError, match=expected) as info:
        register_assets(request, docdb_block=saved_docdb_block)
    assert location in str(info.value) or "prefix" in str(info.value)
    assert records_in(sandbox.env, bucket) == []


def test_missing_folder_or_core_file_fails_before_any_write(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    s3 = s3_client(sandbox)
    good = write_assets(s3, bucket, 1)[0]
    partial = asset_name(99)
    files = core_files(partial, 99)
    del files["data_description"]
    write_asset(s3, bucket, partial, files)
    request = RegistrationRequest(
        locations=[f"s3://{bucket}/{good}", f"s3://{bucket}/{partial}", f"s3://{bucket}/nothing"]
    )
    with pytest.raises(ValueError) as info:
        register_assets(request, docdb_block=saved_docdb_block)
    message = str(info.value)
    assert (
        f"s3://{bucket}/{partial}: missing core metadata file(s) data_description.json" in message
    )
    assert f"s3://{bucket}/nothing: no such folder in S3" in message
    assert records_in(sandbox.env, bucket) == []


def test_same_state_under_injected_faults(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    s3 = s3_client(sandbox)
    reference_bucket = new_bucket(sandbox, f"{bucket}-ref")
    names = write_assets(s3, bucket, 40)
    write_assets(s3, reference_bucket, 40)
    register_assets(
        RegistrationRequest(bucket=reference_bucket, prefixes=names, batch_size=10),
        docdb_block=saved_docdb_block,
    )
    sandbox.faults("docdb", **FAULTS_20)
    try:
        summary = register_assets(
            RegistrationRequest(bucket=bucket, prefixes=names, batch_size=10),
            docdb_block=saved_docdb_block,
        )
    finally:
        sandbox.faults("docdb")
    assert summary.registered + summary.already_registered == 40
    assert summary.failed == 0
    faulted = records_in(sandbox.env, bucket)
    assert len(faulted) == 40
    assert comparable(faulted, bucket) == comparable(
        records_in(sandbox.env, reference_bucket), reference_bucket
    )


def test_bucket_scan_registers_complete_folders_and_skips_incomplete(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    s3 = s3_client(sandbox)
    names = write_assets(s3, bucket, 6)
    partial = asset_name(77)
    files = core_files(partial, 77)
    del files["data_description"]
    write_asset(s3, bucket, partial, files)

    summary = register_assets(RegistrationRequest(bucket=bucket), docdb_block=saved_docdb_block)

    assert (summary.registered, summary.skipped, summary.failed) == (6, 1, 0)
    (skipped,) = [row for row in summary.rows if row.outcome == "skipped"]
    assert skipped.location == f"s3://{bucket}/{partial}"
    assert "data_description.json" in skipped.detail
    assert sorted(r["name"] for r in records_in(sandbox.env, bucket)) == sorted(names)
    again = register_assets(RegistrationRequest(bucket=bucket), docdb_block=saved_docdb_block)
    assert (again.registered, again.already_registered) == (0, 6)


def test_registrations_whose_answers_were_lost_land_once(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    """A lost answer (``lost_rate``): DocDB registered the asset, the flow was told 504.

    Why 30 assets at 0.3 cannot pass or fail by chance: the chance that no registration's
    answer is lost (so nothing was reconciled) is 0.7**30 = 2.3e-5; reads are resent by the HTTP
    core and the batch task is retried, so a run fails only if every attempt of a batch meets
    a read that lost six answers in a row (0.3**6 = 7.3e-4 per read).
    """
    names = write_assets(s3_client(sandbox), bucket, 30)
    request = RegistrationRequest(bucket=bucket, prefixes=names, batch_size=10)
    sandbox.faults("docdb", lost_rate=0.3, seed=5)
    try:
        summary = register_assets(request, docdb_block=saved_docdb_block)
        stats = requests.get(
            f"{sandbox.env['NEURODATA_DOCDB_HOST']}/__sandbox__/stats", timeout=10
        ).json()
    finally:
        sandbox.faults("docdb")

    assert stats["lost"] > 0, stats
    assert (summary.registered, summary.already_registered, summary.failed) == (30, 0, 0)
    reconciled = [
        row for row in summary.rows if row.detail == "found registered after a lost answer"
    ]
    assert reconciled, [row.detail for row in summary.rows]
    records = records_in(sandbox.env, bucket)
    assert sorted(r["name"] for r in records) == sorted(names)
    ids = {row.location: row.record_id for row in summary.rows}
    assert ids == {r["location"]: r["_id"] for r in records}
