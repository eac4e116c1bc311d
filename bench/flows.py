"""Prefect overhead: the snapshot flow against a plain loop over our clients, alternately.

Uses the two children of ``bench/flows_cave.py`` (written with the flow):

* ``loop``: our CAVE client only, every id-range partition of the synapse table streamed into
  one Parquet file, then its sha256;
* ``flow``: `snapshot_materialization` of the same table through a real Prefect server (started
  here on 127.0.0.1, heartbeats off).

Each measurement is a fresh process (peak RSS is its own ``ru_maxrss``); the pair runs
``--reps`` times alternately, loop first.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def _result(mode: str, fn: Any) -> dict[str, Any]:
    try:
        raw = fn()
    except Exception as exc:  # noqa: BLE001 - reported as a failed measurement
        return {"ok": False, "side": mode, "error": f"{type(exc).__name__}: {str(exc)[-500:]}"}
    return {
        "ok": True,
        "side": mode,
        "seconds": raw["seconds"],
        "rows": raw["rows"],
        "peak_rss_mb": raw["peak_mb"],
        "base_rss_mb": raw.get("baseline_mb", 0.0),
        "work_rss_mb": max(0.0, raw["peak_mb"] - raw.get("baseline_mb", 0.0)),
        "extra": {"files": raw.get("files"), "bytes": raw.get("bytes")},
    }


def run(args: argparse.Namespace, sizes: Any, workdir: Path, env: dict[str, str]) -> list[Any]:
    """Measure ``flows.snapshot`` and return its cell (see `bench.harness.Cell`)."""
    from bench import flows_cave
    from bench.harness import Cell, log
    from tests.fixtures.prefect import run_prefect_server

    cell = Cell("flows.snapshot", 1, 0, runs={"loop": [], "flow": []})
    rows_per_part = max(10_000, sizes.synapses // 10)
    with run_prefect_server(workdir / "prefect-home") as api_url:
        for rep in range(args.reps):
            for mode in ("loop", "flow"):
                dest = tempfile.mkdtemp(prefix=f"snap-{mode}-", dir=workdir)
                try:
                    result = _result(
                        mode,
                        lambda mode=mode, dest=dest: flows_cave._run_child(
                            mode,
                            {**env, "PREFECT_API_URL": api_url},
                            dest,
                            ["--rows-per-part", str(rows_per_part)],
                        ),
                    )
                finally:
                    shutil.rmtree(dest, ignore_errors=True)
                cell.runs[mode].append(result)
                ok = result.get("ok")
                log(
                    f"flows.snapshot rep {rep + 1}: {mode} "
                    + (
                        f"{result['seconds']:.2f} s, {result['rows']:,} rows, "
                        f"peak {result['peak_rss_mb']:.0f} MB"
                        if ok
                        else f"ERROR {result['error']}"
                    )
                )
                time.sleep(0.5)
    return [cell]
