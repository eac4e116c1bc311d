"""Seed a running sandbox with realistic data: DocDB records, S3 asset folders, a CAVE datastack.

* DocDB: v1 and v2 records from :class:`~.records.RecordGenerator`, inserted with pymongo
  ``insert_many`` straight into the sandbox's own MongoDB-wire database (the same databases
  the DocDB stand-in serves: ``metadata_index`` for v1, ``metadata_index_v2`` for v2), plus a
  few schema documents in ``schemas``.
* S3: for a subset of the records (those located in the sandbox bucket) a folder
  ``<name>/`` with the core JSON files written as the AIND indexer writes them
  (``json.dumps(indent=3, sort_keys=True, ensure_ascii=False)``, so MD5 == ETag),
  ``metadata.nd.json`` and a small data object; plus folders that are NOT yet in DocDB, for
  registration flows. Seeding suspends the bucket's event notification, so historical assets
  do not flood the event queue.
* CAVE: ``POST {cave}/__sandbox__/seed`` with ``{"synapses": N, "seed": S}``.

Example:
    >>> from prefect_neurodata.sandbox.launcher import Sandbox  # doctest: +SKIP
    >>> with Sandbox(".sandbox") as sb:  # doctest: +SKIP
    ...     report = sb.seed(records=500, synapses=10_000)
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prefect_neurodata.sandbox.seed.record_parts import json_size
from prefect_neurodata.sandbox.seed.records import RecordGenerator, core_files

__all__ = [
    "RecordGenerator",
    "SeedReport",
    "indexer_json",
    "insert_records",
    "seed_cave",
    "seed_sandbox",
    "upload_assets",
]

INSERT_BATCH_BYTES = 8_000_000
SCHEMA_VERSIONS = {
    "subject": ("1.0.3", "2.0.6"),
    "data_description": ("1.0.4", "2.0.9"),
    "procedures": ("1.1.1", "2.0.20"),
    "processing": ("1.1.3", "2.0.11"),
    "quality_control": ("1.1.1", "2.0.7"),
    "session": ("1.0.1",),
    "acquisition": ("2.0.12",),
}


@dataclass
class SeedReport:
    """What a seed run produced and how long each phase took (seconds)."""

    records_v1: int = 0
    records_v2: int = 0
    record_bytes_min: int = 0
    record_bytes_median: int = 0
    record_bytes_max: int = 0
    records_over_100kb: int = 0
    s3_assets: int = 0
    s3_unregistered: int = 0
    s3_objects: int = 0
    unregistered_locations: list[str] = field(default_factory=list)
    synapses: int = 0
    cave: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


def indexer_json(obj: Any) -> bytes:
    """Serialise like the AIND indexer does, so the file MD5 equals its single-part ETag."""
    return json.dumps(obj, indent=3, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _batches(records: list[dict[str, Any]], max_bytes: int) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for rec in records:
        n = json_size(rec)
        if batch and size + n > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(rec)
        size += n
    if batch:
        yield batch


def insert_records(
    mongo_uri: str,
    records: Mapping[str, list[dict[str, Any]]],
    *,
    reset: bool = True,
    batch_bytes: int = INSERT_BATCH_BYTES,
) -> dict[str, int]:
    """Insert records into the databases the DocDB stand-in serves.

    Args:
        mongo_uri: The sandbox's MongoDB URI.
        records: ``{"v1": [...], "v2": [...]}``.
        reset: Delete the existing records first (indexes are kept).
        batch_bytes: Approximate JSON bytes per ``insert_many`` call.

    Returns:
        Inserted counts per version.
    """
    import pymongo

    from prefect_neurodata.sandbox.docdb.store import database_name

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_uri, directConnection=True
    )
    try:
        counts = {}
        for version, recs in records.items():
            coll = client[database_name(version, "metadata_index")]["data_assets"]
            if reset:
                coll.delete_many({})
            n = 0
            for batch in _batches(recs, batch_bytes):
                # insert_many mutates nothing when _id is present, so the caller's dicts stay
                # usable for S3.
                n += len(coll.insert_many(batch, ordered=False).inserted_ids)
            counts[version] = n
        insert_records_schemas(client, reset=reset)
        return counts
    finally:
        client.close()


def insert_records_schemas(client: Any, *, reset: bool = True) -> None:
    """Write a few JSON-schema documents into the ``schemas`` database (``_id`` = version)."""
    from prefect_neurodata.sandbox.docdb.store import database_name

    schemas = client[database_name("v1", "schemas")]
    for name, versions in SCHEMA_VERSIONS.items():
        coll = schemas[name]
        if reset:
            coll.delete_many({})
        for v in versions:
            coll.replace_one({"_id": v}, _schema_doc(name, v), upsert=True)


def _schema_doc(name: str, version: str) -> dict[str, Any]:
    title = "".join(p.capitalize() for p in name.split("_"))
    return {
        "_id": version,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "properties": {
            "schema_version": {"const": version, "type": "string"},
            "describedBy": {"type": "string"},
        },
        "required": ["schema_version"],
        "additionalProperties": True,
    }


def _asset_objects(record: dict[str, Any], version: str, registered: bool) -> dict[str, bytes]:
    """Keys (relative to the asset folder) and bodies of one asset."""
    objects = {
        f"{stem}.json": indexer_json(body) for stem, body in core_files(record, version).items()
    }
    if registered:
        objects["metadata.nd.json"] = indexer_json(record)
    level = (record.get("data_description") or {}).get("data_level", "raw")
    mods = (record.get("data_description") or {}).get("modality") or (
        record.get("data_description") or {}
    ).get("modalities", [])
    abbr = mods[0]["abbreviation"] if mods else "data"
    if level == "derived":
        objects["output"] = b"derived asset produced by the sandbox seed\n"
        objects[f"{abbr}/results.json"] = b'{"status": "ok"}\n'
    else:
        objects[f"{abbr}/README.txt"] = b"raw data placeholder written by the sandbox seed\n"
    return objects


def upload_assets(
    s3: Any,
    bucket: str,
    assets: list[tuple[str, dict[str, Any], bool]],
    *,
    workers: int = 16,
) -> int:
    """Upload asset folders ``(version, record, registered)`` with a thread pool.

    Returns:
        Number of objects written.
    """
    jobs: list[tuple[str, bytes]] = []
    for version, record, registered in assets:
        prefix = record["location"].split("/", 3)[3]
        for rel, body in _asset_objects(record, version, registered).items():
            jobs.append((f"{prefix}/{rel}", body))

    def put(job: tuple[str, bytes]) -> None:
        key, body = job
        ctype = "application/json" if key.endswith(".json") else "application/octet-stream"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=ctype)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(put, jobs))
    return len(jobs)


def _empty_keep_indexes(coll: Any) -> None:
    """Empty a collection fast: drop it and recreate its indexes on the empty collection.

    ``delete_many({})`` costs as much as inserting the documents again on SecantusDB, and
    building indexes after a bulk insert costs about a second each per 10k records.
    """
    info = coll.index_information()
    coll.drop()
    for name, spec in info.items():
        if name == "_id_":
            continue
        opts = {k: v for k, v in spec.items() if k in ("unique", "sparse", "expireAfterSeconds")}
        coll.create_index(spec["key"], name=name, **opts)


def _clear_bucket(s3: Any, bucket: str) -> None:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def seed_cave(
    url: str,
    *,
    synapses: int,
    seed: int,
    admin_token: str | None,
    timeout: float = 1800.0,
    **world: int,
) -> dict[str, Any]:
    """Ask the CAVE stand-in to build its datastack (``POST /__sandbox__/seed``).

    Args:
        url: Base URL of the CAVE stand-in.
        synapses: Rows of the synapse table.
        seed: Seed of every random draw.
        admin_token: The stand-in's admin token.
        timeout: Read timeout in seconds.
        **world: Size of the chunkedgraph world (``neurons``, ``neuron_length``, ``merges``,
            ``splits``), checked by the stand-in.

    Raises:
        RuntimeError: the service answered with an error (its body is included).
    """
    import requests

    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    resp = requests.post(
        f"{url.rstrip('/')}/__sandbox__/seed",
        json={"synapses": int(synapses), "seed": int(seed), **world},
        headers=headers,
        timeout=(5, timeout),
    )
    if resp.status_code >= 400:
        raise RuntimeError(
            f"CAVE seed failed: {resp.status_code} {resp.text[:500]} (POST {resp.url})"
        )
    try:
        return resp.json()
    except ValueError:
        return {"response": resp.text[:500]}


class _Bounded:
    """Thread pool that blocks the producer when too many jobs are in flight (bounds memory)."""

    def __init__(self, workers: int, max_pending: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.pending: deque[Future[Any]] = deque()
        self.max_pending = max_pending

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        while len(self.pending) >= self.max_pending:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(fn, *args, **kwargs))

    def drain(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def seed_sandbox(
    env: Mapping[str, str],
    *,
    records: int = 15_000,
    synapses: int = 1_000_000,
    seed: int = 0,
    v2_fraction: float = 0.5,
    s3_assets: int | None = None,
    unregistered: int | None = None,
    reset: bool = True,
    cave: bool = True,
    workers: int = 16,
    insert_workers: int = 4,
    batch_bytes: int = INSERT_BATCH_BYTES,
) -> SeedReport:
    """Seed the sandbox described by ``env`` (the launcher's env file contents).

    Records are generated, inserted (``insert_many`` on ``insert_workers`` connections) and
    uploaded (``workers`` threads) as a pipeline, so the three overlap.

    Args:
        env: Environment of a running sandbox (``Sandbox.env``).
        records: Total DocDB records (split between v1 and v2 by ``v2_fraction``).
        synapses: Rows of the CAVE synapse table; ``0`` skips CAVE.
        seed: Seed of every random draw (same seed, same data).
        v2_fraction: Share of records in the v2 collection.
        s3_assets: Records that also get an S3 folder (default ``min(records, 200)``).
        unregistered: S3 folders with no DocDB record (default ``max(2, s3_assets // 10)``).
        reset: Replace what a previous seed wrote (records, bucket objects).
        cave: Seed CAVE when its URL is in ``env``.
        workers: Threads for S3 uploads.
        insert_workers: Parallel ``insert_many`` calls.
        batch_bytes: Approximate JSON bytes per ``insert_many`` call.

    Returns:
        A :class:`SeedReport`.

    Raises:
        ValueError: a count is negative or a fraction out of range (before any write).
    """
    import pymongo

    from prefect_neurodata.sandbox.docdb.store import database_name

    for name, value in (("records", records), ("synapses", synapses)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if not 0.0 <= v2_fraction <= 1.0:
        raise ValueError(f"v2_fraction must be within [0, 1], got {v2_fraction!r}")
    s3_assets = min(records, 200) if s3_assets is None else int(s3_assets)
    if not 0 <= s3_assets <= records:
        raise ValueError(f"s3_assets must be within [0, records={records}], got {s3_assets!r}")
    unregistered = max(2, s3_assets // 10) if unregistered is None else int(unregistered)
    if unregistered < 0:
        raise ValueError(f"unregistered must be >= 0, got {unregistered!r}")
    if "NEURODATA_MONGO_URI" not in env:
        raise ValueError("env has no NEURODATA_MONGO_URI: is the sandbox up?")

    report = SeedReport()
    t0 = time.perf_counter()
    bucket = env.get("NEURODATA_S3_BUCKET", "aind-open-data")
    gen = RecordGenerator(seed, bucket=bucket)
    n2 = int(round(records * v2_fraction))
    counts = {"v1": records - n2, "v2": n2}
    rng = np.random.default_rng([seed, 5])
    chosen = (
        set(rng.choice(records, size=s3_assets, replace=False).tolist()) if s3_assets else set()
    )

    # The CAVE world is built inside the CAVE process: start it first so it overlaps with the
    # DocDB and S3 work below.
    cave_url = env.get("NEURODATA_CAVE_GLOBAL_URL") or env.get("NEURODATA_CAVE_LOCAL_URL")
    cave_pool = cave_job = None
    if cave and synapses and cave_url:

        def run_cave() -> dict[str, Any]:
            t = time.perf_counter()
            out = seed_cave(
                cave_url,
                synapses=synapses,
                seed=seed,
                admin_token=env.get("NEURODATA_CAVE_ADMIN_TOKEN"),
            )
            report.timings["cave"] = time.perf_counter() - t
            return out

        cave_pool = ThreadPoolExecutor(max_workers=1)
        cave_job = cave_pool.submit(run_cave)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        env["NEURODATA_MONGO_URI"], directConnection=True
    )
    s3: Any = None  # a boto3 S3 client when AWS_ENDPOINT_URL is set
    target = saved = None
    if env.get("AWS_ENDPOINT_URL"):
        from prefect_neurodata.sandbox.aws import AwsTarget, suspend_notifications

        target = AwsTarget(
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region=env.get("AWS_DEFAULT_REGION", "us-west-2"),
            access_key_id=env.get("AWS_ACCESS_KEY_ID", "testing"),
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "testing"),
        )
        s3 = target.client("s3", max_pool_connections=workers)
        saved = suspend_notifications(target, bucket)
    inserts = _Bounded(insert_workers, max_pending=insert_workers * 2)
    uploads = _Bounded(workers, max_pending=workers * 64)
    sizes: list[int] = []
    names: set[str] = set()
    t_s3_done = t_db_done = 0.0

    def put(key: str, body: bytes) -> None:
        ctype = "application/json" if key.endswith(".json") else "application/octet-stream"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=ctype)

    def upload(version: str, rec: dict[str, Any], registered: bool) -> None:
        prefix = rec["location"].split("/", 3)[3]
        for rel, body in _asset_objects(rec, version, registered).items():
            uploads.submit(put, f"{prefix}/{rel}", body)
            report.s3_objects += 1

    try:
        if reset:
            for version in counts:
                _empty_keep_indexes(client[database_name(version, "metadata_index")]["data_assets"])
            if s3 is not None:
                _clear_bucket(s3, bucket)
        flat = 0
        for version, n in counts.items():
            coll = client[database_name(version, "metadata_index")]["data_assets"]
            batch: list[dict[str, Any]] = []
            batch_size = 0
            for rec in gen.iter_generate(n, version=version):
                if flat in chosen:
                    rec["location"] = f"s3://{bucket}/{rec['name']}"
                    if s3 is not None:
                        upload(version, rec, True)
                        report.s3_assets += 1
                flat += 1
                names.add(rec["name"])
                size = json_size(rec)
                sizes.append(size)
                batch.append(rec)
                batch_size += size
                if batch_size >= batch_bytes:
                    inserts.submit(coll.insert_many, batch, ordered=False)
                    batch, batch_size = [], 0
            if batch:
                inserts.submit(coll.insert_many, batch, ordered=False)
        if s3 is not None:
            n_v1 = unregistered // 3
            for version, n, stream in (("v1", n_v1, 11), ("v2", unregistered - n_v1, 12)):
                for rec in gen.iter_generate(n, version=version, stream=stream, force_bucket=True):
                    if rec["name"] in names:
                        continue
                    upload(version, rec, False)
                    report.s3_unregistered += 1
                    report.unregistered_locations.append(rec["location"])
        report.timings["generate"] = time.perf_counter() - t0
        inserts.drain()
        t_db_done = time.perf_counter() - t0
        uploads.drain()
        t_s3_done = time.perf_counter() - t0
        insert_records_schemas(client, reset=reset)
        db = client[database_name("v1", "metadata_index")]["data_assets"]
        db2 = client[database_name("v2", "metadata_index")]["data_assets"]
        report.records_v1 = db.estimated_document_count()
        report.records_v2 = db2.estimated_document_count()
    finally:
        if cave_pool is not None:
            cave_pool.shutdown(wait=True)
        inserts.pool.shutdown(wait=True, cancel_futures=True)
        uploads.pool.shutdown(wait=True, cancel_futures=True)
        client.close()
        if target is not None and saved is not None:
            from prefect_neurodata.sandbox.aws import restore_notifications

            restore_notifications(target, bucket, saved)
    report.timings["docdb_insert_done"] = t_db_done
    report.timings["s3_upload_done"] = t_s3_done
    arr = np.array(sizes or [0])
    report.record_bytes_min = int(arr.min())
    report.record_bytes_median = int(np.median(arr))
    report.record_bytes_max = int(arr.max())
    report.records_over_100kb = int((arr > 100_000).sum())

    if cave_job is not None:
        report.cave = cave_job.result()
        report.synapses = int(synapses)
    report.timings["total"] = time.perf_counter() - t0
    return report
