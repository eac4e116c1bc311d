"""What a scientist reads after a CAVE flow run, without opening its logs (issue 12).

* a failed run publishes a markdown artifact: what failed, for which inputs, what to do;
* table owner notices reach the run's logs and its artifacts;
* run names say which datastack, also when the request leaves it to the block.

Every run goes through the real Prefect API against the CAVE stand-in over HTTP; artifacts and
logs are read back from the API for the run the test started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from pydantic import SecretStr

from prefect_neurodata.flows.annotation_upload import (
    AnnotationUploadRequest,
    AnnotationValidationError,
    NewTable,
    upload_annotations,
)
from prefect_neurodata.flows.materialization_snapshot import (
    SnapshotRequest,
    snapshot_materialization,
)
from prefect_neurodata.tasks.cave import CaveInputError, CavePermissionError
from tests.flows.cave_helpers import cave_block, cave_faults, table_name
from tests.flows.test_annotation_upload import SYNAPSE, synapse_rows, write_csv
from tests.flows.test_cave_artifacts import run_record

pytestmark = pytest.mark.flows

UPLOAD_FAILURE = "cave-annotation-upload-failure"
SNAPSHOT_FAILURE = "cave-materialization-snapshot-failure"


def failed_run(state: Any, exception: type[BaseException]) -> tuple[Any, dict[str, Any]]:
    """``(flow run, artifacts by key)`` of a run that must have failed with ``exception``."""
    assert state.is_failed(), state
    with pytest.raises(exception):
        state.result()
    flow_run, artifacts, _ = run_record(state.state_details.flow_run_id)
    return flow_run, artifacts


def run_logs(flow_run_id: UUID, needle: str) -> list[str]:
    """Messages of the run's logs (flow and tasks); waits until one contains ``needle``."""
    APILogHandler().flush()
    logs_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    deadline = time.monotonic() + 15
    while True:
        with get_client(sync_client=True) as client:
            messages = [log.message for log in client.read_logs(log_filter=logs_filter)]
        if any(needle in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def assert_no_secret(artifacts: dict[str, Any], env: dict[str, str]) -> None:
    every = json.dumps([a.data for a in artifacts.values()])
    for key, value in env.items():
        if "TOKEN" in key or "SECRET" in key:
            assert value not in every, f"{key} leaked into an artifact"


# ------------------------------------------------------------------------------ failures
def test_upload_with_an_invalid_row_says_which_rows_and_that_nothing_was_written(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table = table_name("fail_rows")
    rows = synapse_rows(30, seed=12)
    rows[4][5] = "huge"  # size is an integer in the synapse schema
    source = write_csv(tmp_path / "bad.csv", rows)
    state = upload_annotations(
        AnnotationUploadRequest(table=table, source=source, create=SYNAPSE),
        cave_block=saved_cave_block,
        return_state=True,
    )
    _, artifacts = failed_run(state, AnnotationValidationError)
    report = artifacts[UPLOAD_FAILURE].data
    assert report.startswith("# Annotation upload failed")
    assert "**AnnotationValidationError**" in report
    assert "row 5: size = 'huge'" in report
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]
    assert f"- datastack: `'{datastack}'`" in report  # resolved from the block
    assert f"- table: `'{table}'`" in report and "- rows: `30`" in report
    assert f"- cave_block: `'{saved_cave_block}'`" in report
    assert "Nothing was written" in report and "problems table" in report
    assert "cave-annotation-upload-problems" in artifacts
    assert_no_secret(artifacts, sandbox.env)


def test_upload_with_a_refused_token_says_to_check_the_blocks_token(
    sandbox: Any, prefect_api: str, tmp_path: Path
) -> None:
    bad_token = "0123456789abcdef" * 2  # well-formed, unknown to the auth service
    cave_block(sandbox.env).model_copy(update={"token": SecretStr(bad_token)}).save(
        "test-cave-bad-token", overwrite=True
    )
    table = table_name("fail_auth")
    state = upload_annotations(
        AnnotationUploadRequest(
            table=table, source=write_csv(tmp_path / "a.csv", synapse_rows(5)), create=SYNAPSE
        ),
        cave_block="test-cave-bad-token",
        return_state=True,
    )
    _, artifacts = failed_run(state, CavePermissionError)
    report = artifacts[UPLOAD_FAILURE].data
    assert "refused the token of block `test-cave-bad-token`" in report
    assert "Check the block's token" in report
    assert "No chunk was sent yet" in report
    assert bad_token not in json.dumps([a.data for a in artifacts.values()])
    assert_no_secret(artifacts, sandbox.env)


def test_snapshot_of_a_missing_table_names_it_and_the_version(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    state = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path), tables=["no_such_table"]),
        cave_block=saved_cave_block,
        return_state=True,
    )
    _, artifacts = failed_run(state, CaveInputError)
    report = artifacts[SNAPSHOT_FAILURE].data
    assert report.startswith("# Materialization snapshot failed")
    assert "**CaveInputError**" in report and "no_such_table" in report
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]
    assert f"- datastack: `'{datastack}'`" in report
    assert "- version: `'latest valid'`" in report  # failed before it was resolved
    assert f"- destination: `'{tmp_path}'`" in report
    assert "stopped before its first write. Fix it and run again." in report
    assert not list(tmp_path.iterdir())  # nothing written
    assert_no_secret(artifacts, sandbox.env)


