"""Benchmark: how fast the DocDB stand-in serves a full read, against SecantusDB itself.

Issue 15 item 4: the v1 records of the default seed (15,000 records, half of them v1) took 12.9 s
through the stand-in and our client, 5.3-6.5 s straight from SecantusDB with pymongo, where
loopback HTTP + orjson allow about 1 s. This script starts a sandbox of its own (SecantusDB,
moto, the DocDB stand-in), seeds it, starts a SECOND stand-in process over the same SecantusDB
with the whole-document cache turned off (``NEURODATA_SANDBOX_DOC_CACHE_BYTES=1``: every read
fetches from MongoDB, the previous behaviour), and times, alternately, ``--reps`` times each:

* ``pymongo``: ``find({})`` of the collection straight from SecantusDB (documents decoded);
* ``no cache``: our ``MetadataDbClient.retrieve_docdb_records()`` through the uncached stand-in;
* ``cached``: the same through the launcher's stand-in (cache on; the first read fills it and is
  reported apart as ``cached, cold``).

Every read is checked to return every record exactly once.

Example:
    ```bash
    .venv/bin/python bench/docdb_standin.py                  # default seed: 7,500 v1 records
    .venv/bin/python bench/docdb_standin.py --records 3000 --reps 2
    ```
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_uncached_standin(mongo_uri: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    """A second DocDB stand-in over the same MongoDB with the document cache off."""
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEURODATA_SANDBOX_")},
        "NEURODATA_SANDBOX_MONGO_URI": mongo_uri,
        "NEURODATA_SANDBOX_DOC_CACHE_BYTES": "1",
    }
    log = (workdir / "uncached-docdb.log").open("wb")
    app = "prefect_neurodata.sandbox.docdb.app:create_app"
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", app, "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/__sandbox__/health", timeout=5):
                return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"uncached stand-in did not start; see {log.name}") from None
            time.sleep(0.2)


def timed(fn: Callable[[], list[Any]], expected: int) -> float:
    started = time.perf_counter()
    ids = fn()
    seconds = time.perf_counter() - started
    if len(ids) != expected or len(set(map(str, ids))) != expected:
        raise AssertionError(f"expected {expected} distinct records, got {len(ids)}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docs)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=15_000, help="seeded records (v1 + v2)")
    parser.add_argument("--v2-fraction", type=float, default=0.5, help="share seeded into v2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)

    import pymongo

    from prefect_neurodata.clients.aind.document_db import MetadataDbClient
    from prefect_neurodata.sandbox.launcher import Sandbox
    from prefect_neurodata.sandbox.seed import seed_sandbox

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-docdb-standin-"))
    sandbox = Sandbox(workdir, services=("mongo", "aws", "docdb"), start_timeout=300)
    sandbox.up()
    uncached: subprocess.Popen | None = None
    try:
        env = sandbox.env
        t0 = time.perf_counter()
        seed_sandbox(env, records=args.records, synapses=0, v2_fraction=args.v2_fraction,
                     s3_assets=0, unregistered=0, cave=False)  # fmt: skip
        print(f"seeded {args.records:,} records in {time.perf_counter() - t0:.0f} s", flush=True)
        mongo_uri = env["NEURODATA_MONGO_URI"]
        uncached, uncached_url = start_uncached_standin(mongo_uri, workdir)
        mongo = pymongo.MongoClient(mongo_uri, directConnection=True)
        coll = mongo["metadata_index"]["data_assets"]
        expected = coll.count_documents({})
        print(f"{expected:,} v1 records", flush=True)

        def read_pymongo() -> list[Any]:
            return [doc["_id"] for doc in coll.find({}, batch_size=1000)]

        def read_api(host: str) -> Callable[[], list[Any]]:
            def run() -> list[Any]:
                with MetadataDbClient(host=host, version="v1") as client:
                    return [r["_id"] for r in client.retrieve_docdb_records()]

            return run

        cached_read = read_api(env["NEURODATA_DOCDB_HOST"])
        results: dict[str, list[float]] = {
            "pymongo": [], "no cache": [], "cached, cold": [], "cached": []
        }  # fmt: skip
        results["cached, cold"].append(timed(cached_read, expected))
        for rep in range(args.reps):
            for name, fn in (
                ("pymongo", read_pymongo),
                ("no cache", read_api(uncached_url)),
                ("cached", cached_read),
            ):
                results[name].append(timed(fn, expected))
                print(f"rep {rep + 1} {name}: {results[name][-1]:.2f} s", flush=True)
        mongo.close()
    finally:
        if uncached is not None:
            uncached.terminate()
            uncached.wait(10)
        sandbox.down()

    print(f"\nfull read of {expected:,} v1 records ({args.reps} reps, median [min-max])")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"  {name:14} {med:7.2f} s  [{min(times):.2f}-{max(times):.2f}]  "
              f"{expected / med:9,.0f} records/s")  # fmt: skip
    speedup = statistics.median(results["no cache"]) / statistics.median(results["cached"])
    print(f"  stand-in with cache vs without: x{speedup:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
