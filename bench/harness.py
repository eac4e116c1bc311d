"""``python -m bench``: our clients against the official ones, side by side, on one sandbox.

What a run does:

1. Creates ``bench/.official-venv`` from ``bench/official-requirements.lock`` when missing or
   older than the lock (``aind-data-access-api`` 1.10.0, ``caveclient`` 5.25.0 and the
   numpy/pyarrow/pandas they import; ``pip install --no-deps -r``).
2. Starts a sandbox of its own (temporary workdir, free ports: SecantusDB, moto, the DocDB and
   CAVE stand-ins), checks the memory measurement (each side's driver holds 50 then 400 MB and
   must report it), and seeds: 15,000 v1 records and a 1,000,000-row synapse table at 1x.
   Both sides' DocDB reads run once untimed (the stand-in keeps its working set in memory,
   as DocumentDB does; the first read fills it).
3. For every workload and added latency (0, 30 and 150 ms before each answer, set with
   ``PUT /__sandbox__/faults``; 150 ms models the real services, requests served side by
   side), runs the two sides ALTERNATELY (ours, official, official, ours, ...), ``--reps``
   times each, every measurement in a fresh subprocess: ours with ``bench/ours_driver.py`` in
   this venv, theirs with ``bench/official_driver.py`` in the official venv. Each driver
   times only the workload call (client construction included, imports and input loading
   excluded) and reports wall seconds, its CPU seconds (user + sys, all threads) and its own
   peak memory above its post-import baseline (VmHWM reset after setup; see
   ``_driver_common.PeakMemory``).
4. ``--scales 1,2,4`` re-seeds at 2x and 4x and runs the DocDB and CAVE workloads again.
5. Flows: the snapshot scale curve, ``bench/flows.py``: for each ``--snapshot-rows`` size the
   snapshot flow against a plain loop over our clients, alternately, ``--reps`` times.
6. Prints the table (median [min-max] seconds) and the curve, and writes them to
   ``bench/results/bench-<time>.md`` and ``.json`` (also ``latest.md``/``latest.json``).

Targets (the PASS/MISS column): at 150 ms ours is at least 3x faster on docdb.retrieve_all and
cave.query_all (rows/s) and 2x on the rest; at 0 and 30 ms never slower; our CPU per row at
most half the official client's; memory (own peak above baseline) no higher; Prefect overhead
under 15 % of the plain loop at every size.

Duration (2 shared cores): the default run (1x, 9 workloads x 3 latencies x 3 reps x 2 sides,
curve at 1M/4M/10M rows) takes 1.5-3 h, most of it seeding and the 10M-row snapshots;
``--quick`` (1/10 sizes, 1 rep, curve at 250k rows) about 6 min. ``make bench`` passes
``BENCH_ARGS`` through, e.g. ``make bench BENCH_ARGS="--reps 2 --snapshot-rows 1000000"``
(about 40 min) or ``make bench BENCH_ARGS=--quick``.

Example:
    ```bash
    .venv/bin/python -m bench --quick                 # ~1/10 sizes, one repetition
    .venv/bin/python -m bench --workloads docdb.retrieve_all,cave --latency 0,150 --reps 3
    .venv/bin/python -m bench --workloads flows --snapshot-rows 1000000,4000000,10000000
    ```
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OFFICIAL_VENV = BENCH / ".official-venv"
OFFICIAL_LOCK = BENCH / "official-requirements.lock"
OFFICIAL_STAMP = OFFICIAL_VENV / ".installed-stamp"
SIDES = ("ours", "official")
DRIVERS = {"ours": BENCH / "ours_driver.py", "official": BENCH / "official_driver.py"}

DOCDB = (
    "docdb.retrieve_all",
    "docdb.retrieve_filtered",
    "docdb.upsert",
    "docdb.filter_list",
    "docdb.filter_list_full",
)
CAVE = ("cave.query_all", "cave.query_filtered", "cave.get_roots", "cave.post_annotations")
FLOWS = ("flows.snapshot",)
ALL_WORKLOADS = DOCDB + CAVE + FLOWS

FILTER = {"data_description.modality.abbreviation": "ecephys"}
PROJECTION = {"name": 1, "subject.subject_id": 1, "created": 1, "data_description.project_name": 1}
NAMES_PROJECTION = {"name": 1, "subject.subject_id": 1, "created": 1}


@dataclass(frozen=True)
class Sizes:
    """Data sizes at 1x (scaled by the scale factor)."""

    records: int = 15_000
    synapses: int = 1_000_000
    names: int = 5_000
    supervoxels: int = 100_000
    annotations: int = 100_000

    def times(self, k: int) -> Sizes:
        return Sizes(
            *(
                int(v * k)
                for v in (
                    self.records,
                    self.synapses,
                    self.names,
                    self.supervoxels,
                    self.annotations,
                )
            )
        )


FULL = Sizes()
QUICK = Sizes(records=1_500, synapses=250_000, names=500, supervoxels=10_000, annotations=10_000)


@dataclass
class Cell:
    """All measurements of one (workload, scale, latency)."""

    workload: str
    scale: int
    latency_ms: int
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {s: [] for s in SIDES})

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "scale": self.scale,
            "latency_ms": self.latency_ms,
            "runs": self.runs,
        }


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- official venv --------------------------------------------------------------------------


def official_python() -> Path:
    return OFFICIAL_VENV / "bin" / "python"


def compile_ours() -> None:
    """Byte-compile ``prefect_neurodata`` once, as pip compiled the official packages.

    Our package is installed in editable mode, so its bytecode is cached only when imported,
    and not at all under ``PYTHONDONTWRITEBYTECODE=1`` (set on these machines). Each fresh
    driver process then compiled every edited module again inside its timed window (~10 ms
    for ``document_db`` alone), while the official venv has had its ``.pyc`` files since
    ``pip install``.
    """
    import compileall

    compileall.compile_dir(REPO / "prefect_neurodata", quiet=1)


def ensure_official_venv() -> Path:
    """Create or refresh ``bench/.official-venv`` from the lock; return its interpreter."""
    python = official_python()
    fresh = (
        python.exists()
        and OFFICIAL_STAMP.exists()
        and OFFICIAL_STAMP.stat().st_mtime >= OFFICIAL_LOCK.stat().st_mtime
    )
    if fresh:
        return python
    base = getattr(sys, "_base_executable", None) or sys.executable
    log(f"creating {OFFICIAL_VENV.relative_to(REPO)} from {OFFICIAL_LOCK.name} ...")
    subprocess.run([base, "-m", "venv", "--clear", str(OFFICIAL_VENV)], check=True)
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(OFFICIAL_LOCK)],
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0:
        # pip's per-index warnings are noise on success; on failure they may be the reason.
        sys.stderr.write(pip.stdout[-5000:] + pip.stderr[-5000:])
        raise SystemExit(f"pip install -r {OFFICIAL_LOCK} failed (exit {pip.returncode})")
    subprocess.run(
        [str(python), "-c", "import aind_data_access_api, caveclient, pandas, numpy, pyarrow"],
        check=True,
    )
    OFFICIAL_STAMP.touch()
    return python


# -- sandbox and data -----------------------------------------------------------------------


def start_sandbox(workdir: Path, mongo_limit_gb: float = 0.0, postgres: bool = False) -> Any:
    """Start the sandbox's stand-ins (and PostgreSQL, for the flows' Prefect server)."""
    from prefect_neurodata.sandbox.launcher import SERVICES, Sandbox

    services = (*SERVICES, "postgres") if postgres else SERVICES
    sandbox = Sandbox(workdir, services=services, start_timeout=300)
    log(f"starting the sandbox in {workdir} ...")
    sandbox.up()
    if mongo_limit_gb:
        limit_memory(sandbox, "mongo", mongo_limit_gb)
    return sandbox


def limit_memory(sandbox: Any, service: str, gigabytes: float) -> None:
    """Cap a sandbox process's address space (RLIMIT_AS).

    SecantusDB materialises every query's whole result in Python objects; a few concurrent
    full-collection queries over 15,000+ large records reached 11 GB RSS here and the kernel's
    OOM killer stepped in on a machine shared with others. Under the cap the daemon fails the
    query instead (the stand-in answers 502, the measurement is recorded as an error).
    """
    import resource

    proc = sandbox._processes().get(service)  # the launcher's own record of what it started
    if proc is None:
        return
    limit = int(gigabytes * 2**30)
    try:
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (limit, limit))
        log(f"{service} (pid {proc.pid}) address space capped at {gigabytes:g} GiB")
    except (OSError, ValueError) as exc:
        log(f"could not cap {service} memory: {exc}")


def seed(sandbox: Any, sizes: Sizes, data_dir: Path, docdb: bool, cave: bool) -> dict[str, Any]:
    """Seed the sandbox at ``sizes`` and write the drivers' input files into ``data_dir``."""
    from prefect_neurodata.sandbox.seed import seed_sandbox

    t0 = time.perf_counter()
    log(
        f"seeding {sizes.records if docdb else 0:,} records (v1), "
        f"{sizes.synapses if cave else 0:,} synapses ..."
    )
    report_ = seed_sandbox(
        sandbox.env,
        records=sizes.records if docdb else 0,
        synapses=sizes.synapses if cave else 0,
        v2_fraction=0.0,
        s3_assets=0,
        unregistered=0,
        cave=cave,
    )
    info: dict[str, Any] = {"seed_seconds": round(time.perf_counter() - t0, 1)}
    data_dir.mkdir(parents=True, exist_ok=True)
    if docdb:
        info.update(prepare_docdb(sandbox.env, sizes, data_dir))
    if cave:
        info.update(prepare_cave(sandbox.env, sizes, data_dir))
    info["record_bytes_median"] = report_.record_bytes_median
    log(f"seeded and prepared in {time.perf_counter() - t0:.0f} s")
    return info


