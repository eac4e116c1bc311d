"""Scale-out: the snapshot flow on a local Dask cluster, orchestrated by a Postgres-backed server.

A second Prefect server is started on 127.0.0.1 with its database in the session's real
PostgreSQL (``postgresql+asyncpg``). A fresh process, pointed at that server only, starts
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` and runs the unchanged
snapshot flow with ``DaskTaskRunner``; Dask's task stream shows the partition tasks ran on both
worker processes, the flow run is found in the Postgres database, and the files, rows and
checksums equal those of a thread-pool run. See docs/scale-out.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_neurodata.flows.materialization_snapshot import (
    SnapshotRequest,
    snapshot_materialization,
)
from tests.fixtures.prefect import run_prefect_server_on_postgres

pytestmark = pytest.mark.flows

REPO = Path(__file__).resolve().parents[2]
TABLES = ["synapses", "neuron_tags"]
ROWS_PER_PART = 1000

# Runs in a fresh process so that Prefect's client-side singletons (event and log workers)
# talk to the Postgres-backed server only.
DASK_RUN = """
import json, sys, time


def main():
    t0 = time.monotonic()
    marks = {}
    from distributed import Client, LocalCluster, get_task_stream
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect_dask import DaskTaskRunner
    from prefect_neurodata.blocks import CaveCredentials
    from prefect_neurodata.flows.materialization_snapshot import (
        SnapshotRequest, snapshot_materialization,
    )

    marks["imports"] = time.monotonic() - t0
    args = json.loads(sys.argv[1])
    CaveCredentials(**args["block"]).save("scale-out-cave", overwrite=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        marks["cluster"] = time.monotonic() - t0
        flow = snapshot_materialization.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            with get_task_stream(client) as stream:
                summary = flow(
                    SnapshotRequest(destination=args["destination"], tables=args["tables"],
                                    rows_per_part=args["rows_per_part"]),
                    cave_block="scale-out-cave",
                )
        marks["flow"] = time.monotonic() - t0
    print(json.dumps({
        "summary": summary.model_dump(),
        "workers": sorted({r["worker"] for r in stream.data}),
        "tasks": len(stream.data),
        "seconds": marks,
    }))


if __name__ == "__main__":
    main()
"""


def _files(manifest_path: str, table: str) -> list[tuple[str, int, str]]:
    manifest = json.loads(Path(manifest_path).read_text())
    return [(f["path"], f["rows"], f["sha256"]) for f in manifest["tables"][table]["files"]]


@pytest.fixture(scope="module")
def postgres_prefect(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Prefect server whose database is PostgreSQL; yields (API URL, SQLAlchemy URL)."""
    with run_prefect_server_on_postgres(
        tmp_path_factory.mktemp("prefect-pg-home"), postgres_url, "prefect_scale_out"
    ) as urls:
        yield urls


def test_snapshot_on_dask_with_a_postgres_backed_server(
    sandbox: Any,
    saved_cave_block: str,
    postgres_prefect: tuple[str, str],
    tmp_path: Path,
) -> None:
    api_url, database_url = postgres_prefect
    env = sandbox.env
    local = snapshot_materialization(
        SnapshotRequest(
            destination=str(tmp_path / "threads"), tables=TABLES, rows_per_part=ROWS_PER_PART
        ),
        cave_block=saved_cave_block,
    )
    args = {
        "block": {
            "server_address": env["NEURODATA_CAVE_GLOBAL_URL"],
            "datastack_name": env["NEURODATA_CAVE_DATASTACK"],
            "token": env["NEURODATA_CAVE_TOKEN"],
        },
        "destination": str(tmp_path / "dask"),
        "tables": TABLES,
        "rows_per_part": ROWS_PER_PART,
    }
    script = tmp_path / "dask_run.py"
    script.write_text(DASK_RUN)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    child_env.update({"PREFECT_API_URL": api_url, "DO_NOT_TRACK": "1"})
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(args)],
        env=child_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print("scale-out child timings (s):", report["seconds"])
    distributed = report["summary"]

    parts = sum(t["files"] for t in distributed["tables"])
    assert parts >= 5
    assert report["tasks"] >= parts, "the partition tasks ran on the Dask workers"
    assert len(report["workers"]) == 2, report["workers"]
    assert distributed["rows"] == local.rows
    for table in TABLES:
        assert _files(distributed["manifest"], table) == _files(local.manifest, table)

    # The run was orchestrated by the Postgres-backed server.
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        states = (
            conn.execute(
                sa.text(
                    "SELECT fr.state_type FROM flow_run fr JOIN flow f ON f.id = fr.flow_id "
                    "WHERE f.name = 'cave-materialization-snapshot'"
                )
            )
            .scalars()
            .all()
        )
    engine.dispose()
    assert [str(s).rsplit(".", 1)[-1] for s in states] == ["COMPLETED"]


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
    assert nightly.name == "snapshot-nightly" and nightly.schedules[0].schedule.cron == "30 2 * * *"
    assert nightly.parameters["request"] == {"destination": "s3://bucket/snaps"}
    ui = by_flow["cave-annotation-upload"]
    assert ui.name == "upload-annotations-from-ui" and not ui.schedules
    assert ui.parameters == {"cave_block": "neurodata-cave"}
