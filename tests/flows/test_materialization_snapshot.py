"""Materialization snapshot flow through a real Prefect API against the CAVE and S3 stand-ins."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from prefect_neurodata.flows.materialization_snapshot import (
    SnapshotRequest,
    snapshot_materialization,
)
from prefect_neurodata.sandbox.cave.world import CaveConfig
from prefect_neurodata.tasks.cave import CaveInputError, CavePermissionError
from tests.flows.cave_helpers import (
    FAULTS_20,
    cave_block,
    cave_faults,
    client_for,
    query_limit,
    versions,
)

pytestmark = pytest.mark.flows

SMALL_TABLES = ["cell_type_local", "cell_type_ref", "nucleus_detection"]


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def test_snapshot_writes_every_row_under_a_small_row_limit(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    env = sandbox.env
    valid, _ = versions(env)
    # A row limit far below the table size: every part must still come back complete.
    with query_limit(sandbox, 700):
        summary = snapshot_materialization(
            SnapshotRequest(destination=str(tmp_path), tables=["synapses"], rows_per_part=2000),
            cave_block=saved_cave_block,
        )
    assert summary.version == max(valid)
    root = tmp_path / env["NEURODATA_CAVE_DATASTACK"] / f"v{summary.version}"
    manifest = _manifest(root)
    materialize = client_for(env).materialize
    server_rows = materialize.get_annotation_count("synapses", version=summary.version)
    entry = manifest["tables"]["synapses"]
    assert entry["rows"] == entry["expected_rows"] == server_rows == summary.rows
    assert len(entry["files"]) >= 2
    ids: list[int] = []
    for item in entry["files"]:
        path = root / item["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == item["sha256"]
        part = pq.read_table(path)
        assert part.num_rows == item["rows"]
        ids += part.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == server_rows
    assert {f["name"] for f in entry["arrow_schema"]} >= {"id", "pre_pt_root_id", "size"}
    assert manifest["version"] == summary.version and manifest["version_timestamp"]

    # Same content as an unpartitioned read of the version.
    full = materialize.query_table("synapses", materialization_version=summary.version)
    assert sorted(full["id"].tolist()) == sorted(ids)


def test_partitions_start_after_one_set_up_task(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    # issue 15: access, version, tables, counts and partition plans are one task run, not
    # five sequential ones (each a round of Prefect API calls before any partition starts).
    state = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path), tables=SMALL_TABLES[:2], rows_per_part=1000),
        cave_block=saved_cave_block,
        return_state=True,
    )
    summary = state.result()
    assert {t.status for t in summary.tables} == {"written"}
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=runs)
    parts = [t for t in tasks if t.name.startswith("snapshot ")]
    set_up = [t for t in tasks if not t.name.startswith("snapshot ")]
    assert [t.task_key.rsplit("-", 1)[0] for t in set_up] == ["plan_snapshot"], [
        t.name for t in set_up
    ]
    assert len(parts) >= 2
    assert all(p.start_time >= set_up[0].end_time for p in parts)


def _part_numbers(name: str) -> tuple[list[int], int]:
    """``([5, 6, 7, 8], 16)`` from ``snapshot synapses parts 5-8/16 (ids ...)``."""
    numbers, planned = name.split(" (ids ", 1)[0].rsplit(" ", 1)[1].split("/")
    first, _, last = numbers.partition("-")
    return list(range(int(first), int(last or first) + 1)), int(planned)


@pytest.mark.parametrize("threads", [4, 2])
def test_a_tables_parts_are_dealt_into_one_task_per_thread(
    sandbox: Any, saved_cave_block: str, tmp_path: Path, threads: int
) -> None:
    # issue 15: a task run costs Prefect work in the flow and on the server, so the parts of a
    # table (one file each) are written by one task per thread of the flow's pool, not one each.
    from prefect.task_runners import ThreadPoolTaskRunner

    flow = snapshot_materialization.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=threads)
    )
    state = flow(
        SnapshotRequest(destination=str(tmp_path), tables=["synapses"], rows_per_part=1000),
        cave_block=saved_cave_block,
        return_state=True,
    )
    summary = state.result()
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=runs)
    names = [t.name for t in tasks if t.name.startswith("snapshot synapses part")]
    dealt = sorted(_part_numbers(name) for name in names)
    planned = {total for _, total in dealt}
    assert len(planned) == 1
    total = planned.pop()
    assert total > threads  # more parts than threads, so some task writes several
    assert len(names) == threads, names
    # consecutive parts, every planned part exactly once, shares differing by at most one
    assert [n for numbers, _ in dealt for n in numbers] == list(range(1, total + 1))
    sizes = [len(numbers) for numbers, _ in dealt]
    assert max(sizes) - min(sizes) <= 1
    (table,) = summary.tables
    assert table.rows == table.expected_rows and 2 <= table.files <= total
    root = Path(summary.manifest).parent
    files = _manifest(root)["tables"]["synapses"]["files"]
    every_part = [f"synapses/part-{i:05d}.parquet" for i in range(total)]
    assert [f["path"] for f in files] == [p for p in every_part if (root / p).exists()]
    assert sum(f["rows"] for f in files) == table.rows
    for item in files:
        assert hashlib.sha256((root / item["path"]).read_bytes()).hexdigest() == item["sha256"]
        assert pq.read_table(root / item["path"]).num_rows == item["rows"]


def test_rerun_skips_intact_tables_and_redoes_damaged_ones(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    request = SnapshotRequest(destination=str(tmp_path), tables=SMALL_TABLES)
    first = snapshot_materialization(request, cave_block=saved_cave_block)
    assert {t.status for t in first.tables} == {"written"}
    root = Path(first.manifest).parent
    before = _manifest(root)["tables"]

    second = snapshot_materialization(request, cave_block=saved_cave_block)
    assert {t.status for t in second.tables} == {"skipped"}

    damaged = root / before["nucleus_detection"]["files"][0]["path"]
    damaged.write_bytes(b"not parquet")
    third = snapshot_materialization(request, cave_block=saved_cave_block)
    status = {t.table: t.status for t in third.tables}
    assert status == {
        "cell_type_local": "skipped",
        "cell_type_ref": "skipped",
        "nucleus_detection": "written",
    }
    after = _manifest(root)["tables"]
    assert (
        after["nucleus_detection"]["files"][0]["sha256"]
        == (before["nucleus_detection"]["files"][0]["sha256"])
    )

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_latest_artifacts(limit=200)}
    assert {"cave-materialization-snapshot", "cave-materialization-snapshot-manifest"} <= keys


def test_snapshot_to_s3(
    sandbox: Any, saved_cave_block: str, cave_bucket: str, cave_aws_env: dict[str, str]
) -> None:
    import boto3

    summary = snapshot_materialization(
        SnapshotRequest(destination=f"s3://{cave_bucket}/snaps", tables=["neuron_tags"]),
        cave_block=saved_cave_block,
    )
    assert summary.manifest.startswith(f"s3://{cave_bucket}/snaps/")
    s3 = boto3.client("s3", endpoint_url=cave_aws_env["AWS_ENDPOINT_URL"])
    key = summary.manifest.split(f"s3://{cave_bucket}/", 1)[1]
    manifest = json.loads(s3.get_object(Bucket=cave_bucket, Key=key)["Body"].read())
    (item,) = manifest["tables"]["neuron_tags"]["files"]
    prefix = key.rsplit("/", 1)[0]
    body = s3.get_object(Bucket=cave_bucket, Key=f"{prefix}/{item['path']}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == item["sha256"]
    assert item["rows"] == manifest["tables"]["neuron_tags"]["expected_rows"] > 0


def test_same_result_under_transient_faults(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    tables = ["synapses", "cell_type_local"]
    clean = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path / "clean"), tables=tables, rows_per_part=1500),
        cave_block=saved_cave_block,
    )
    with cave_faults(sandbox, **FAULTS_20):
        faulty = snapshot_materialization(
            SnapshotRequest(
                destination=str(tmp_path / "faulty"), tables=tables, rows_per_part=1500
            ),
            cave_block=saved_cave_block,
        )
        stats = requests.get(
            f"{sandbox.env['NEURODATA_CAVE_LOCAL_URL']}/__sandbox__/stats", timeout=10
        ).json()
    assert sum(stats["faults"].values()) > 0, stats
    a = _manifest(Path(clean.manifest).parent)["tables"]
    b = _manifest(Path(faulty.manifest).parent)["tables"]
    for table in tables:
        assert [(f["path"], f["rows"], f["sha256"]) for f in a[table]["files"]] == [
            (f["path"], f["rows"], f["sha256"]) for f in b[table]["files"]
        ]
    assert faulty.rows == clean.rows


def test_expired_and_unknown_versions_fail_before_any_write(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    valid, every = versions(sandbox.env)
    expired = [v for v in every if v not in valid]
    assert expired, "the seeded datastack has an expired version"
    with pytest.raises(CaveInputError, match=rf"version {expired[0]} .* is EXPIRED"):
        snapshot_materialization(
            SnapshotRequest(destination=str(tmp_path), version=expired[0]),
            cave_block=saved_cave_block,
        )
    with pytest.raises(CaveInputError, match=r"version 9999 does not exist"):
        snapshot_materialization(
            SnapshotRequest(destination=str(tmp_path), version=9999), cave_block=saved_cave_block
        )
    assert list(tmp_path.iterdir()) == []


def test_unknown_tables_fail_before_any_write(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    with pytest.raises(CaveInputError, match=r"\['no_such_table'\] are not in version"):
        snapshot_materialization(
            SnapshotRequest(destination=str(tmp_path), tables=["synapses", "no_such_table"]),
            cave_block=saved_cave_block,
        )
    assert list(tmp_path.iterdir()) == []


def test_missing_permission_fails_before_any_write(
    sandbox: Any, prefect_api: str, tmp_path: Path
) -> None:
    block = cave_block(sandbox.env)
    block.token = CaveConfig().noperm_token  # a valid user without any right on the datastack
    block.save("test-cave-noperm", overwrite=True)
    with pytest.raises(CavePermissionError, match=r"Missing permission: view"):
        snapshot_materialization(
            SnapshotRequest(destination=str(tmp_path)), cave_block="test-cave-noperm"
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_destination_is_rejected_by_the_parameter_model() -> None:
    with pytest.raises(ValueError, match="only local paths and s3://"):
        SnapshotRequest(destination="gs://bucket/x")


def test_a_retried_part_task_writes_only_the_parts_it_had_not_finished(
    sandbox: Any, saved_cave_block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 15: a task writes several parts; a transient failure in its second part retries
    # the task run, which must not fetch and write its first part again.
    from prefect.task_runners import ThreadPoolTaskRunner

    from prefect_neurodata.tasks import cave_materialization

    real = cave_materialization.write_table_part
    writes: list[str] = []
    failed: list[str] = []

    def flaky(client: Any, version: int, table: str, part: Any, *args: Any) -> dict[str, Any]:
        name = Path(part.target).name
        writes.append(name)
        if name == "part-00001.parquet" and not failed:
            failed.append(name)
            raise requests.ConnectionError("connection reset (injected)")
        return real(client, version, table, part, *args)

    monkeypatch.setattr(cave_materialization, "write_table_part", flaky)
    flow = snapshot_materialization.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    summary = flow(
        SnapshotRequest(destination=str(tmp_path), tables=["synapses"], rows_per_part=1000),
        cave_block=saved_cave_block,
    )
    (table,) = summary.tables
    assert failed == ["part-00001.parquet"] and table.rows == table.expected_rows
    # one task (one thread) wrote every part; after the retry part 0 was not written again
    assert writes.count("part-00000.parquet") == 1
    assert writes.count("part-00001.parquet") == 2
    assert len(writes) == len(set(writes)) + 1
    files = _manifest(Path(summary.manifest).parent)["tables"]["synapses"]["files"]
    assert sum(f["rows"] for f in files) == table.rows
