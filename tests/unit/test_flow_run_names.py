"""Flow-run names say which asset, bucket or assets a run is about (not ``fiery-bulldog``)."""

from __future__ import annotations

from typing import Any

import prefect.runtime.flow_run
import pytest

from prefect_neurodata.flows import metadata_sync, qc_attachment, registration


@pytest.fixture
def parameters(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(request: Any) -> None:
        monkeypatch.setattr(prefect.runtime.flow_run, "parameters", {"request": request})

    return use


def test_registration_names_the_location_or_bucket(parameters: Any) -> None:
    parameters({"locations": ["s3://aind-open-data/ecephys_1"], "batch_size": 50})
    assert registration._run_name() == "register s3://aind-open-data/ecephys_1"
    parameters({"locations": ["s3://b/x", "s3://b/y", "s3://b/z"]})
    assert registration._run_name() == "register s3://b/x (+2 more)"
    parameters(registration.RegistrationRequest(bucket="b", prefixes=["p1", "p2"]))
    assert registration._run_name() == "register 2 folder(s) of s3://b"


def test_qc_names_evaluations_and_assets(parameters: Any) -> None:
    parameters({"assets": [{"name": "ecephys_1"}, {"id": "abc"}], "evaluations": [{}, {}]})
    assert qc_attachment._run_name() == "qc 2 evaluation(s) -> ecephys_1 (+1 more)"


def test_sync_names_bucket_and_window(parameters: Any) -> None:
    parameters({"bucket": "aind-open-data", "lookback_days": 14})
    assert metadata_sync._run_name() == "sync s3://aind-open-data, last 14 days"
    parameters(metadata_sync.MetadataSyncRequest(bucket="lab-bucket", lookback_days=None))
    assert metadata_sync._run_name() == "sync s3://lab-bucket, everything"
