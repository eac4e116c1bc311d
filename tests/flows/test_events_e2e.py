"""End to end: an upload to S3 registers the asset through SQS, the relay, a Prefect event
trigger and a served deployment, all on 127.0.0.1 against a real Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

from prefect_neurodata.relay import EventRelay
from tests.flows.aind_helpers import (
    asset_name,
    aws_credentials,
    core_files,
    records_in,
    write_asset,
)

pytestmark = pytest.mark.flows

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "aind-asset-registration/register-on-upload"


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)


def _deployment_ready(started: datetime, docdb_block: str) -> Any:
    """The registration deployment once *this* serve process applied and polls it.

    Other tests of the session may have applied the same deployment (with its automation and
    another block name) to the same server: an event posted before serve.py re-applied it would
    start a run nobody serves, with the wrong block.
    """
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
        except Exception:  # noqa: BLE001 - not created yet
            return None
        if deployment.last_polled is None or deployment.last_polled < started:
            return None
        automations = client.read_automations_by_name("asset uploaded to S3")
        ours = [
            automation
            for automation in automations
            if all(
                (getattr(action, "parameters", None) or {}).get("docdb_block") == docdb_block
                for action in automation.actions
            )
        ]
        return deployment if automations and ours == automations else None


def test_upload_to_s3_registers_the_asset(
    sandbox: Any, saved_docdb_block: str, prefect_api: str, tmp_path: Path
) -> None:
    env = sandbox.env
    bucket = env["NEURODATA_S3_BUCKET"]
    log = (tmp_path / "serve.log").open("wb")
    started = datetime.now(timezone.utc)
    server = subprocess.Popen(
        [
            sys.executable,
            "deployments/serve.py",
            "--only",
            "registration",
            "--docdb-block",
            saved_docdb_block,
        ],
        cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deployment = _wait(
            lambda: _deployment_ready(started, saved_docdb_block),
            90,
            "the served registration deployment",
        )
        sqs = aws_credentials(env).get_client("sqs")
        # Earlier tests of the session wrote metadata to the same bucket; their notifications
        # are not this test's upload.
        sqs.purge_queue(QueueUrl=env["NEURODATA_SQS_QUEUE_URL"])
        relay = EventRelay(sqs, env["NEURODATA_SQS_QUEUE_URL"], prefect_api, wait_seconds=1)

        name = asset_name(4242, platform="behavior")
        location = f"s3://{bucket}/{name}"
        s3 = aws_credentials(env).get_s3_client()
        write_asset(s3, bucket, name, core_files(name, 4242), last="data_description")

        def relayed() -> bool:
            relay.poll_once(wait_seconds=1)
            return relay.stats.events >= 1

        _wait(relayed, 60, "the relay to post the upload event", interval=0)

        def registered() -> list[dict]:
            return [r for r in records_in(env, bucket) if r["location"] == location]

        (record,) = _wait(registered, 120, f"{location} to be registered in DocDB")
        assert record["name"] == name
        assert record["subject"]["subject_id"] == name.split("_")[1]

        # Filtered on the server: in a full session, more than one page of earlier flow runs
        # would otherwise hide this deployment's run.
        only_ours = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]))
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=only_ours, limit=50)
        ours = [r for r in runs if r.deployment_id == deployment.id]
        assert ours, "no flow run of the registration deployment"
        assert [r.parameters["request"]["locations"] for r in ours] == [[location]]
        assert relay.stats.failed == 0
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
