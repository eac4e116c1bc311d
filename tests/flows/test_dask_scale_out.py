"""Scale-out: the snapshot flow fans its partition tasks out over a local Dask cluster.

The same flow object, with ``DaskTaskRunner`` instead of its thread pool, runs against the real
Prefect API and the CAVE stand-in; the partitions execute in two Dask worker *processes* and the
result (files, rows, checksums) is the same as the thread-pool run's. See docs/scale-out.md.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster, get_task_stream
from prefect_dask import DaskTaskRunner

from prefect_neurodata.flows.materialization_snapshot import (
    SnapshotRequest,
    snapshot_materialization,
)

pytestmark = pytest.mark.flows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dask_cluster(prefect_api: str) -> Iterator[LocalCluster]:
    """Two single-threaded worker processes on 127.0.0.1 (they inherit PREFECT_API_URL)."""
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _files(manifest_path: str, table: str) -> list[tuple[str, int, str]]:
    manifest = json.loads(Path(manifest_path).read_text())
    return [(f["path"], f["rows"], f["sha256"]) for f in manifest["tables"][table]["files"]]


def test_snapshot_on_a_dask_cluster_matches_the_thread_pool_run(
    sandbox: Any, saved_cave_block: str, dask_cluster: LocalCluster, tmp_path: Path
) -> None:
    request = {"tables": ["synapses", "neuron_tags"], "rows_per_part": 1000}
    local = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path / "threads"), **request),
        cave_block=saved_cave_block,
    )
    on_dask = snapshot_materialization.with_options(
        task_runner=DaskTaskRunner(address=dask_cluster.scheduler_address)
    )
    with Client(dask_cluster) as client, get_task_stream(client) as stream:
        distributed = on_dask(
            SnapshotRequest(destination=str(tmp_path / "dask"), **request),
            cave_block=saved_cave_block,
        )
    workers = {record["worker"] for record in stream.data}
    parts = sum(t.files for t in distributed.tables)
    assert parts >= 5
    assert len(stream.data) >= parts, "the partition tasks ran on the Dask workers"
    assert len(workers) == 2, workers
    assert distributed.rows == local.rows
    for table in request["tables"]:
        assert _files(distributed.manifest, table) == _files(local.manifest, table)


def test_served_deployments_include_the_cave_flows() -> None:
    spec = importlib.util.spec_from_file_location("serve", REPO / "deployments" / "serve.py")
    assert spec is not None and spec.loader is not None
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    deployments = serve.build_deployments(
        only=["snapshot", "annotations"], snapshot_destination="s3://bucket/snaps"
    )
    by_flow = {d.flow_name: d for d in deployments}
    nightly = by_flow["cave-materialization-snapshot"]
    assert nightly.name == "nightly" and nightly.schedules[0].schedule.cron == "30 2 * * *"
    assert nightly.parameters["request"] == {"destination": "s3://bucket/snaps"}
    ui = by_flow["cave-annotation-upload"]
    assert ui.name == "ui" and not ui.schedules
    assert ui.parameters == {"cave_block": "neurodata-cave"}