def prepare_docdb(env: dict[str, str], sizes: Sizes, data_dir: Path) -> dict[str, Any]:
    """Every record (the upsert input) and an evenly spread sample of names, as JSON files."""
    import orjson
    import pymongo

    client = pymongo.MongoClient(env["NEURODATA_MONGO_URI"], directConnection=True)
    try:
        records = list(client["metadata_index"]["data_assets"].find({}))
    finally:
        client.close()
    records.sort(key=lambda r: str(r["_id"]))
    for record in records:
        # `last_modified` is stamped by the server on every write: leave it to the server.
        record.pop("last_modified", None)
    names = [r["name"] for r in records]
    step = max(1, len(names) // max(1, sizes.names))
    sample = names[::step][: sizes.names]
    (data_dir / "upsert_records.json").write_bytes(orjson.dumps(records))
    (data_dir / "names.json").write_bytes(orjson.dumps(sample))
    return {"records": len(records), "names": len(sample)}


def prepare_cave(env: dict[str, str], sizes: Sizes, data_dir: Path) -> dict[str, Any]:
    """Root ids for the filtered query and supervoxel ids for ``get_roots``."""
    import numpy as np

    from prefect_neurodata.clients.cave import CAVEclient

    client = CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
    )
    want = sizes.supervoxels
    df = client.materialize.query_table("synapses", limit=min(200_000, max(want, 10_000)))
    svids = np.concatenate(
        [
            df["pre_pt_supervoxel_id"].to_numpy("int64"),
            df["post_pt_supervoxel_id"].to_numpy("int64"),
        ]
    )
    svids = np.resize(svids, want).astype(np.uint64)  # synapse supervoxels, repeats included
    np.save(data_dir / "supervoxels.npy", svids)
    counts = collections.Counter(df["pre_pt_root_id"].to_numpy("int64").tolist())
    # Five mid-sized presynaptic roots: a few percent of the table, under the server limit.
    ranked = [root for root, _ in counts.most_common()]
    middle = len(ranked) // 3
    roots = ranked[middle : middle + 5]
    (data_dir / "cave.json").write_text(json.dumps({"roots": roots}))
    return {"supervoxels": int(len(svids)), "roots": roots}


