"""Benchmark: the materialization snapshot flow on a 1,000,000-row table, vs a plain loop.

Starts (or reuses) a CAVE stand-in seeded with ``--synapses`` synapses and a Prefect server on
127.0.0.1, then measures, each in a fresh subprocess so peak memory is its own:

* ``flow``: `snapshot_materialization` of the synapse table through the Prefect API (id-range
  partition tasks on a 4-thread pool, each streaming into a Parquet writer); its set-up time
  (flow-run start to the first partition task's start, read back from the Prefect API) is
  shown too;
* ``loop``: the same work with our clients and no Prefect: one
  ``iter_query_table_partitions`` stream into one ParquetWriter, then sha256 of the file.

Each child makes ``--calls`` calls of its work, each to a new destination and measured on its
own: the **first call** pays what a fresh process pays once (Prefect's engine and API client
start, lazily imported modules such as FastAPI's encoder, the first CAVE client, the claim's
limit), the later ones show the **steady state** of a long-lived process (a worker serving
runs, a notebook). Both are reported, each with its spread over ``--reps`` children.

Prints rows/s, wall time, CPU time (the child's, and as "API CPU s" the Prefect server's during
the call: work the flow adds on these shared cores that a remote server would do elsewhere),
the child's own peak memory above its post-import baseline (``VmHWM`` reset before each call;
``ru_maxrss`` would report the peak of the parent forked before ``exec``), and the Prefect
overhead (flow time / loop time) for the first call and for the steady state, with the load
average (2 shared cores make single runs noisy).

The Prefect server keeps its database in PostgreSQL (the sandbox's), as a server that takes
overlapping runs should: on SQLite (``--prefect-database sqlite``, Prefect's default) a task's
tag-concurrency call often meets "database is locked" while the server is still writing the
previous run's task runs and events; the server answers 503 and Prefect's client waits about
2 s before it retries, which shows up as a bimodal set-up time that is the database's, not
the flow's.

Example:
    ```bash
    .venv/bin/python bench/flows_cave.py                      # 1,000,000 synapses
    .venv/bin/python bench/flows_cave.py --workdir /tmp/b --keep   # keep the sandbox for reruns
    .venv/bin/python bench/flows_cave.py --synapses 4000000 --reps 3 --calls 4
    ```
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _measured(work: Any) -> dict[str, Any]:
    """Run ``work()`` -> dict, adding wall and CPU seconds and this process's own peak memory."""
    from bench._driver_common import PeakMemory, cpu_seconds

    server = _prefect_server()
    memory = PeakMemory()
    memory.start()
    cpu = cpu_seconds()
    server_cpu = _cpu_of(server)
    t0 = time.perf_counter()
    result = work()
    result["seconds"] = time.perf_counter() - t0
    result["cpu_seconds"] = cpu_seconds() - cpu
    result["server_cpu_seconds"] = _cpu_of(server) - server_cpu
    mem = memory.result()
    result.update(
        baseline_mb=mem["base_rss_mb"], peak_mb=mem["peak_rss_mb"], work_mb=mem["work_rss_mb"]
    )
    return result


def _prefect_server() -> Any:
    """The Prefect server process the bench started (its pid is in the environment), or None."""
    import psutil

    pid = os.environ.get("NEURODATA_BENCH_PREFECT_PID")
    return psutil.Process(int(pid)) if pid else None


def _cpu_of(process: Any) -> float:
    """User + system CPU seconds of ``process`` and its children (0 for None)."""
    if process is None:
        return 0.0
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def _listener_pid(api_url: str) -> int | None:
    """The pid of the process listening on the port of ``api_url`` (the Prefect server)."""
    import psutil

    port = int(api_url.rsplit(":", 1)[1].split("/", 1)[0])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    return None


