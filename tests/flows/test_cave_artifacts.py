"""What the CAVE flows show in the Prefect UI (issue 12.3): names, inline tables, no dead links.

Artifacts and run names are read back from the real Prefect API for the run the test started.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from prefect_neurodata.flows.annotation_upload import AnnotationUploadRequest, upload_annotations
from prefect_neurodata.flows.materialization_snapshot import (
    SnapshotRequest,
    snapshot_materialization,
)
from tests.flows.cave_helpers import table_name
from tests.flows.test_annotation_upload import SYNAPSE, synapse_rows, write_csv

pytestmark = pytest.mark.flows


def run_record(flow_run_id: UUID) -> tuple[Any, dict[str, Any], list[str]]:
    """``(flow run, artifacts by key, task-run names)`` of one flow run."""
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=runs) if a.key}
        tasks = [t.name for t in client.read_task_runs(flow_run_filter=runs)]
    return flow_run, artifacts, tasks


def test_upload_artifacts_show_counts_and_say_where_the_rest_is(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table = table_name("art_up")
    source = write_csv(tmp_path / "a.csv", synapse_rows(2500, seed=51))
    state = upload_annotations(
        AnnotationUploadRequest(table=table, source=source, chunk_size=1000, create=SYNAPSE),
        cave_block=saved_cave_block,
        return_state=True,
    )
    summary = state.result()
    flow_run, artifacts, tasks = run_record(state.state_details.flow_run_id)
    assert flow_run.name == f"insert {table} @ {sandbox.env['NEURODATA_CAVE_DATASTACK']}"
    assert "insert chunk 2/3 (rows 1001-2000)" in tasks
    every = json.dumps(
        [a.data for a in artifacts.values()] + [a.description for a in artifacts.values()]
    )
    assert "file://" not in every
    assert "cave-annotation-upload-id-map" not in artifacts  # the dead link artifact is gone
    id_table = artifacts["cave-annotation-upload"]
    assert "Showing the first 2,000 of 2,500 rows; all of them are in" in id_table.description
    assert summary.id_map in id_table.description
    markdown = artifacts["cave-annotation-upload-summary"].data
    assert "| rows | 2,500 |" in markdown and "| chunks sent by this run | 3 |" in markdown
    assert "First 10 of 2,500 id mapping rows" in markdown
    assert f"`{summary.id_map}`" in markdown


def test_snapshot_artifacts_show_tables_partitions_and_checksums(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    state = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path), tables=["synapses"], rows_per_part=2000),
        cave_block=saved_cave_block,
        return_state=True,
    )
    summary = state.result()
    flow_run, artifacts, tasks = run_record(state.state_details.flow_run_id)
    assert flow_run.name == f"snapshot {sandbox.env['NEURODATA_CAVE_DATASTACK']} latest"
    parts = sorted(t for t in tasks if t.startswith("snapshot synapses part"))
    manifest = json.loads(Path(summary.manifest).read_text())
    # each task names the parts it wrote out of the table's planned parts, and its id span
    planned = {int(t.split("/", 1)[1].split(" ", 1)[0]) for t in parts}
    assert len(planned) == 1 and planned.pop() >= len(manifest["tables"]["synapses"]["files"])
    assert all(" (ids " in t for t in parts), parts
    markdown = artifacts["cave-materialization-snapshot-manifest"].data
    assert "file://" not in markdown and f"`{summary.manifest}`" in markdown
    for item in manifest["tables"]["synapses"]["files"]:
        assert f"`{item['path']}`" in markdown and item["sha256"] in markdown
    assert f"| synapses | written | {summary.rows:,} |" in markdown
