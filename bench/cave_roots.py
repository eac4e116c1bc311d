"""Wall time of big chunkedgraph root lookups: one request vs the concurrent chunks of `get_roots`.

Starts the CAVE stand-in (or reuses a running sandbox), finds real supervoxel ids through the
chunkedgraph API, then, for each ``--latency-ms`` added to every request (fault injection) and
each lookup size in ``--sizes``, times:

* ``one``: one ``roots_binary`` request of all ids, as caveclient sends any lookup;
* ``chunks``: the same ids split as `ChunkedGraphClientV1.get_roots` splits a lookup of that
  many distinct ids (``chunkedgraph._roots_chunks``), sent concurrently with the client's own
  request path and worker bound.

The stand-in's world has a few thousand supervoxels, so the ids repeat (as in a synapse
table); the server's and the client's work per id does not depend on repeats, which is why
the lookup is timed below `get_roots` (whose deduplication would send each id once). Both
answers are checked equal. The rows are the data for ``chunkedgraph.ROOTS_CHUNK_SIZE``.

Example:
    ```
    .venv/bin/python bench/cave_roots.py --latency-ms 0,30,150 --sizes 300000,1000000,4000000
    .venv/bin/python bench/cave_roots.py --env .sandbox/sandbox.env   # a running sandbox
    ```
"""

from __future__ import annotations

import argparse
import datetime as dt
import pathlib
import statistics
import sys
import time
from typing import Any

import numpy as np
import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cave_query import open_sandbox, sandbox_client  # noqa: E402
from prefect_neurodata.clients.cave import chunkedgraph  # noqa: E402
from prefect_neurodata.clients.concurrency import map_bounded  # noqa: E402


def supervoxels(cg: Any) -> np.ndarray:
    """Leaves of the roots that edits created: real ids the stand-in knows."""
    _, new_roots = cg.get_delta_roots(cg.get_oldest_timestamp(), dt.datetime.now(dt.timezone.utc))
    return np.unique(np.concatenate([cg.get_leaves(int(r)) for r in new_roots])).astype(np.uint64)


def lookups(cg: Any) -> dict[str, Any]:
    """``{label: fn(ids) -> roots}``: one request, and the chunks `get_roots` would send."""
    url = cg._url("get_roots")
    params = cg._process_timestamp(None)
    headers = {
        "Content-Type": "application/octet-stream",
        "Accept-Encoding": chunkedgraph.ROOTS_ACCEPT_ENCODING,
    }

    def fetch(ids: np.ndarray) -> np.ndarray:
        body = ids.astype("<u8").tobytes()
        response = cg._request(
            "POST", url, params=params, data=body, headers=headers, idempotent=True
        )
        return np.frombuffer(response.content, dtype="<u8")

    def chunks(ids: np.ndarray) -> np.ndarray:
        parts = chunkedgraph._roots_chunks(ids, cg._roots_workers)
        if len(parts) == 1:
            return fetch(ids)
        return np.concatenate(map_bounded(fetch, parts, max_workers=cg._roots_workers))

    return {"one": fetch, "chunks": chunks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", default="0,30,150", help="comma-separated")
    parser.add_argument("--sizes", default="300000,500000,1000000,2000000,4000000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--env", help="env file of a running, seeded sandbox to reuse")
    parser.add_argument("--workdir", help="sandbox workdir (default: a temporary directory)")
    args = parser.parse_args()

    env, sandbox = open_sandbox(args.env, args.workdir, 1000)
    faults = f"{env['NEURODATA_CAVE_LOCAL_URL']}/__sandbox__/faults"
    try:
        cg = sandbox_client(env).chunkedgraph
        known = supervoxels(cg)
        sides = lookups(cg)
        print(f"{known.size:,} supervoxels; {cg._roots_workers} workers; median [min-max] ms")
        for latency in (float(v) for v in args.latency_ms.split(",")):
            requests.put(faults, json={"latency_ms": latency}, timeout=10).raise_for_status()
            for size in (int(v) for v in args.sizes.split(",")):
                ids = np.resize(known, size)
                reference = sides["one"](ids)
                seconds: dict[str, list[float]] = {label: [] for label in sides}
                for rep in range(args.repeat):
                    # alternate the order so neither side always goes first
                    for label in sides if rep % 2 == 0 else reversed(list(sides)):
                        started = time.perf_counter()
                        roots = sides[label](ids)
                        seconds[label].append(time.perf_counter() - started)
                        if not np.array_equal(roots, reference):
                            raise SystemExit(f"{label}: other roots than one request for {size:,}")
                cells = "  ".join(
                    f"{label} {statistics.median(s) * 1000:7.1f} "
                    f"[{min(s) * 1000:.0f}-{max(s) * 1000:.0f}]"
                    for label, s in seconds.items()
                )
                parts = len(chunkedgraph._roots_chunks(ids, cg._roots_workers))
                print(f"{latency:5.0f} ms {size:>10,} ids  {cells}  ({parts} chunks)", flush=True)
    finally:
        requests.put(faults, json={}, timeout=10)
        if sandbox is not None:
            sandbox.down()


if __name__ == "__main__":
    main()
