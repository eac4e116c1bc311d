"""QC attachment flow through a real Prefect API against the DocDB and S3 stand-ins."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from prefect_neurodata.flows.qc_attachment import AssetRef, QcAttachmentRequest, attach_qc
from tests.flows.aind_helpers import (
    FAULTS_20,
    aws_credentials,
    docdb_block,
    records_in,
    write_assets,
)

pytestmark = pytest.mark.flows

_NEXT_START = itertools.count(20_000, 100)
MODALITY = {"name": "Extracellular electrophysiology", "abbreviation": "ecephys"}


def evaluation(name: str, status: str = "Pass") -> dict[str, Any]:
    """An aind-data-schema 1.x QCEvaluation as JSON."""
    return {
        "modality": MODALITY,
        "stage": "Raw data",
        "name": name,
        "description": "Checks done by the test",
        "metrics": [
            {
                "name": f"{name} probe A",
                "value": {"value": 0.93, "unit": "ratio"},
                "status_history": [
                    {
                        "evaluator": "Automated",
                        "status": status,
                        "timestamp": "2025-03-02T10:00:00Z",
                    }
                ],
            }
        ],
        "allow_failed_metrics": False,
        "created": "2025-03-02T10:00:00Z",
    }


def metric(name: str) -> dict[str, Any]:
    """An aind-data-schema 2.x QCMetric as JSON."""
    return {
        "object_type": "QC metric",
        "name": name,
        "modality": MODALITY,
        "stage": "Raw data",
        "value": 12,
        "status_history": [
            {"evaluator": "Automated", "status": "Fail", "timestamp": "2025-03-02T10:00:00Z"}
        ],
        "tags": {"probe": "probeA"},
    }


def _register(sandbox: Any, bucket: str, count: int, version: str = "v1") -> list[dict]:
    # Names are unique in the shared DocDB stand-in, so name references stay unambiguous.
    start = next(_NEXT_START)
    names = write_assets(aws_credentials(sandbox.env).get_s3_client(), bucket, count, start)
    with docdb_block(sandbox.env, version).get_client() as client:
        for name in names:
            client.register_asset(f"s3://{bucket}/{name}")
    return records_in(sandbox.env, bucket, version)


def _evaluations_of(sandbox: Any, bucket: str, version: str = "v1") -> dict[str, list[dict]]:
    key = "evaluations" if version == "v1" else "metrics"
    return {
        r["name"]: (r.get("quality_control") or {}).get(key, [])
        for r in records_in(sandbox.env, bucket, version)
    }


def test_attaches_by_id_name_and_location_once(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    records = _register(sandbox, bucket, 3)
    refs = [
        AssetRef(id=records[0]["_id"]),
        AssetRef(name=records[1]["name"]),
        AssetRef(location=records[2]["location"]),
    ]
    evals = [evaluation("Drift map"), evaluation("Raw traces", "Fail")]
    request = QcAttachmentRequest(assets=refs, evaluations=evals)

    first = attach_qc(request, docdb_block=saved_docdb_block)
    assert (first.assets, first.attached, first.skipped) == (3, 6, 0)
    attached = _evaluations_of(sandbox, bucket)
    for record in records:
        assert [e["name"] for e in attached[record["name"]]] == ["Drift map", "Raw traces"]
        assert attached[record["name"]][1]["metrics"] == evals[1]["metrics"]

    second = attach_qc(request, docdb_block=saved_docdb_block)
    assert (second.attached, second.skipped) == (0, 6)
    assert _evaluations_of(sandbox, bucket) == attached


def test_reads_evaluations_from_s3_and_local_files(
    sandbox: Any, saved_docdb_block: str, bucket: str, tmp_path: Path
) -> None:
    records = _register(sandbox, bucket, 1)
    s3 = aws_credentials(sandbox.env).get_s3_client()
    s3.put_object(
        Bucket=bucket,
        Key="qc/evals.json",
        Body=json.dumps({"evaluations": [evaluation("From S3")]}).encode(),
    )
    local = tmp_path / "evals.json"
    local.write_text(json.dumps([evaluation("From disk")]))
    ref = [AssetRef(id=records[0]["_id"])]
    attach_qc(
        QcAttachmentRequest(assets=ref, evaluations_file=f"s3://{bucket}/qc/evals.json"),
        docdb_block=saved_docdb_block,
    )
    attach_qc(
        QcAttachmentRequest(assets=ref, evaluations_file=str(local)),
        docdb_block=saved_docdb_block,
    )
    names = [e["name"] for e in _evaluations_of(sandbox, bucket)[records[0]["name"]]]
    assert names == ["From S3", "From disk"]


def _broken(change: str) -> dict[str, Any]:
    item = evaluation("Broken")
    if change == "missing":
        del item["stage"]
        del item["metrics"]
    elif change == "status":
        item["metrics"][0]["status_history"][0]["status"] = "Passed"
    elif change == "timestamp":
        item["metrics"][0]["status_history"][0]["timestamp"] = "yesterday"
    elif change == "history":
        item["metrics"][0]["status_history"] = []
    return item


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("missing", r"evaluations\[1\] \('Broken'\) is missing required key\(s\) stage, metrics"),
        ("status", r"status must be one of \['Pass', 'Fail', 'Pending'\], got 'Passed'"),
        ("timestamp", r"timestamp is not an ISO 8601 timestamp: 'yesterday'"),
        ("history", r"status_history must be a non-empty list"),
    ],
)
def test_invalid_evaluations_fail_before_any_write(
    sandbox: Any, saved_docdb_block: str, bucket: str, change: str, expected: str
) -> None:
    records = _register(sandbox, bucket, 1)
    request = QcAttachmentRequest(
        assets=[AssetRef(id=records[0]["_id"])],
        evaluations=[evaluation("Fine"), _broken(change)],
    )
    with pytest.raises(ValueError, match=expected):
        attach_qc(request, docdb_block=saved_docdb_block)
    assert _evaluations_of(sandbox, bucket)[records[0]["name"]] == []


def test_unknown_asset_fails_before_any_write(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    records = _register(sandbox, bucket, 1)
    request = QcAttachmentRequest(
        assets=[AssetRef(id=records[0]["_id"]), AssetRef(name="no_such_asset_2025-01-01")],
        evaluations=[evaluation("Drift map")],
    )
    with pytest.raises(ValueError, match=r"assets\[1\]: no DocDB record has name 'no_such_asset"):
        attach_qc(request, docdb_block=saved_docdb_block)
    assert _evaluations_of(sandbox, bucket)[records[0]["name"]] == []


def test_asset_reference_needs_exactly_one_key() -> None:
    with pytest.raises(ValueError, match="exactly one of id, name, location"):
        AssetRef(id="a", name="b")


def test_v2_metrics(sandbox: Any, prefect_api: str, bucket: str) -> None:
    docdb_block(sandbox.env, "v2").save("test-aind-docdb-v2", overwrite=True)
    records = _register(sandbox, bucket, 1, "v2")
    request = QcAttachmentRequest(
        assets=[AssetRef(location=records[0]["location"])],
        evaluations=[metric("Unit count"), metric("Noise")],
    )
    assert attach_qc(request, docdb_block="test-aind-docdb-v2").attached == 2
    assert attach_qc(request, docdb_block="test-aind-docdb-v2").skipped == 2
    metrics = _evaluations_of(sandbox, bucket, "v2")[records[0]["name"]]
    assert [m["name"] for m in metrics] == ["Unit count", "Noise"]
    bad = copy.deepcopy(metric("Bad"))
    del bad["value"]
    with pytest.raises(ValueError, match=r"missing required key\(s\) value"):
        attach_qc(
            QcAttachmentRequest(assets=request.assets, evaluations=[bad]),
            docdb_block="test-aind-docdb-v2",
        )


def test_same_state_under_injected_faults(
    sandbox: Any, saved_docdb_block: str, bucket: str
) -> None:
    records = _register(sandbox, bucket, 20)
    evals = [evaluation("Drift map"), evaluation("Raw traces")]
    request = QcAttachmentRequest(
        assets=[AssetRef(id=r["_id"]) for r in records], evaluations=evals, batch_size=5
    )
    sandbox.faults("docdb", **FAULTS_20)
    try:
        summary = attach_qc(request, docdb_block=saved_docdb_block)
    finally:
        sandbox.faults("docdb")
    assert summary.attached + summary.skipped == 40
    for name, attached in _evaluations_of(sandbox, bucket).items():
        assert [e["name"] for e in attached] == ["Drift map", "Raw traces"], name
