"""The package's environment knobs (`prefect_neurodata.settings`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_neurodata.relay import prefect_api_headers
from prefect_neurodata.settings import NeurodataSettings


def test_fields_read_their_variables_and_empty_counts_as_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEURODATA_LEDGER_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_REGION", "")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://all")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    settings = NeurodataSettings()
    assert settings.neurodata_ledger_dir == tmp_path
    assert settings.region == "eu-west-1"
    assert settings.s3_endpoint_url == "http://all"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only")
    assert NeurodataSettings().s3_endpoint_url == "http://s3only"
    monkeypatch.delenv("NEURODATA_LEDGER_DIR")
    assert NeurodataSettings().neurodata_ledger_dir == Path.home() / ".neurodata" / "ledgers"


def test_env_file_wins_over_the_shell_and_secrets_stay_hidden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEURODATA_SQS_QUEUE_URL", "http://stale/queue")
    monkeypatch.setenv("PREFECT_API_URL", "http://shell/api")
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    env_file = tmp_path / "sandbox.env"
    env_file.write_text(
        'NEURODATA_SQS_QUEUE_URL=http://file/queue\nexport PREFECT_API_AUTH_STRING="u:p w"\n'
    )
    settings = NeurodataSettings.load(env_file)
    assert settings.neurodata_sqs_queue_url == "http://file/queue"
    assert settings.prefect_api_url == "http://shell/api"
    assert "u:p w" not in repr(settings) and "u:p w" not in str(settings.model_dump())
    assert prefect_api_headers(settings) == {"Authorization": "Basic dTpwIHc="}
