"""Benchmark: the materialization snapshot flow on a 1,000,000-row table, vs a plain loop.

Starts (or reuses) a CAVE stand-in seeded with ``--synapses`` synapses and a Prefect server on
127.0.0.1, then measures, each in a fresh subprocess so peak memory is its own:

* ``flow``: `snapshot_materialization` of the synapse table through the Prefect API (id-range
  partition tasks on a 4-thread pool, each streaming into a Parquet writer); its set-up time
  (flow-run start to the first partition task's start, read back from the Prefect API) is
  shown too;
* ``loop``: the same work with our clients and no Prefect: one
  ``iter_query_table_partitions`` stream into one ParquetWriter, then sha256 of the file.

Prints rows/s, wall time, CPU time and the child's own peak memory above its post-import
baseline (``VmHWM`` reset after imports; ``ru_maxrss`` would report the peak of the parent
forked before ``exec``), and the Prefect overhead (flow time / loop time).

Example:
    ```bash
    .venv/bin/python bench/flows_cave.py                      # 1,000,000 synapses
    .venv/bin/python bench/flows_cave.py --workdir /tmp/b --keep   # keep the sandbox for reruns
    .venv/bin/python bench/flows_cave.py --synapses 4000000 --reps 3
    ```
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _measured(work: Any) -> dict[str, Any]:
    """Run ``work()`` -> dict, adding wall and CPU seconds and this process's own peak memory."""
    from bench._driver_common import PeakMemory, cpu_seconds

    memory = PeakMemory()
    memory.start()
    cpu = cpu_seconds()
    t0 = time.perf_counter()
    result = work()
    result["seconds"] = time.perf_counter() - t0
    result["cpu_seconds"] = cpu_seconds() - cpu
    mem = memory.result()
    result.update(
        baseline_mb=mem["base_rss_mb"], peak_mb=mem["peak_rss_mb"], work_mb=mem["work_rss_mb"]
    )
    return result


def child_flow(env: dict[str, str], dest: str, rows_per_part: int) -> dict[str, Any]:
    """Run the snapshot flow (in this child process) and report."""
    # Imports are excluded from the timing on both sides (as in the client drivers): the
    # engine modules a first flow call would otherwise import inside the timed region.
    import prefect.flow_engine  # noqa: F401
    import prefect.results  # noqa: F401
    import prefect.task_engine  # noqa: F401
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from prefect_neurodata.blocks import CaveCredentials
    from prefect_neurodata.flows.materialization_snapshot import (
        SnapshotRequest,
        snapshot_materialization,
    )

    CaveCredentials(
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        datastack_name=env["NEURODATA_CAVE_DATASTACK"],
        token=env["NEURODATA_CAVE_TOKEN"],
    ).save("bench-cave", overwrite=True)

    def work() -> dict[str, Any]:
        state = snapshot_materialization(
            SnapshotRequest(destination=dest, tables=["synapses"], rows_per_part=rows_per_part),
            cave_block="bench-cave",
            return_state=True,
        )
        (table,) = state.result().tables
        return {
            "rows": table.rows,
            "files": table.files,
            "bytes": table.bytes,
            "flow_run_id": str(state.state_details.flow_run_id),
        }

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        result = _measured(work)
    result["setup_seconds"] = _setup_seconds(result.pop("flow_run_id"))
    return result


