"""Benchmark: read throughput of the DocDB stand-in's ``/find`` (records/s), three read patterns.

Starts its own sandbox (SecantusDB + the DocDB stand-in, no AWS, no CAVE), seeds N records into
the v1 ``metadata_index.data_assets`` collection with the sandbox seed functions, then reads
every record through HTTP three ways:

* ``skip``: the official client's loop, ``limit=0&skip=<records so far>``, no filter, no sort;
* ``keyset``: ``filter={"_id": {"$gt": <last>}}``, ``sort={"_id": 1}``, ``limit=500``;
* ``ranges``: 4 threads, each key-set paging its own ``_id`` range
  (``{"_id": {"$gt": <last>, "$lt": <hi>}}``, sorted, ``limit=500``).

Each pattern checks that every record arrived exactly once. ``count_documents`` (empty filter
and an ``_id`` range) is timed too, and ``probe`` gives the median latency of a fresh
``{"_id": {"$gt": X}}`` sorted ``limit=100`` request at random ``X`` (no open cursor to reuse).

Usage:
    python bench/sandbox_docdb_find.py                     # 15,000 records, 5 MB pages
    python bench/sandbox_docdb_find.py --records 3000 --page-bytes 1000000
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pymongo
import requests

from prefect_neurodata.sandbox.launcher import Sandbox
from prefect_neurodata.sandbox.seed import seed_sandbox

PATH = "/v1/metadata_index/data_assets"


def _get(session: requests.Session, base: str, op: str, **params: Any) -> Any:
    query = {
        k: orjson.dumps(v).decode() if k in ("filter", "projection", "sort") else str(v)
        for k, v in params.items()
    }
    r = session.get(f"{base}{PATH}/{op}", params=query, timeout=(5, 300))
    r.raise_for_status()
    return orjson.loads(r.content)


def read_skip(base: str) -> tuple[list[str], int]:
    """The official client's pattern; returns (ids, requests)."""
    ids: list[str] = []
    calls = 0
    with requests.Session() as s:
        while True:
            page = _get(s, base, "find", limit=0, skip=len(ids))
            calls += 1
            if not page:
                return ids, calls
            ids.extend(d["_id"] for d in page)


def read_keyset(base: str, lo: str | None = None, hi: str | None = None) -> tuple[list[str], int]:
    """Key-set paging by ``_id`` over ``[lo, hi)`` (None: open end); returns (ids, requests)."""
    ids: list[str] = []
    calls = 0
    with requests.Session() as s:
        while True:
            bound: dict[str, Any] = {}
            if ids:
                bound["$gt"] = ids[-1]
            elif lo is not None:
                bound["$gte"] = lo
            if hi is not None:
                bound["$lt"] = hi
            flt = {"_id": bound} if bound else {}
            page = _get(s, base, "find", limit=500, skip=0, filter=flt, sort={"_id": 1})
            calls += 1
            if not page:
                return ids, calls
            ids.extend(d["_id"] for d in page)


