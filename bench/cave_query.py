"""Throughput of ``materialize.query_table`` on a big synapse table, in rows per second.

Starts the CAVE stand-in (or reuses a running sandbox), seeds a synapse table of ``--rows``
rows, adds ``--latency-ms`` of latency to every request (fault injection), then times:

* ``full``: ``query_table("synapses")`` returning every row (partitioned at the server's
  200,000-row limit, partitions fetched concurrently);
* ``capped``: one request of ``limit=200000`` rows, which is what the official caveclient gets
  from the same call (it stops at the server's limit);
* ``stream``: ``iter_query_table_partitions`` (Arrow only, no pandas);
* ``official``: the official ``caveclient`` on the same call, when it is importable (e.g. run
  this script with the interpreter of the official clients' venv).

Example:
    ```
    .venv/bin/python bench/cave_query.py --rows 1000000 --latency-ms 30
    .venv/bin/python bench/cave_query.py --env .sandbox/sandbox.env   # a running sandbox
    ```
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_neurodata.clients.cave import CAVEclient  # noqa: E402


def read_env(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
    return out


def open_sandbox(
    env_file: str | None, workdir: str | None, synapses: int
) -> tuple[dict[str, str], Any]:
    """``(env, sandbox)``: a running sandbox's env file (sandbox None), or a new CAVE-only
    sandbox seeded with ``synapses`` synapses (stop it with ``sandbox.down()``)."""
    if env_file:
        return read_env(env_file), None
    from prefect_neurodata.sandbox.launcher import Sandbox

    workdir = workdir or tempfile.mkdtemp(prefix="cave-bench-")
    sandbox = Sandbox(workdir, services=("cave",), start_timeout=180)
    sandbox.up()
    env = sandbox.env
    print(f"seeding {synapses:,} synapses ...", flush=True)
    requests.post(
        f"{env['NEURODATA_CAVE_LOCAL_URL']}/__sandbox__/seed",
        json={"synapses": synapses, "seed": 1},
        timeout=1800,
    ).raise_for_status()
    return env, sandbox


def sandbox_client(env: dict[str, str]) -> Any:
    """A fresh `CAVEclient` of the sandbox's datastack (no metadata cached between calls)."""
    return CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
    )


def timed(label: str, fn: Callable[[], Any], repeat: int) -> tuple[float, int]:
    seconds: list[float] = []
    rows = 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = fn()
        seconds.append(time.perf_counter() - started)
    best = min(seconds)
    print(
        f"{label:>9}: {rows:>9,} rows  best {best:7.3f} s  "
        f"median {statistics.median(seconds):7.3f} s  {rows / best:>12,.0f} rows/s",
        flush=True,
    )
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-workers", type=int, default=None)
    parser.add_argument("--env", help="env file of a running, seeded sandbox to reuse")
    parser.add_argument("--workdir", help="sandbox workdir (default: a temporary directory)")
    args = parser.parse_args()

    env, sandbox = open_sandbox(args.env, args.workdir, args.rows)
    try:
        local = env["NEURODATA_CAVE_LOCAL_URL"]
        requests.put(
            f"{local}/__sandbox__/faults", json={"latency_ms": args.latency_ms}, timeout=10
        ).raise_for_status()

        def client() -> Any:
            return sandbox_client(env)

        def full() -> int:
            # a fresh client each time: metadata caches and the learned limit do not carry over
            return len(client().materialize.query_table("synapses", max_workers=args.max_workers))

        def capped() -> int:
            return len(client().materialize.query_table("synapses", limit=200_000))

        def stream() -> int:
            mat = client().materialize
            return sum(t.num_rows for t in mat.iter_query_table_partitions("synapses"))

        print(f"latency {args.latency_ms} ms per request")
        full_s, full_rows = timed("full", full, args.repeat)
        cap_s, cap_rows = timed("capped", capped, args.repeat)
        timed("stream", stream, args.repeat)
        print(
            f"full vs one capped request: {(full_rows / full_s) / (cap_rows / cap_s):.2f}x rows/s"
        )
        if importlib.util.find_spec("caveclient") is not None:
            import caveclient

            def official() -> int:
                c = caveclient.CAVEclient(
                    env["NEURODATA_CAVE_DATASTACK"],
                    server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
                    auth_token=env["NEURODATA_CAVE_TOKEN"],
                    write_server_cache=False,
                )
                return len(c.materialize.query_table("synapses"))

            off_s, off_rows = timed("official", official, args.repeat)
            print(f"ratio vs official caveclient: {(full_rows / full_s) / (off_rows / off_s):.2f}x")
        else:
            print("official caveclient not importable here: ratio not measured")
    finally:
        if sandbox is not None:
            sandbox.down()


if __name__ == "__main__":
    main()