def drop_collection(env: dict[str, str], name: str) -> None:
    import pymongo

    client = pymongo.MongoClient(env["NEURODATA_MONGO_URI"], directConnection=True)
    try:
        client["metadata_index"].drop_collection(name)
    finally:
        client.close()


def set_latency(sandbox: Any, latency_ms: int, services: Iterable[str]) -> None:
    for service in services:
        if latency_ms:
            sandbox.faults(service, latency_ms=latency_ms)
        else:
            sandbox.faults(service)


# -- one measurement ------------------------------------------------------------------------


def run_driver(
    side: str, spec: dict[str, Any], work: Path, timeout: float, python: dict[str, Path]
) -> dict[str, Any]:
    """Run one measurement in a fresh process and return its result dict."""
    spec_path = work / f"spec-{side}.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [str(python[side]), str(DRIVERS[side]), str(spec_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONUNBUFFERED"] = "1"
    if side == "ours":
        # The checkout this bench runs from, not whichever one the venv installed editable:
        # a worktree measures its own clients.
        env["PYTHONPATH"] = str(REPO)
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=str(work),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"ok": False, "error": f"timeout after {timeout:.0f} s", "side": side}
    wall = time.perf_counter() - started
    for line in reversed(out.splitlines()):
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line[len("BENCH_RESULT ") :])
            result["process_seconds"] = round(wall, 2)
            if not result.get("ok"):
                (work / f"error-{side}.log").write_text(result.get("trace", "") + "\n" + err)
            return result
    (work / f"error-{side}.log").write_text(out + "\n" + err)
    tail = (err.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "error": f"exit {proc.returncode}: {tail[:300]}", "side": side}


