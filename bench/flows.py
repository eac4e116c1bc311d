"""Prefect overhead and the snapshot scale curve: the snapshot flow against a plain loop.

Uses the two children of ``bench/flows_cave.py`` (the same code that script runs directly, so
the harness and a direct run measure the same workload):

* ``loop``: our CAVE client only, every id-range partition of the synapse table streamed into
  one Parquet file (4 partitions in flight), then its sha256;
* ``flow``: `snapshot_materialization` of the same table through a real Prefect server (started
  here on 127.0.0.1 with its database in the sandbox's PostgreSQL, as `bench/flows_cave.py`
  explains; heartbeats off; 4 task threads).

For each synapse count of ``--snapshot-rows`` the CAVE stand-in is re-seeded, then the pair
runs ``--reps`` times alternately (loop first on odd repetitions, flow first on even ones), each
measurement in a fresh process reporting its wall and CPU time and its own peak memory above
its post-import baseline. One cell per size; the report gives medians and the spread. The
verdict is on the first call of each process (each flow run of a deployment is a new process);
the steady state (the later calls in the same process) is shown beside it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("loop", "flow")
STEADY_CALLS = 3
"""Calls per measured child process: the first is reported, the later ones as steady state."""


def _result(mode: str, fn: Any) -> dict[str, Any]:
    try:
        raw = fn()
    except Exception as exc:  # noqa: BLE001 - reported as a failed measurement
        return {"ok": False, "side": mode, "error": f"{type(exc).__name__}: {str(exc)[-500:]}"}
    return {
        "ok": True,
        "side": mode,
        "seconds": raw["seconds"],
        "cpu_seconds": raw.get("cpu_seconds"),
        "rows": raw["rows"],
        "peak_rss_mb": raw["peak_mb"],
        "base_rss_mb": raw.get("baseline_mb", 0.0),
        "work_rss_mb": raw.get("work_mb", 0.0),
        "extra": {
            "files": raw.get("files"),
            "bytes": raw.get("bytes"),
            "steady_seconds": [call["seconds"] for call in raw.get("later", [])],
        },
    }


def run(
    args: argparse.Namespace,
    workdir: Path,
    env: dict[str, str],
    done: list[Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> list[Any]:
    """Measure ``flows.snapshot`` at every size of ``args.snapshot_rows``; one cell per size."""
    from bench import flows_cave
    from bench.harness import Cell, log, write_partial
    from prefect_neurodata.sandbox.seed import seed_cave

    cells = []
    postgres_url = env.get("NEURODATA_POSTGRES_URL")
    with flows_cave.prefect_server(workdir / "prefect-home", postgres_url) as api_url:
        for synapses in args.snapshot_rows:
            t0 = time.perf_counter()
            seed_cave(
                env["NEURODATA_CAVE_GLOBAL_URL"],
                synapses=synapses,
                seed=1,
                admin_token=env["NEURODATA_CAVE_ADMIN_TOKEN"],
            )
            log(f"flows.snapshot: seeded {synapses:,} synapses in {time.perf_counter() - t0:.0f} s")
            cell = Cell("flows.snapshot", synapses, 0, runs={m: [] for m in MODES})
            cells.append(cell)
            # the flow's own partition size, as a user gets it and as bench/flows_cave.py runs
            # it (a forced synapses // 10 made 400,000-row parts that exceed the row limit);
            # each child makes STEADY_CALLS calls: the first as a deployment's flow-run process
            # pays it, the later ones as a long-lived process (notebook, script) does
            part: list[str] = ["--calls", str(STEADY_CALLS)]
            for rep in range(args.reps):
                for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                    dest = tempfile.mkdtemp(prefix=f"snap-{mode}-", dir=workdir)
                    try:
                        result = _result(
                            mode,
                            lambda mode=mode, dest=dest, part=part: flows_cave._run_child(
                                mode, {**env, "PREFECT_API_URL": api_url}, dest, part
                            ),
                        )
                    finally:
                        shutil.rmtree(dest, ignore_errors=True)
                    cell.runs[mode].append(result)
                    write_partial(args, [*(done or []), *cells], meta or {})
                    log(
                        f"flows.snapshot {synapses:,} rows rep {rep + 1}: {mode} "
                        + (
                            f"{result['seconds']:.2f} s, CPU {result['cpu_seconds']:.1f} s, "
                            f"{result['rows']:,} rows, work {result['work_rss_mb']:.0f} MB"
                            if result.get("ok")
                            else f"ERROR {result['error']}"
                        )
                    )
    return cells