def test_snapshot_with_the_service_down_says_to_rerun_later(
    sandbox: Any, prefect_api: str, tmp_path: Path
) -> None:
    # no request retries in the client: the task-level retries alone outlast nothing
    cave_block(sandbox.env).model_copy(update={"max_retries": 0}).save(
        "test-cave-no-retries", overwrite=True
    )
    with cave_faults(sandbox, rate=1.0, statuses=[503], retry_after=0, seed=5):
        state = snapshot_materialization(
            SnapshotRequest(destination=str(tmp_path), version=1, tables=["synapses"]),
            cave_block="test-cave-no-retries",
            return_state=True,
        )
    _, artifacts = failed_run(state, Exception)
    report = artifacts[SNAPSHOT_FAILURE].data
    assert "503" in report
    assert "- version: `1`" in report and "- tables: `['synapses']`" in report
    assert "did not answer after every retry" in report
    assert "keeps the tables already in the manifest" in report
    assert_no_secret(artifacts, sandbox.env)


def test_snapshot_failing_in_a_partition_names_the_table(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]
    version = cave_block(sandbox.env).get_client().materialize.most_recent_version()
    # a file where the table's directory goes: the partition's write fails, after the checks
    root = tmp_path / datastack / f"v{version}"
    root.mkdir(parents=True)
    (root / "neuron_tags").write_text("in the way")
    state = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path), version=version, tables=["neuron_tags"]),
        cave_block=saved_cave_block,
        return_state=True,
    )
    _, artifacts = failed_run(state, OSError)
    report = artifacts[SNAPSHOT_FAILURE].data
    assert "- table: `'neuron_tags (1 part(s))'`" in report
    assert f"- version: `{version}`" in report and f"- datastack: `'{datastack}'`" in report
    assert "keeps the tables already in the manifest" not in report  # not a service failure
    assert "Run the flow again with the same parameters" in report  # the generic advice


# ------------------------------------------------------------------------------ notices
def test_snapshot_shows_table_owner_notices_and_is_named_after_the_datastack(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    notice = _seeded_notice(sandbox.env, "neuron_tags")
    state = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path), tables=["neuron_tags", "synapses"]),
        cave_block=saved_cave_block,
        return_state=True,
    )
    state.result()
    flow_run_id = state.state_details.flow_run_id
    flow_run, artifacts, _ = run_record(flow_run_id)
    # the run is named after the datastack the block gives (the request names none)
    assert flow_run.name == f"snapshot {sandbox.env['NEURODATA_CAVE_DATASTACK']} latest"
    markdown = artifacts["cave-materialization-snapshot-manifest"].data
    assert f"## Table owner notices\n\n- **neuron_tags**: {notice}" in markdown
    assert "- **synapses**" not in markdown  # no notice on synapses
    logs = run_logs(flow_run_id, "CAVE: Table Owner Notice on neuron_tags")
    assert f"Table owner notice on neuron_tags: {notice}" in logs  # the flow, from metadata
    # and what the service says in the query's Warning header (relayed from the client)
    assert f"CAVE: Table Owner Notice on neuron_tags: {notice}" in logs


def test_upload_to_a_table_with_a_notice_shows_it_in_logs_and_artifacts(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table = table_name("notice_up")
    notice = "Positions re-aligned on 2026-11-02; use rows from then on."
    create = NewTable(schema_type="synapse", description="Notice test.", notice_text=notice)
    first = write_csv(tmp_path / "a.csv", synapse_rows(5, seed=21))
    upload_annotations(
        AnnotationUploadRequest(table=table, source=first, create=create),
        cave_block=saved_cave_block,
    )
    # the second upload finds the table (and its notice); one bad row makes it fail
    rows = synapse_rows(5, seed=22)
    rows[1][5] = "x"
    state = upload_annotations(
        AnnotationUploadRequest(table=table, source=write_csv(tmp_path / "b.csv", rows)),
        cave_block=saved_cave_block,
        return_state=True,
    )
    _, artifacts = failed_run(state, AnnotationValidationError)
    assert f"## Table owner notices\n\n- **{table}**: {notice}" in artifacts[UPLOAD_FAILURE].data
    logs = run_logs(state.state_details.flow_run_id, "CAVE: Table Owner Notice")
    assert f"Table owner notice on {table}: {notice}" in logs
    assert f"CAVE: Table Owner Notice: {notice}" in logs  # the table_info Warning header
    # and a successful upload shows it in its summary
    good = upload_annotations(
        AnnotationUploadRequest(table=table, source=write_csv(tmp_path / "c.csv", rows[2:])),
        cave_block=saved_cave_block,
        return_state=True,
    )
    good.result()
    _, artifacts, _ = run_record(good.state_details.flow_run_id)
    summary = artifacts["cave-annotation-upload-summary"].data
    assert f"- **{table}**: {notice}" in summary


def _seeded_notice(env: dict[str, str], table: str) -> str:
    """The notice the CAVE stand-in holds for a seeded table (read with a plain client)."""
    meta = cave_block(env).get_client().materialize.get_table_metadata(table)
    assert meta.get("notice_text"), f"the sandbox seeds a notice on {table}"
    return str(meta["notice_text"])


# ------------------------------------------------------------------------------ run names
def test_run_name_of_an_unreadable_block_names_the_block(
    sandbox: Any, prefect_api: str, tmp_path: Path
) -> None:
    state = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path), version=2),
        cave_block="no-such-cave-block",
        return_state=True,
    )
    flow_run, artifacts = failed_run(state, ValueError)
    assert flow_run.name == "snapshot (datastack from block no-such-cave-block) v2"
    report = artifacts[SNAPSHOT_FAILURE].data
    assert "no-such-cave-block" in report
    assert "- datastack: `'(from block no-such-cave-block)'`" in report