def spec_for(
    workload: str, env: dict[str, str], data_dir: Path, sizes: Sizes, tag: str
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if workload == "docdb.retrieve_filtered":
        params = {"filter": FILTER, "projection": PROJECTION}
    elif workload == "docdb.upsert":
        params = {"records_file": "upsert_records.json", "collection": f"bench_upsert_{tag}"}
    elif workload == "docdb.filter_list":
        params = {"names_file": "names.json", "projection": NAMES_PROJECTION}
    elif workload == "docdb.filter_list_full":
        # Whole records: one aggregation of them is far over the gateway's response limit.
        params = {"names_file": "names.json", "projection": None}
    elif workload == "cave.query_all":
        params = {"table": "synapses"}
    elif workload == "cave.query_filtered":
        roots = json.loads((data_dir / "cave.json").read_text())["roots"]
        params = {"table": "synapses", "filter_in_dict": {"pre_pt_root_id": roots}}
    elif workload == "cave.get_roots":
        params = {"supervoxels_file": "supervoxels.npy"}
    elif workload == "cave.post_annotations":
        params = {
            "table": f"bench_{tag}",
            "rows": sizes.annotations,
            "seed": 7,
            "chunk": 10_000,
        }
    return {"workload": workload, "env": env, "data_dir": str(data_dir), "params": params}


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Our clients vs the official ones, side by side."
    )
    parser.add_argument("--quick", action="store_true", help="1/10 sizes, 1 repetition, 1x only")
    parser.add_argument(
        "--workloads",
        default="all",
        help="comma-separated workloads or groups (docdb, cave, flows); default all. "
        f"Workloads: {', '.join(ALL_WORKLOADS)}",
    )
    parser.add_argument("--scales", default=None, help="data sizes, e.g. 1,2,4 (default 1)")
    parser.add_argument(
        "--snapshot-rows",
        default=None,
        help="synapse counts of the snapshot scale curve (flows.snapshot), default "
        "1000000,4000000,10000000 (--quick: 250000)",
    )
    parser.add_argument(
        "--latency",
        default="0,30,150",
        help="added ms before each response, e.g. 0,30,150 (150: like the real services)",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions per side (3; quick 1)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--workdir", default=None, help="sandbox and scratch directory")
    parser.add_argument("--out", default=str(BENCH / "results"), help="results directory")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running")
    parser.add_argument(
        "--mongo-limit-gb",
        type=float,
        default=8.0,
        help="address-space cap of the sandbox's SecantusDB daemon (0: none); default 8",
    )
    if argv is None:
        argv = shlex.split(os.environ.get("BENCH_ARGS", "")) + sys.argv[1:]
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.scales = [int(s) for s in (args.scales or "1").split(",")]
    default_curve = "250000" if args.quick else "1000000,4000000,10000000"
    args.snapshot_rows = [int(float(s)) for s in (args.snapshot_rows or default_curve).split(",")]
    args.latencies = [int(s) for s in args.latency.split(",")]
    args.timeout = args.timeout or (300.0 if args.quick else 900.0)
    chosen: list[str] = []
    for item in args.workloads.split(","):
        item = item.strip()
        if item == "all":
            chosen.extend(ALL_WORKLOADS)
        elif item in ("docdb", "cave", "flows"):
            chosen.extend(w for w in ALL_WORKLOADS if w.startswith(item + "."))
        elif item in ALL_WORKLOADS:
            chosen.append(item)
        else:
            parser.error(f"--workloads: unknown workload {item!r}; choose from {ALL_WORKLOADS}")
    args.chosen = list(dict.fromkeys(chosen))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    sizes1 = QUICK if args.quick else FULL
    python = {"ours": Path(sys.executable), "official": ensure_official_venv()}
    compile_ours()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="neurodata-bench-")).absolute()
    work = workdir / "scratch"
    work.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: v for k, v in vars(args).items() if k not in ("chosen",)},
        "workloads": args.chosen,
        "sizes_1x": sizes1.__dict__,
        "scales": {},
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    bench_client = [w for w in args.chosen if not w.startswith("flows.")]
    need_flows = any(w.startswith("flows.") for w in args.chosen)
    sandbox = start_sandbox(workdir / "sandbox", args.mongo_limit_gb, postgres=need_flows)
    try:
        meta["memory_probe"] = calibrate_memory(work, args.timeout, python)
        for scale in args.scales if bench_client else []:
            sizes = sizes1.times(scale)
            data_dir = workdir / f"data-{scale}x"
            need_docdb = any(w.startswith("docdb.") for w in bench_client)
            need_cave = any(w.startswith("cave.") for w in bench_client)
            meta["scales"][scale] = {
                "sizes": sizes.__dict__,
                **seed(sandbox, sizes, data_dir, need_docdb, need_cave),
            }
            env = sandbox.env
            if need_docdb:
                warm_docdb(env, data_dir, sizes, work, args.timeout, python)
            for workload in bench_client:
                service = workload.split(".")[0]
                for latency in args.latencies:
                    set_latency(sandbox, latency, [service])
                    cell = Cell(workload, scale, latency)
                    cells.append(cell)
                    for rep in range(args.reps):
                        # ABBA order (ours, official, official, ours, ...): alternating, and
                        # neither side is always the first one after a latency change or seed.
                        for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                            tag = f"{side}_{scale}x_{latency}ms_{rep}_{int(time.time())}"
                            spec = spec_for(workload, env, data_dir, sizes, tag)
                            result = run_driver(side, spec, work, args.timeout, python)
                            cell.runs[side].append(result)
                            log(
                                f"{workload} {scale}x {latency} ms rep {rep + 1}: "
                                f"{report.short(result)}"
                            )
                            if workload == "docdb.upsert":
                                drop_collection(env, spec["params"]["collection"])
                    set_latency(sandbox, 0, [service])
                    write_partial(args, cells, meta)
        if FLOWS[0] in args.chosen:
            cells.extend(run_flows(args, workdir, sandbox.env, cells, meta))
    finally:
        if args.keep:
            log(f"sandbox left running in {workdir / 'sandbox'}")
        else:
            sandbox.down()
    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()
    rows = report.summarize([c.as_dict() for c in cells])
    text = report.render_text(rows, meta)
    print(text, flush=True)
    paths = report.write(Path(args.out), rows, meta, [c.as_dict() for c in cells])
    log(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def write_partial(args: argparse.Namespace, cells: list[Cell], meta: dict[str, Any]) -> None:
    """The table so far, as ``partial.md``/``partial.json`` in ``--out`` (a long run that is
    stopped still leaves its finished rows)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = [c.as_dict() for c in cells]
    rows = report.summarize(data)
    (out / "partial.md").write_text(report.render_markdown(rows, meta))
    (out / "partial.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "cells": data}, indent=2, default=str)
    )


def run_flows(
    args: argparse.Namespace,
    workdir: Path,
    env: dict[str, str],
    done: list[Cell],
    meta: dict[str, Any],
) -> list[Cell]:
    """Prefect overhead of the snapshot flow vs a plain loop, at every ``--snapshot-rows``."""
    from bench import flows

    return flows.run(args, workdir, env, done, meta)


def calibrate_memory(
    work: Path, timeout: float, python: dict[str, Path]
) -> dict[str, dict[str, float]]:
    """Each side's driver holds 50 MB, then 400 MB: the work figure must follow (+350 MB).

    Shows that the memory column measures the driver's own workload (not its imports, nor a
    parent's pages).
    """
    probe: dict[str, dict[str, float]] = {}
    for side in SIDES:
        for mb in (50, 400):
            spec = {
                "workload": "memory.probe",
                "env": {},
                "data_dir": str(work),
                "params": {"mb": mb},
            }
            result = run_driver(side, spec, work, timeout, python)
            got = round(result.get("work_rss_mb", -1.0), 1) if result.get("ok") else -1.0
            probe.setdefault(side, {})[f"{mb} MB"] = got
        log(f"memory probe {side}: held 50 MB -> {probe[side]['50 MB']} MB, "
            f"400 MB -> {probe[side]['400 MB']} MB")  # fmt: skip
    return probe


def warm_docdb(
    env: dict[str, str],
    data_dir: Path,
    sizes: Sizes,
    work: Path,
    timeout: float,
    python: dict[str, Path],
) -> None:
    """One untimed run of each read workload per side, so that neither side pays a cold start.

    A real DocumentDB serves this working set from memory and answers an indexed filter in
    milliseconds; the stand-in keeps the encoded records and the answers MongoDB computed (see
    ``sandbox/docdb/id_index.py``) until a write, and the first read of each kind fills them. Both
    sides warm their own requests (the official client's differ from ours).
    """
    for workload in ("docdb.retrieve_all", "docdb.retrieve_filtered"):
        for side in SIDES:
            t0 = time.perf_counter()
            spec = spec_for(workload, env, data_dir, sizes, "warm")
            result = run_driver(side, spec, work, timeout, python)
            log(f"warm-up {workload} in {time.perf_counter() - t0:.0f} s: {report.short(result)}")