@contextlib.contextmanager
def prefect_server(home: Path, postgres_url: str | None = None) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 for the bench; yields its API URL.

    With ``postgres_url`` (the sandbox's PostgreSQL) its database is a fresh ``prefect_bench``
    database there, else SQLite under ``home`` (see the module docs for why it matters).
    """
    from tests.fixtures.prefect import run_prefect_server, run_prefect_server_on_postgres

    if postgres_url is None:
        with run_prefect_server(home) as api_url:
            yield api_url
        return
    with run_prefect_server_on_postgres(home, postgres_url, "prefect_bench") as (api_url, _):
        yield api_url


def _calls(work: Any, dest: str, calls: int) -> list[dict[str, Any]]:
    """``work(dest_i)`` ``calls`` times in this process, each to its own directory, measured."""
    results = []
    for index in range(max(1, calls)):
        target = Path(dest) / f"call-{index}"
        results.append(_measured(lambda target=target: work(str(target))))
        shutil.rmtree(target, ignore_errors=True)  # untimed: disk stays bounded at 10M rows
    return results


def child_flow(
    env: dict[str, str], dest: str, rows_per_part: int | None, calls: int = 1
) -> list[dict[str, Any]]:
    """Run the snapshot flow ``calls`` times (in this child process) and report each call."""
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

    size = {} if rows_per_part is None else {"rows_per_part": rows_per_part}

    def work(target: str) -> dict[str, Any]:
        request = SnapshotRequest.model_validate(
            {"destination": target, "tables": ["synapses"], **size}
        )
        state = snapshot_materialization(
            request,
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
        results = _calls(work, dest, calls)
    for result in results:
        result["setup_seconds"] = _setup_seconds(result.pop("flow_run_id"))
    return results


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


def child_loop(env: dict[str, str], dest: str, calls: int = 1) -> list[dict[str, Any]]:
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

    def work(target: str) -> dict[str, Any]:
        version = client.materialize.most_recent_version()
        path = Path(target) / "synapses.parquet"
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

    return _calls(work, dest, calls)


def _run_child(mode: str, env: dict[str, str], dest: str, extra: list[str]) -> dict[str, Any]:
    """One child process of ``mode``: its first call, with the later calls (if any) under
    ``"later"`` (``extra`` may hold ``--calls N`` and ``--rows-per-part N``)."""
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
    first, *later = json.loads(out.stdout.strip().splitlines()[-1])
    return {**first, "later": later}


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
    parser.add_argument(
        "--rows-per-part", type=int, default=None, help="flow partition size (default: the flow's)"
    )
    parser.add_argument("--workdir", default=None, help="sandbox workdir (default: temporary)")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running")
    parser.add_argument(
        "--reps", type=int, default=1, help="repetitions, loop and flow alternately (median shown)"
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=None,
        help="calls per child process: the first, then the steady state (default 3; a child "
        "started without it, e.g. by bench/flows.py, makes 1)",
    )
    parser.add_argument(
        "--prefect-database",
        choices=["postgres", "sqlite"],
        default="postgres",
        help="the Prefect server's database (default postgres, see the module docs)",
    )
    parser.add_argument("--child", choices=["flow", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        args.calls = args.calls or 1
        env = json.loads(os.environ["NEURODATA_BENCH_ENV"])
        if args.child == "flow":
            results = child_flow(env, args.dest, args.rows_per_part, args.calls)
        else:
            results = child_loop(env, args.dest, args.calls)
        print(json.dumps(results))
        return 0

    from prefect_neurodata.sandbox.launcher import Sandbox
    from prefect_neurodata.sandbox.seed import seed_cave

    args.calls = args.calls or 3
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cave-"))
    on_postgres = args.prefect_database == "postgres"
    services = ("cave", "postgres") if on_postgres else ("cave",)
    sandbox = Sandbox(workdir, services=services, detach=args.keep, start_timeout=180)
    rows = sandbox.status()
    started = not (rows and all(r["healthy"] for r in rows))
    if started:
        sandbox.up()
    env = sandbox.env
    if on_postgres and "NEURODATA_POSTGRES_URL" not in env:
        parser.error(
            f"the sandbox kept in {workdir} runs without PostgreSQL: use another --workdir "
            "or --prefect-database sqlite"
        )
    extra = ["--calls", str(args.calls)]
    if args.rows_per_part is not None:
        extra += ["--rows-per-part", str(args.rows_per_part)]
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
        postgres_url = env["NEURODATA_POSTGRES_URL"] if on_postgres else None
        with prefect_server(workdir / "prefect-home", postgres_url) as api_url:
            runs: dict[str, list[dict[str, Any]]] = {"loop": [], "flow": []}
            server_pid = _listener_pid(api_url)
            for rep in range(max(1, args.reps)):
                for mode in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
                    dest = tempfile.mkdtemp(prefix=f"snap-{mode}-", dir=workdir)
                    env_api = {**env, "PREFECT_API_URL": api_url}
                    if server_pid is not None:  # the server shares these cores: show its share
                        env_api["NEURODATA_BENCH_PREFECT_PID"] = str(server_pid)
                    runs[mode].append(_run_child(mode, env_api, dest, extra))
                    shutil.rmtree(dest, ignore_errors=True)
    finally:
        if started and not args.keep:
            sandbox.down()
    report(runs, args)
    for mode, reps in runs.items():
        for r in reps:
            assert all(c["rows"] == args.synapses for c in [r, *r["later"]]), (mode, r)
    return 0


def _median(results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The median call of ``results`` (by wall time) and the spread ``min-max``."""
    ordered = sorted(results, key=lambda r: r["seconds"])
    spread = f"{ordered[0]['seconds']:.2f}-{ordered[-1]['seconds']:.2f}"
    return ordered[len(ordered) // 2], spread


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    """Print the first-call and steady-state rows of both sides, and the two overheads."""
    load = os.getloadavg()
    parts = f"{args.rows_per_part:,}-row" if args.rows_per_part else "default-size"
    print(f"\nsnapshot of the synapse table ({args.synapses:,} rows), {os.cpu_count()} cores, "
          f"Prefect server on {getattr(args, 'prefect_database', 'sqlite')}, "
          f"{args.reps} rep(s) x {args.calls} call(s), load average now "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")  # fmt: skip
    print(f"{'':13} {'calls':>5} {'seconds':>8} {'spread':>11} {'rows/s':>9} {'CPU s':>6} "
          f"{'API CPU s':>9} {'peak RSS MB':>12} {'work MB':>8} {'files':>6} "
          f"{'MB on disk':>10}")  # fmt: skip
    medians: dict[tuple[str, str], float] = {}
    for mode, reps in runs.items():
        phases = {
            "first": list(reps),
            "steady": [c for r in reps for c in r["later"]],
        }
        for phase, results in phases.items():
            if not results:
                continue
            r, spread = _median(results)
            medians[(mode, phase)] = r["seconds"]
            setup = r.get("setup_seconds")
            print(
                f"{mode + ' ' + phase:13} {len(results):>5} {r['seconds']:>8.2f} {spread:>11} "
                f"{r['rows'] / r['seconds']:>9,.0f} {r['cpu_seconds']:>6.2f} "
                f"{r.get('server_cpu_seconds', 0.0):>9.2f} {r['peak_mb']:>12.0f} "
                f"{r['work_mb']:>8.0f} {r['files']:>6} "
                f"{r['bytes'] / 1e6:>10.1f}"
                + (f"  (set-up {setup:.2f} s before the first partition)" if setup else "")
            )
    print(f"\nflow / plain loop time (medians; flow: {parts} partition tasks on 4 threads, "
          "loop: one stream, no Prefect):")  # fmt: skip
    for phase in ("first", "steady"):
        if (f := medians.get(("flow", phase))) and (loop := medians.get(("loop", phase))):
            print(f"  {phase:6} call{'s' if phase == 'steady' else ''}: {f / loop:.2f}x "
                  f"({(f / loop - 1) * 100:+.0f} %)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
