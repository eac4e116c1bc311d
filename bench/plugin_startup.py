"""What the sandbox pytest plugin costs a user's suite: start time and per-test overhead.

Usage::

    .venv/bin/python bench/plugin_startup.py            # 20 tests per suite, 3 repetitions
    .venv/bin/python bench/plugin_startup.py --tests 50 --reps 5

For each scenario a small user suite is written to a temporary directory and run with pytest in
a fresh process (the plugin loads from its ``pytest11`` entry point, as in a user's project):

* ``no fixtures``: N trivial tests, plugin on, against the same suite with ``-p no:neurodata``:
  what the plugin costs a suite that never asks for the sandbox.
* ``cave``: N tests taking ``neurodata_cave_client`` (the CAVE part only is started).
* ``aind``: N tests taking ``neurodata_docdb_client`` (SecantusDB, moto, DocDB stand-in).
* ``cave+aind``: N tests taking both clients (both parts start in parallel).

Reported per scenario (median over the repetitions): the part start times the handle measured
(start + seed, ``NeurodataSandbox.start_seconds``), the first test's set-up (the session's
start as a user sees it), and the median set-up + teardown of the other tests (the per-test
overhead: building the client, resetting faults), from pytest's own phase durations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RECORDER = textwrap.dedent(
    """
    import json, os
    import pytest

    PHASES = []

    def pytest_runtest_logreport(report):
        PHASES.append([report.nodeid, report.when, report.duration, report.outcome])

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(session):
        out = {"phases": PHASES, "start_seconds": {}}
        handle = getattr(session.config, "_neurodata_handle", None)
        if handle is not None:
            out["start_seconds"] = handle.start_seconds
        with open(os.environ["BENCH_PLUGIN_OUT"], "w") as fh:
            json.dump(out, fh)
    """
)

SUITES = {
    "no fixtures": "def test_{i}():\n    assert {i} >= 0\n",
    "cave": (
        "def test_{i}(neurodata_cave_client, neurodata_sandbox, request):\n"
        "    request.config._neurodata_handle = neurodata_sandbox\n"
        "    assert neurodata_cave_client.datastack_name\n"
    ),
    "aind": (
        "def test_{i}(neurodata_docdb_client, neurodata_sandbox, request):\n"
        "    request.config._neurodata_handle = neurodata_sandbox\n"
        "    assert neurodata_docdb_client.host\n"
    ),
    "cave+aind": (
        "def test_{i}(neurodata_cave_client, neurodata_docdb_client, neurodata_sandbox, request):\n"
        "    request.config._neurodata_handle = neurodata_sandbox\n"
        "    assert neurodata_cave_client.datastack_name and neurodata_docdb_client.host\n"
    ),
}


def run_suite(body: str, n_tests: int, extra: list[str]) -> dict:
    """Run one generated suite in a fresh pytest process; returns phases, timings, wall time."""
    with tempfile.TemporaryDirectory(prefix="nd-plugin-bench-") as tmp:
        root = Path(tmp)
        (root / "conftest.py").write_text(RECORDER)
        (root / "test_suite.py").write_text("\n\n".join(body.format(i=i) for i in range(n_tests)))
        out = root / "out.json"
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, str(root)],
            cwd=root,
            env={**_env(), "BENCH_PLUGIN_OUT": str(out)},
            capture_output=True,
            text=True,
            timeout=900,
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"suite failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        data = json.loads(out.read_text())
    data["wall"] = wall
    return data


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def summarize(data: dict) -> dict[str, float]:
    """First test's set-up, and the median set-up + teardown of the others (seconds)."""
    per_test: dict[str, dict[str, float]] = {}
    for nodeid, when, duration, _outcome in data["phases"]:
        per_test.setdefault(nodeid, {})[when] = duration
    tests = list(per_test.values())
    first_setup = tests[0].get("setup", 0.0)
    # The last test's teardown also stops the session's sandbox: not a per-test cost.
    rest = [t.get("setup", 0.0) + t.get("teardown", 0.0) for t in tests[1:-1]]
    return {
        "wall": data["wall"],
        "first_setup": first_setup,
        "per_test": statistics.median(rest) if rest else 0.0,
        "session_teardown": tests[-1].get("teardown", 0.0),
        **{f"start_{k}": v for k, v in data.get("start_seconds", {}).items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tests", type=int, default=20, help="tests per suite (default 20)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    args = parser.parse_args(argv)
    if args.tests < 3:
        parser.error(f"--tests must be >= 3, got {args.tests}")
    rows = []
    # Alternate plugin off / on so both see the same machine state (caches, load).
    off, on = [], []
    for _ in range(args.reps):
        off.append(run_suite(SUITES["no fixtures"], args.tests, ["-p", "no:neurodata"])["wall"])
        on.append(run_suite(SUITES["no fixtures"], args.tests, [])["wall"])
    for name, body in SUITES.items():
        runs = [summarize(run_suite(body, args.tests, [])) for _ in range(args.reps)]
        keys = sorted({k for r in runs for k in r})
        med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
        rows.append((name, med))
    print(f"tests per suite: {args.tests}; repetitions: {args.reps}; medians, seconds\n")
    print(
        f"{args.tests} plain tests, wall: plugin off (-p no:neurodata) "
        f"{statistics.median(off):.2f}, plugin on {statistics.median(on):.2f}"
    )
    print()
    print(
        "| suite | wall | part start (start+seed) | first test set-up | per-test set-up+teardown |"
    )
    print("|---|---|---|---|---|")
    for name, med in rows:
        starts = (
            ", ".join(f"{k[6:]} {v:.2f}" for k, v in med.items() if k.startswith("start_")) or "-"
        )
        print(
            f"| {name} | {med['wall']:.2f} | {starts} | {med['first_setup']:.2f} "
            f"| {med['per_test'] * 1000:.1f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