def read_ranges(base: str, all_ids: list[str], parts: int = 4) -> tuple[list[str], int]:
    """``parts`` concurrent key-set readers over disjoint ``_id`` ranges."""
    ordered = sorted(all_ids)
    cuts = [ordered[len(ordered) * k // parts] for k in range(1, parts)]
    bounds = list(zip([None, *cuts], [*cuts, None], strict=True))
    with ThreadPoolExecutor(max_workers=parts) as pool:
        results = list(pool.map(lambda b: read_keyset(base, *b), bounds))
    return [i for ids, _ in results for i in ids], sum(c for _, c in results)


def probe(base: str, all_ids: list[str], n: int = 5) -> None:
    """Median latency of fresh key-set requests starting at random ids."""
    ordered = sorted(all_ids)
    rng = random.Random(1)
    times = []
    with requests.Session() as s:
        for _ in range(n):
            start_id = ordered[rng.randrange(len(ordered) - 200)]
            t = time.perf_counter()
            try:
                page = _get(
                    s,
                    base,
                    "find",
                    limit=100,
                    skip=0,
                    filter={"_id": {"$gt": start_id}},
                    sort={"_id": 1},
                )
            except requests.HTTPError as exc:
                print(f"probe    FAILED after {time.perf_counter() - t:.1f} s: {exc}", flush=True)
                return
            times.append(time.perf_counter() - t)
            assert len(page) == 100 and page[0]["_id"] > start_id
    print(
        f"probe    fresh `_id > X` limit=100 request: median {statistics.median(times):.3f} s"
        f" (n={n}, min {min(times):.3f} s, max {max(times):.3f} s)",
        flush=True,
    )


def _run(name: str, fn: Callable[[], tuple[list[str], int]], expected: set[str]) -> dict:
    start = time.perf_counter()
    try:
        ids, calls = fn()
    except requests.HTTPError as exc:
        seconds = time.perf_counter() - start
        print(f"{name:<8} FAILED after {seconds:.1f} s: {exc}", flush=True)
        return {"name": name, "error": str(exc), "seconds": seconds}
    seconds = time.perf_counter() - start
    ok = len(ids) == len(expected) and set(ids) == expected
    rate = len(ids) / seconds if seconds else float("inf")
    print(
        f"{name:<8} {len(ids):>7} records  {calls:>4} requests  {seconds:7.2f} s"
        f"  {rate:9.0f} records/s  {'ok' if ok else 'MISMATCH'}",
        flush=True,
    )
    if not ok:
        raise SystemExit(f"{name}: got {len(ids)} ids ({len(set(ids))} distinct), expected all")
    return {"name": name, "records": len(ids), "requests": calls, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one line per read pattern."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=15_000)
    parser.add_argument("--page-bytes", type=int, default=None, help="stand-in page cap")
    parser.add_argument("--workdir", default=None, help="sandbox workdir (default: temporary)")
    parser.add_argument("--skip-patterns", default="", help="comma list of patterns to skip")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip_patterns.split(",")))

    with tempfile.TemporaryDirectory(prefix="nd-bench-find-") as tmp:
        sandbox = Sandbox(
            args.workdir or tmp, services=("mongo", "docdb"), page_bytes=args.page_bytes
        )
        with sandbox:
            env = sandbox.env
            t = time.perf_counter()
            report = seed_sandbox(
                env, records=args.records, synapses=0, v2_fraction=0.0, cave=False, s3_assets=0
            )
            print(
                f"seeded {report.records_v1} records in {time.perf_counter() - t:.1f} s"
                f" (median {report.record_bytes_median} B)",
                flush=True,
            )
            client = pymongo.MongoClient(env["NEURODATA_MONGO_URI"], directConnection=True)
            try:
                coll = client["metadata_index"]["data_assets"]
                all_ids = [d["_id"] for d in coll.find({}, {"_id": 1})]
            finally:
                client.close()
            expected = set(all_ids)
            base = env["NEURODATA_DOCDB_HOST"]
            with requests.Session() as s:
                t = time.perf_counter()
                total = _get(s, base, "count_documents")["filtered_record_count"]
                cut = sorted(all_ids)[len(all_ids) // 2]
                part = _get(s, base, "count_documents", filter={"_id": {"$lt": cut}})
                print(
                    f"count_documents: {total} total, {part['filtered_record_count']} below the"
                    f" median _id, {time.perf_counter() - t:.2f} s for both",
                    flush=True,
                )
            patterns = {
                "skip": lambda: read_skip(base),
                "keyset": lambda: read_keyset(base),
                "ranges": lambda: read_ranges(base, all_ids),
            }
            for name, fn in patterns.items():
                if name not in skip:
                    _run(name, fn, expected)
            if "probe" not in skip:
                probe(base, all_ids)
            health = requests.get(base + "/__sandbox__/health", timeout=10).json()
            print(f"stand-in find stats: {health.get('find')}")


if __name__ == "__main__":
    main()
