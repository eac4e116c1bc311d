"""Overlapping runs of the AIND flows end in the state of one clean run, each write made once.

Each test starts N=4 runs at once, each in its own Python process (as process workers on
different machines would run them: nothing in memory is shared, only the Prefect server and the
services), on overlapping inputs, with DocDB answering slowly so that the runs' checks and
writes interleave. The end state is compared with one clean run over a twin bucket, and the
runs' own outcome rows must add up to exactly one write per item: the log of who did what.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from prefect_neurodata.flows.metadata_sync import MetadataSyncRequest, sync_metadata
from prefect_neurodata.flows.qc_attachment import AssetRef, QcAttachmentRequest, attach_qc
from prefect_neurodata.flows.registration import RegistrationRequest, register_assets
from tests.flows.aind_helpers import (
    comparable,
    docdb_block,
    new_bucket,
    records_in,
    s3_client,
    write_assets,
)
from tests.flows.test_qc_attachment import evaluation

pytestmark = pytest.mark.flows

RUNS = 4
LATENCY_MS = 150  # every DocDB answer is late: the runs' checks and writes overlap


def _run_at_once(sandbox: Any, prefect_api: str, calls: list[str]) -> list[dict[str, Any]]:
    """Run each ``calls[i]`` (a flow call expression) in its own process, all at once.

    Returns:
        Each run's summary (``model_dump``), in the order of ``calls``.
    """
    scripts = [
        "import json, sys\n"
        "from prefect_neurodata.flows.registration import RegistrationRequest, register_assets\n"
        "from prefect_neurodata.flows.qc_attachment import AssetRef, QcAttachmentRequest,"
        " attach_qc\n"
        "from prefect_neurodata.flows.metadata_sync import MetadataSyncRequest, sync_metadata\n"
        f"summary = {call}\n"
        "sys.stdout.write('\\nSUMMARY ' + summary.model_dump_json() + '\\n')\n"
        for call in calls
    ]
    sandbox.faults("docdb", latency_ms=LATENCY_MS)
    try:
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script],
                env={**os.environ, "PREFECT_API_URL": prefect_api},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for script in scripts
        ]
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        sandbox.faults("docdb")
    summaries = []
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"a concurrent run failed:\n{err[-4000:]}"
        line = next(line for line in out.splitlines()[::-1] if line.startswith("SUMMARY "))
        summaries.append(json.loads(line[len("SUMMARY ") :]))
    return summaries


def _duplicates(records: list[dict[str, Any]]) -> list[str]:
    counts = collections.Counter(r["location"] for r in records)
    return sorted(location for location, n in counts.items() if n > 1)


def test_overlapping_registrations_register_each_location_once(
    sandbox: Any, saved_docdb_block: str, prefect_api: str, bucket: str
) -> None:
    s3 = s3_client(sandbox)
    twin = new_bucket(sandbox, f"{bucket}-twin")
    names = write_assets(s3, bucket, 24)
    write_assets(s3, twin, 24)
    register_assets(
        RegistrationRequest(bucket=twin, prefixes=names, batch_size=5),
        docdb_block=saved_docdb_block,
    )
    # Run i registers names[4i : 4i + 12]: every location is asked for by two or three runs.
    windows = [names[4 * i : 4 * i + 12] for i in range(RUNS)] + [names[16:]]
    calls = [
        f"register_assets(RegistrationRequest(bucket={bucket!r}, prefixes={window!r},"
        f" batch_size=5), docdb_block={saved_docdb_block!r})"
        for window in windows
    ]

    summaries = _run_at_once(sandbox, prefect_api, calls)

    records = records_in(sandbox.env, bucket)
    assert _duplicates(records) == []
    assert comparable(records, bucket) == comparable(records_in(sandbox.env, twin), twin)
    rows = [row for summary in summaries for row in summary["rows"]]
    registered = sorted(r["location"] for r in rows if r["outcome"] == "registered")
    assert registered == sorted(f"s3://{bucket}/{name}" for name in names)
    assert [r for r in rows if r["outcome"] not in ("registered", "already registered")] == []
    assert {r["location"]: r["record_id"] for r in rows} == {
        r["location"]: r["_id"] for r in records
    }


def test_overlapping_qc_attachments_attach_each_evaluation_once(
    sandbox: Any, saved_docdb_block: str, prefect_api: str, bucket: str
) -> None:
    s3 = s3_client(sandbox)
    twin = new_bucket(sandbox, f"{bucket}-twin")
    names = write_assets(s3, bucket, 8, start=31_000)
    write_assets(s3, twin, 8, start=31_000)
    with docdb_block(sandbox.env).get_client() as client:
        for target in (bucket, twin):
            for name in names:
                client.register_asset(f"s3://{target}/{name}")
    evaluations = [evaluation(f"drift {i}") for i in range(3)]
    twin_refs = [AssetRef(location=f"s3://{twin}/{name}") for name in names]
    attach_qc(
        QcAttachmentRequest(assets=twin_refs, evaluations=evaluations, batch_size=3),
        docdb_block=saved_docdb_block,
    )
    # Run i attaches to names[2i : 2i + 4] plus the first asset: each asset has 1-4 runs.
    windows = [sorted({names[0], *names[2 * i : 2 * i + 4]}) for i in range(RUNS)]
    calls = [
        "attach_qc(QcAttachmentRequest(assets=["
        + ", ".join(f"AssetRef(location={f's3://{bucket}/{n}'!r})" for n in window)
        + f"], evaluations={evaluations!r}, batch_size=3), docdb_block={saved_docdb_block!r})"
        for window in windows
    ]

    summaries = _run_at_once(sandbox, prefect_api, calls)

    records = records_in(sandbox.env, bucket)
    for record in records:
        assert [e["name"] for e in record["quality_control"]["evaluations"]] == [
            "drift 0",
            "drift 1",
            "drift 2",
        ], record["location"]
    assert comparable(records, bucket) == comparable(records_in(sandbox.env, twin), twin)
    assert sum(s["attached"] for s in summaries) == len(names) * len(evaluations)
    assert sum(s["attached"] + s["skipped"] for s in summaries) == sum(
        len(window) * len(evaluations) for window in windows
    )


def test_overlapping_syncs_end_in_the_state_of_one_sync(
    sandbox: Any, saved_docdb_block: str, prefect_api: str, bucket: str
) -> None:
    s3 = s3_client(sandbox)
    twin = new_bucket(sandbox, f"{bucket}-twin")
    with docdb_block(sandbox.env).get_client() as client:
        for target in (bucket, twin):
            for name in write_assets(s3, target, 12, start=32_000):
                client.register_asset(f"s3://{target}/{name}")
            write_assets(s3, target, 6, start=32_100)  # folders DocDB does not know yet
    sync_metadata(
        MetadataSyncRequest(bucket=twin, batch_size=4, lookback_days=None, export_table=None),
        docdb_block=saved_docdb_block,
    )
    # Three runs share one sync configuration; one scans only part of the bucket (another
    # configuration, no shared checkpoint) and registers the same unknown folders.
    requests = [
        f"MetadataSyncRequest(bucket={bucket!r}, batch_size=4, lookback_days=None,"
        " export_table=None)"
    ] * 3 + [
        f"MetadataSyncRequest(bucket={bucket!r}, starts_with=['ecephys_7321'], batch_size=2,"
        " lookback_days=None, export_table=None)"
    ]
    calls = [f"sync_metadata({r}, docdb_block={saved_docdb_block!r})" for r in requests]

    summaries = _run_at_once(sandbox, prefect_api, calls)

    records = records_in(sandbox.env, bucket)
    assert _duplicates(records) == []
    assert len(records) == 18
    assert comparable(records, bucket) == comparable(records_in(sandbox.env, twin), twin)
    assert sum(s["counts"]["registered"] for s in summaries) == 6
    assert all(s["complete"] for s in summaries)
