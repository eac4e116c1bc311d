"""The CAVE tasks on their own: chunkedgraph batches, frozen-version caching, retry rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from prefect import flow

from prefect_neurodata.clients.cave.materializationengine import MaterializationClientV2
from prefect_neurodata.clients.http import ServiceError
from prefect_neurodata.tasks import cave as cave_tasks
from prefect_neurodata.tasks import cave_materialization
from prefect_neurodata.tasks.retries import is_transient_error
from tests.flows.cave_helpers import client_for

pytestmark = pytest.mark.flows


def test_chunkedgraph_tasks_agree_with_the_frozen_version(
    sandbox: Any, saved_cave_block: str
) -> None:
    env = sandbox.env
    datastack = env["NEURODATA_CAVE_DATASTACK"]
    materialize = client_for(env).materialize
    version = materialize.most_recent_version()
    stamp = materialize.get_timestamp(version)
    rows = materialize.query_table("synapses", limit=50, materialization_version=version)

    @flow
    def roots_at_version() -> tuple[list[int], list[bool], list[int]]:
        roots = cave_tasks.get_roots(
            saved_cave_block, datastack, rows["pre_pt_supervoxel_id"].tolist(), stamp
        )
        latest = cave_tasks.is_latest_roots(saved_cave_block, datastack, roots)
        descendants = cave_tasks.get_latest_roots(saved_cave_block, datastack, roots[0])
        return roots, latest, descendants

    roots, latest, descendants = roots_at_version()
    assert roots == rows["pre_pt_root_id"].tolist()
    assert len(latest) == len(roots)
    for root, is_latest in zip(roots, latest, strict=True):
        if is_latest:
            assert cave_tasks.get_latest_roots.fn(saved_cave_block, datastack, root) == [root]
    assert descendants and all(isinstance(r, int) for r in descendants)


def test_frozen_reads_are_cached_across_runs_and_live_reads_are_not(
    sandbox: Any, saved_cave_block: str
) -> None:
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]

    @flow
    def read_twice() -> list[Any]:
        meta = cave_tasks.resolve_materialization_version(saved_cave_block, datastack)
        count = cave_tasks.count_version_rows(
            saved_cave_block,
            datastack,
            meta["version"],
            "synapses",
            meta["time_stamp"],
            return_state=True,
        )
        live = cave_tasks.count_annotations(
            saved_cave_block, datastack, "synapses", return_state=True
        )
        return [count, live]

    read_twice()
    count, live = read_twice()
    assert count.name == "Cached" and count.result() > 0
    assert live.name == "Completed"


def test_only_transient_errors_are_retried() -> None:
    def error(status: int) -> ServiceError:
        return ServiceError(status_code=status, method="GET", url="http://x", server_message="m")

    assert is_transient_error(error(503)) and is_transient_error(error(429))
    assert not is_transient_error(error(404))
    assert not is_transient_error(cave_tasks.CaveInputError("bad table"))
    assert not is_transient_error(cave_tasks.ChunkReconcileError("?"))
    assert cave_tasks.upload_annotation_chunk.retries > 0
    assert cave_tasks.upload_annotation_chunk.retry_condition_fn is not None
    assert set(cave_tasks.upload_annotation_chunk.tags) == {"cave", "write"}
    assert "write" not in cave_tasks.snapshot_table_part.tags


def test_version_resolution_names_what_is_wrong(sandbox: Any, saved_cave_block: str) -> None:
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]
    meta = cave_tasks.resolve_materialization_version.fn(saved_cave_block, datastack, None)
    assert meta["valid"] and dt.datetime.fromisoformat(meta["time_stamp"])
    with pytest.raises(cave_tasks.CaveInputError, match=r"does not exist .* \(valid versions: \["):
        cave_tasks.resolve_materialization_version.fn(saved_cave_block, datastack, 4242)


def test_plan_snapshot_agrees_with_the_single_set_up_tasks(
    sandbox: Any, saved_cave_block: str
) -> None:
    # issue 15: the snapshot's one set-up task must plan exactly what the five tasks it
    # replaces in the flow return (version, tables, counts, id ranges), in the same order.
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]
    tables = ["synapses", "nucleus_detection", "synapses"]

    @flow
    def both() -> tuple[Any, dict[str, Any]]:
        plan = cave_tasks.plan_snapshot(saved_cave_block, datastack, None, tables, 2000)
        access = cave_tasks.check_cave_access(saved_cave_block, datastack, "view")
        meta = cave_tasks.resolve_materialization_version(saved_cave_block, datastack, None)
        version, stamp = meta["version"], meta["time_stamp"]
        metas = cave_tasks.list_version_tables(saved_cave_block, datastack, version, stamp)
        parts = {
            table: (
                cave_tasks.count_version_rows(saved_cave_block, datastack, version, table, stamp),
                cave_tasks.plan_table_partitions(
                    saved_cave_block, datastack, version, table, 2000, stamp
                ),
            )
            for table in dict.fromkeys(tables)
        }
        return plan, {"access": access, "meta": meta, "metas": metas, "parts": parts}

    plan, single = both()
    assert plan.access == single["access"]
    assert plan.version == single["meta"]
    assert plan.tables == {m["table_name"]: m for m in single["metas"]}
    assert plan.wanted == ["synapses", "nucleus_detection"]
    assert {t: (p.rows, p.ranges) for t, p in plan.parts.items()} == single["parts"]
    assert len(plan.parts["synapses"].ranges) >= 2  # the table is split, not one open range


def test_plan_snapshot_names_unknown_and_private_tables(
    sandbox: Any, saved_cave_block: str
) -> None:
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]
    with pytest.raises(cave_tasks.CaveInputError, match=r"\['no_such_table'\] are not in version"):
        cave_tasks.plan_snapshot.fn(saved_cave_block, datastack, None, ["no_such_table"])
    with pytest.raises(cave_tasks.CaveInputError, match=r"version 9999 does not exist"):
        cave_tasks.plan_snapshot.fn(saved_cave_block, datastack, 9999, ["synapses"])


def test_snapshot_part_fetches_its_range_in_the_planned_requests(
    sandbox: Any, saved_cave_block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 15: a partition task fetches its range as one request per planned piece (so a
    # range above the row limit is never fetched cut first), and writes the same rows as one
    # request for the whole range would.
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]
    monkeypatch.setattr(cave_materialization, "REQUEST_ROWS", 400)
    plan = cave_tasks.plan_snapshot.fn(saved_cave_block, datastack, None, ["synapses"], 2000)
    version = int(plan.version["version"])
    table = plan.parts["synapses"]
    assert len(table.cuts) == len(table.ranges) >= 2
    share = table.rows / len(table.ranges)
    for (lo, hi), cuts in zip(table.ranges, table.cuts, strict=True):
        bounds = [lo or 0, *cuts, hi if hi is not None else max(cuts[-1:] or [0]) + 1]
        assert bounds == sorted(set(bounds)), (lo, hi, cuts)  # increasing, inside the range
        assert len(cuts) + 1 >= share / 400  # pieces of about REQUEST_ROWS rows
    calls: list[dict[str, Any]] = []
    real = MaterializationClientV2.iter_query_table_partitions

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MaterializationClientV2, "iter_query_table_partitions", counted)
    id_range, cuts = table.ranges[0], table.cuts[0]
    assert cuts
    pieces = cave_tasks.snapshot_table_part.fn(
        saved_cave_block, datastack, version, "synapses", id_range,
        str(tmp_path / "pieces.parquet"), cuts=cuts,
    )  # fmt: skip
    assert len(calls) == len(cuts) + 1
    calls.clear()
    whole = cave_tasks.snapshot_table_part.fn(
        saved_cave_block, datastack, version, "synapses", id_range, str(tmp_path / "whole.parquet")
    )
    assert len(calls) == 1
    assert pieces["rows"] == whole["rows"] > 0
    written = pq.read_table(pieces["path"]).sort_by("id")
    assert written.equals(pq.read_table(whole["path"]).sort_by("id"))
    assert written.column("id").to_pylist() == sorted(set(written.column("id").to_pylist()))
