"""Benchmark: AIND DocDB client vs the official ``aind-data-access-api`` 1.10.0 on the sandbox.

Measures, against the local DocDB stand-in with added per-request latency (default 30 ms):

* full retrieval of every record of a collection (``retrieve_docdb_records()``);
* ``fetch_records_by_filter_list`` with N names (default 5,000);
* ``upsert_list_of_docdb_records`` of every record into a scratch collection.

The official client is used when importable (``pip install aind-data-access-api==1.10.0
--no-deps`` in this venv, or ``--official-path`` pointing at an unpacked wheel). It hard-codes
``https://``, so its session rewrites the scheme to reach the loopback stand-in.

Usage:
    python bench/aind_retrieve.py                       # starts a sandbox, seeds 15,000 records
    python bench/aind_retrieve.py --workdir .sandbox    # uses a running, seeded sandbox
    python bench/aind_retrieve.py --records 2000 --latency-ms 30 --official-path /tmp/aind
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import requests

from prefect_neurodata.clients.aind.document_db import AnalysisDbClient, MetadataDbClient
from prefect_neurodata.sandbox.launcher import Sandbox


class _HttpsToHttp(requests.Session):
    """Lets the official client (https only) talk to the plain-HTTP loopback stand-in."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        if url.startswith("https://127.0.0.1"):
            url = "http://" + url[len("https://") :]
        return super().request(method, url, *args, **kwargs)


HEADER = "{:32} {:>8} {:>9} {:>11} {:>9} {:>6}".format(
    "operation", "ours s", "rec/s", "official s", "rec/s", "ratio"
)


def _print_row(row: tuple[str, float, float | None, int]) -> None:
    name, ours_s, theirs_s, count = row
    line = f"{name:32} {ours_s:8.2f} {count / ours_s:9.0f}"
    if theirs_s is not None:
        line += f" {theirs_s:11.2f} {count / theirs_s:9.0f} {theirs_s / ours_s:6.2f}x"
    else:
        line += f" {'-':>11} {'-':>9} {'-':>6}"
    print(line, flush=True)


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _try(fn: Callable[[], Any]) -> tuple[float | None, Any]:
    """Run the official client's side; its failures are reported, not fatal."""
    try:
        return _timed(fn, 1)
    except Exception as exc:  # noqa: BLE001 - a benchmark row, not a crash
        print(f"official client failed: {type(exc).__name__}: {str(exc)[:200]}")
        return None, None


def _official() -> Any:
    try:
        from aind_data_access_api import document_db as official
    except ImportError:
        return None
    return official


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="a running sandbox's workdir (default: start one)")
    parser.add_argument("--records", type=int, default=15_000, help="records to seed")
    parser.add_argument("--v2-fraction", type=float, default=0.0, help="share seeded into v2")
    parser.add_argument("--version", default="v1", help="collection generation to read")
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--names", type=int, default=5_000, help="values for filter-list lookup")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per client")
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--official-path", help="directory holding aind_data_access_api")
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--skip-writes", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave a started sandbox running")
    args = parser.parse_args(argv)
    if args.official_path:
        sys.path.insert(0, args.official_path)

    started: Sandbox | None = None
    if args.workdir:
        sandbox = Sandbox(args.workdir)
    else:
        workdir = tempfile.mkdtemp(prefix="aind-bench-")
        sandbox = started = Sandbox(workdir, services=("mongo", "aws", "docdb"), detach=args.keep)
        t0 = time.perf_counter()
        sandbox.up()
        print(f"sandbox up in {time.perf_counter() - t0:.1f} s ({workdir})")
        t0 = time.perf_counter()
        sandbox.seed(
            records=args.records, synapses=0, seed=1, s3_assets=0, unregistered=0,
            v2_fraction=args.v2_fraction,
        )  # fmt: skip
        print(f"seeded {args.records} records in {time.perf_counter() - t0:.1f} s")
    env = sandbox.env
    boto = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    host = env["NEURODATA_DOCDB_HOST"]
    official = None if args.skip_official else _official()
    rows: list[tuple[str, float, float | None, int]] = []
    try:
        sandbox.faults("docdb", latency_ms=args.latency_ms)
        ours = MetadataDbClient(
            host=host, version=args.version, boto=boto, max_workers=args.max_workers
        )
        # Warm the stand-in first (its cached _id list, WiredTiger cache), so that neither
        # client pays the cold start; then alternate the clients and keep medians.
        t0 = time.perf_counter()
        ours._find_records(limit=1)
        ours._find_records({"_id": {"$gt": ""}}, {"_id": 1}, {"_id": 1}, limit=1)
        print(f"warm-up {time.perf_counter() - t0:.1f} s")
        theirs = None
        if official is not None:
            theirs = official.MetadataDbClient(
                host=host.split("://", 1)[1], version=args.version, boto=boto,
                session=_HttpsToHttp(),
            )  # fmt: skip
        ours_times, their_times = [], []
        records, their_records = [], []
        for _ in range(args.repeat):
            if theirs is not None:
                seconds, their_records = _timed(theirs.retrieve_docdb_records, 1)
                their_times.append(seconds)
                print(f"  official retrieve: {seconds:.2f} s", flush=True)
            seconds, records = _timed(ours.retrieve_docdb_records, 1)
            ours_times.append(seconds)
            print(f"  ours retrieve: {seconds:.2f} s", flush=True)
        seconds = statistics.median(ours_times)
        n = len(records)
        size = sum(len(str(r)) for r in records[:500]) / max(1, min(500, n))
        print(f"{n} records in {args.version}, ~{size / 1024:.1f} KB each (repr size)")
        official_seconds = None
        if theirs is not None:
            official_seconds = statistics.median(their_times)
            same = sorted(r["_id"] for r in their_records) == sorted(r["_id"] for r in records)
            print(f"official client returned the same {len(their_records)} ids: {same}")
        rows.append(("retrieve all", seconds, official_seconds, n))
        _print_row(rows[-1])

        names = [r["name"] for r in records[: args.names]]
        seconds, found = _timed(lambda: ours.fetch_records_by_filter_list("name", names), 1)
        official_seconds = None
        if theirs is not None:
            official_seconds, _ = _try(lambda: theirs.fetch_records_by_filter_list("name", names))
        rows.append((f"filter list ({len(names)} names)", seconds, official_seconds, len(found)))
        _print_row(rows[-1])

        if not args.skip_writes:
            collection = f"bench_{uuid.uuid4().hex[:8]}"
            scratch = AnalysisDbClient(
                host=host, collection=collection, boto=boto, max_workers=args.max_workers
            )
            seconds, _ = _timed(lambda: scratch.upsert_list_of_docdb_records(records), 1)
            official_seconds = None
            if official is not None:
                their_scratch = official.AnalysisDbClient(
                    host=host.split("://", 1)[1], collection=collection + "_official", boto=boto,
                    session=_HttpsToHttp(),
                )  # fmt: skip
                official_seconds, _ = _try(
                    lambda: their_scratch.upsert_list_of_docdb_records(records)
                )
            rows.append(("upsert list", seconds, official_seconds, n))
            _print_row(rows[-1])
            with contextlib.suppress(Exception):
                scratch.delete_many_records([r["_id"] for r in records])
    finally:
        with contextlib.suppress(Exception):
            sandbox.faults("docdb")
        if started is not None and not args.keep:
            started.down()

    print(f"\nlatency added per request: {args.latency_ms:.0f} ms, max_workers={args.max_workers}")
    print(HEADER)
    for row in rows:
        _print_row(row)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