def _setup_seconds(flow_run_id: str) -> float:
    """Seconds from the flow run's start to the start of its first partition task."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    starts = [t.start_time for t in runs if t.name.startswith("snapshot ") and t.start_time]
    if not starts or flow_run.start_time is None:
        return float("nan")
    return (min(starts) - flow_run.start_time).total_seconds()


def child_loop(env: dict[str, str], dest: str) -> dict[str, Any]:
    """The same work with the clients only: stream every partition into one Parquet file."""
    import hashlib

    import pyarrow.parquet as pq

    from prefect_neurodata.clients.cave import CAVEclient

    client = CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
    )

    def work() -> dict[str, Any]:
        version = client.materialize.most_recent_version()
        path = Path(dest) / "synapses.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = None
        rows = 0
        # 4 partitions in flight: the flow's task runner has 4 threads, so both sides overlap
        # the same number of requests and only Prefect's own cost differs.
        for part in client.materialize.iter_query_table_partitions(
            "synapses", materialization_version=version, merge_reference=False, max_workers=4
        ):
            part = part.replace_schema_metadata(None)
            if writer is None:
                writer = pq.ParquetWriter(str(path), part.schema, compression="zstd")
            writer.write_table(part)
            rows += part.num_rows
            del part
        assert writer is not None
        writer.close()
        digest = hashlib.sha256()
        with path.open("rb") as src:
            while block := src.read(4 << 20):
                digest.update(block)
        return {"rows": rows, "files": 1, "bytes": path.stat().st_size}

    return _measured(work)


def _run_child(mode: str, env: dict[str, str], dest: str, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--dest", dest, *extra]
    out = subprocess.run(
        command,
        env={**os.environ, **env, "NEURODATA_BENCH_ENV": json.dumps(env)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _seeded_rows(env: dict[str, str]) -> int:
    url = env["NEURODATA_CAVE_LOCAL_URL"]
    request = urllib.request.Request(
        f"{url}/annotation/api/v2/aligned_volume/{_aligned_volume(env)}/table/synapses/count",
        headers={"Authorization": f"Bearer {env['NEURODATA_CAVE_TOKEN']}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(json.loads(response.read()))
    except OSError:
        return 0


def _aligned_volume(env: dict[str, str]) -> str:
    with urllib.request.urlopen(f"{env['NEURODATA_CAVE_GLOBAL_URL']}/__sandbox__/world") as r:
        return json.loads(r.read())["aligned_volume"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docs)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synapses", type=int, default=1_000_000)
    parser.add_argument("--rows-per-part", type=int, default=100_000)
    parser.add_argument("--workdir", default=None, help="sandbox workdir (default: temporary)")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running")
    parser.add_argument(
        "--reps", type=int, default=1, help="repetitions, loop and flow alternately (median shown)"
    )
    parser.add_argument("--child", choices=["flow", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        env = json.loads(os.environ["NEURODATA_BENCH_ENV"])
        if args.child == "flow":
            result = child_flow(env, args.dest, args.rows_per_part)
        else:
            result = child_loop(env, args.dest)
        print(json.dumps(result))
        return 0

    from prefect_neurodata.sandbox.launcher import Sandbox
    from prefect_neurodata.sandbox.seed import seed_cave
    from tests.fixtures.prefect import run_prefect_server

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cave-"))
    sandbox = Sandbox(workdir, services=("cave",), detach=args.keep, start_timeout=180)
    rows = sandbox.status()
    started = not (rows and all(r["healthy"] for r in rows))
    if started:
        sandbox.up()
    env = sandbox.env
    try:
        if _seeded_rows(env) != args.synapses:
            t0 = time.perf_counter()
            seed_cave(
                env["NEURODATA_CAVE_GLOBAL_URL"],
                synapses=args.synapses,
                seed=1,
                admin_token=env["NEURODATA_CAVE_ADMIN_TOKEN"],
            )
            print(f"seeded {args.synapses:,} synapses in {time.perf_counter() - t0:.0f} s")
        with run_prefect_server(workdir / "prefect-home") as api_url:
            runs: dict[str, list[dict[str, Any]]] = {"loop": [], "flow": []}
            for _ in range(max(1, args.reps)):
                for mode in runs:
                    dest = tempfile.mkdtemp(prefix=f"snap-{mode}-", dir=workdir)
                    runs[mode].append(
                        _run_child(
                            mode,
                            {**env, "PREFECT_API_URL": api_url},
                            dest,
                            ["--rows-per-part", str(args.rows_per_part)],
                        )
                    )
                    shutil.rmtree(dest, ignore_errors=True)
    finally:
        if started and not args.keep:
            sandbox.down()

    load = os.getloadavg()
    print(f"\nsnapshot of the synapse table ({args.synapses:,} rows), {os.cpu_count()} cores, "
          f"{args.reps} rep(s), load average now "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")  # fmt: skip
    print(f"{'':6} {'rows':>10} {'seconds':>8} {'spread':>11} {'rows/s':>9} {'peak RSS MB':>12} "
          f"{'baseline MB':>12} {'files':>6} {'MB on disk':>10}")  # fmt: skip
    median: dict[str, dict[str, Any]] = {}
    for mode, reps in runs.items():
        reps = sorted(reps, key=lambda r: r["seconds"])
        r = median[mode] = reps[len(reps) // 2]
        spread = f"{reps[0]['seconds']:.1f}-{reps[-1]['seconds']:.1f}"
        print(
            f"{mode:6} {r['rows']:>10,} {r['seconds']:>8.1f} {spread:>11} "
            f"{r['rows'] / r['seconds']:>9,.0f} {r['peak_mb']:>12.0f} {r['baseline_mb']:>12.0f} "
            f"{r['files']:>6} {r['bytes'] / 1e6:>10.1f}  (CPU {r['cpu_seconds']:.1f} s, "
            f"work {r['work_mb']:.0f} MB"
            + (
                f", set-up {r['setup_seconds']:.2f} s before the first partition)"
                if "setup_seconds" in r
                else ")"
            )
        )
    overhead = median["flow"]["seconds"] / median["loop"]["seconds"]
    print(f"\nflow / plain loop time (medians): {overhead:.2f}x (flow: {args.rows_per_part:,}-row "
          "partition tasks on 4 threads; loop: one stream, no Prefect)")  # fmt: skip
    for mode, reps in runs.items():
        assert all(r["rows"] == args.synapses for r in reps), (mode, reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
