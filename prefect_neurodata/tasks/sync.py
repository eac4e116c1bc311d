"""The metadata-sync batch task: S3 asset folders <-> DocDB records for a range of prefixes.

One task run handles one batch of asset folders (a few hundred): it lists their files with a
ranged S3 listing, reads their DocDB records, upserts only the core fields whose S3 file changed
after the record was last written (DocDB stays the truth for later edits such as attached QC),
registers folders DocDB does not know, writes ``metadata.nd.json``
where it differs from the record, and finally writes a checkpoint marker for the batch so that a
rerun after a crash skips it. Every step is idempotent, so a retried or repeated batch converges
on the same state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from prefect.runtime import task_run
from prefect_aws import AwsCredentials
from pydantic import BaseModel, Field

from prefect_neurodata.blocks.docdb import DocDbApiCredentials
from prefect_neurodata.clients.http import map_bounded
from prefect_neurodata.tasks.claims import ASSET_LOCATION, claim
from prefect_neurodata.tasks.common import load_aws, load_docdb, utc_now_iso
from prefect_neurodata.tasks.docdb import other_version_locations, register_locations
from prefect_neurodata.tasks.retries import TransientBatchError, task_options
from prefect_neurodata.tasks.s3 import (
    CHECKPOINT_ROOT,
    S3_THREADS,
    canonical_json,
    etag,
    list_folder_files,
    md5_hex,
    put_bytes,
    read_json,
)

CORE_FILES = {
    "v1": (
        "subject",
        "data_description",
        "procedures",
        "session",
        "rig",
        "processing",
        "acquisition",
        "instrument",
        "quality_control",
    ),
    "v2": (
        "subject",
        "data_description",
        "procedures",
        "instrument",
        "processing",
        "acquisition",
        "quality_control",
        "model",
    ),
}
STAMP_FIELD = {"v1": "last_modified", "v2": "_last_modified"}
ND_FILE = "metadata.nd.json"


def parse_time(value: Any) -> dt.datetime | None:
    """An aware datetime from an ISO string or datetime (naive values are taken as UTC)."""
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def summary_row(record: dict[str, Any], version: str, outcome: str, s3_files: int) -> dict:
    """The flat one-row-per-asset summary exported to the analysts' table."""
    dd = record.get("data_description") or {}
    subject = record.get("subject") or {}
    modalities = dd.get("modality" if version == "v1" else "modalities") or []
    qc = record.get("quality_control") or {}
    qc_items = qc.get("evaluations" if version == "v1" else "metrics") or []
    platform = dd.get("platform") or {}
    return {
        "id": str(record.get("_id")),
        "name": record.get("name"),
        "location": record.get("location"),
        "subject_id": subject.get("subject_id") or dd.get("subject_id"),
        "project_name": dd.get("project_name"),
        "data_level": dd.get("data_level"),
        "modalities": ",".join(
            sorted(str(m.get("abbreviation")) for m in modalities if isinstance(m, dict))
        ),
        "platform": platform.get("abbreviation") if isinstance(platform, dict) else None,
        "creation_time": dd.get("creation_time"),
        "last_modified": record.get(STAMP_FIELD[version]),
        "metadata_status": record.get("metadata_status"),
        "qc_entries": len(qc_items) if isinstance(qc_items, list) else 0,
        "s3_files": s3_files,
        "sync_outcome": outcome,
    }


def _file_is_newer(obj: dict[str, Any], record_stamp: dt.datetime | None) -> bool:
    """Whether an S3 file was modified after its record's last write (unknown times: yes).

    S3 keeps whole seconds, so a file written in the same second as the record counts as newer.
    """
    modified = parse_time(obj.get("LastModified"))
    if record_stamp is None or modified is None:
        return True
    return modified >= record_stamp.replace(microsecond=0)


def _fetch_batch_records(client: Any, bucket: str, prefixes: list[str]) -> dict[str, dict]:
    """Full records of the batch's locations (``$in`` aggregations on the indexed location,
    split by the client into requests under the gateway's payload cap)."""
    locations = [f"s3://{bucket}/{p}" for p in prefixes]
    found: dict[str, dict] = {}
    for record in client.fetch_records_by_filter_list("location", locations):
        location = record.get("location")
        if location not in found:
            found[location] = record
    return found


DOCDB_WORKERS = 2
"""Concurrent DocDB requests per batch task (two batches run at once by default)."""


class SyncOptions(BaseModel):
    """How a batch synchronises (the same for every batch of a run)."""

    cutoff: str | None = Field(
        default=None,
        description="ISO time: only S3 files and records changed since are compared (None: all).",
    )
    s3_to_docdb: bool = Field(default=True, description="Upsert changed core files to DocDB.")
    docdb_to_s3: bool = Field(default=True, description="Write metadata.nd.json back to S3.")
    register_missing: bool = Field(default=True, description="Register folders DocDB lacks.")
    max_payload_size: int = Field(default=5_000_000, description="bulk_write chunk budget.")


class SyncCounts(BaseModel):
    """What a batch (or a run, summed) did; each field's title is its label in reports."""

    assets: int = Field(default=0, title="asset folders compared")
    fields_upserted: int = Field(default=0, title="core fields updated from S3")
    records_upserted: int = Field(default=0, title="records updated from S3")
    registered: int = Field(default=0, title="folders registered by this run")
    unregistered: int = Field(
        default=0,
        title="folders left unregistered (no data_description.json, option off, refused)",
    )
    nd_written: int = Field(default=0, title="metadata.nd.json files written")
    file_errors: int = Field(default=0, title="unreadable core files (DocDB left as it is)")
    other_version: int = Field(
        default=0, title="folders registered in the other DocDB version (left alone)"
    )

    @classmethod
    def labels(cls) -> dict[str, str]:
        """``{field: human label}`` for reports."""
        return {name: str(field.title) for name, field in cls.model_fields.items()}


class BatchResult(BaseModel):
    """One batch's outcome; also the content of its checkpoint marker."""

    prefixes: list[str] = Field(description="The batch's asset folders.")
    counts: dict[str, int] = Field(description="`SyncCounts` of the batch.")
    rows: list[dict[str, Any]] = Field(description="One exported summary row per asset.")
    changes: list[dict[str, Any]] = Field(description="What this batch changed, per asset.")


@dataclass
class _Batch:
    """The state one batch task run works on (see `sync_metadata_batch`)."""

    block: DocDbApiCredentials
    s3: Any
    bucket: str
    prefixes: list[str]
    options: SyncOptions
    listing: dict[str, dict[str, dict[str, Any]]]
    logger: Any
    records: dict[str, dict] = field(default_factory=dict)
    counts: SyncCounts = field(default_factory=SyncCounts)
    changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.block.version

    @property
    def cutoff(self) -> dt.datetime | None:
        return parse_time(self.options.cutoff)

    def location(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def change(self, location: str, change: str, detail: str = "") -> None:
        self.changes.append({"location": location, "change": change, "detail": detail})


def _is_recent(obj: dict[str, Any], cutoff: dt.datetime | None) -> bool:
    modified = parse_time(obj.get("LastModified"))
    return cutoff is None or modified is None or modified >= cutoff


def _stale_core_files(batch: _Batch) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Core files whose content differs from their record's field (without downloading
    them: ETag against the MD5 of the canonical form), and the folders DocDB lacks.

    Returns:
        ``[(location, field, key)]`` to read, and the prefixes of unknown folders.
    """
    to_read: list[tuple[str, str, str]] = []
    missing: list[str] = []
    for prefix in batch.prefixes:
        files = batch.listing.get(prefix, {})
        record = batch.records.get(batch.location(prefix))
        if record is None:
            if files:
                missing.append(prefix)
            continue
        if not batch.options.s3_to_docdb:
            continue
        record_stamp = parse_time(record.get(STAMP_FIELD[batch.version]))
        for name in CORE_FILES[batch.version]:
            obj = files.get(f"{name}.json")
            if obj is None or not _is_recent(obj, batch.cutoff):
                continue
            current = record.get(name)
            if current is not None and not _file_is_newer(obj, record_stamp):
                # The record was written after this file (e.g. a QC evaluation was
                # attached): DocDB holds the newer truth, so the file must not overwrite it.
                continue
            if current is not None and md5_hex(canonical_json(current)) == etag(obj):
                continue
            to_read.append((batch.location(prefix), name, f"{prefix}/{name}.json"))
    return to_read, missing


def _upsert_from_s3(batch: _Batch, client: Any, to_read: list[tuple[str, str, str]]) -> list[str]:
    """Read the stale files and upsert the fields that really changed; their locations."""

    def read(item: tuple[str, str, str]) -> tuple[Any, str | None]:
        try:
            return read_json(batch.s3, batch.bucket, item[2]), None
        except ValueError as exc:  # corrupt JSON: report, leave DocDB as it is
            return None, f"{item[2]}: {exc}"

    updates: dict[str, dict[str, Any]] = {}
    for (location, name, _key), (value, error) in zip(
        to_read, map_bounded(read, to_read, S3_THREADS), strict=True
    ):
        if error:
            batch.counts.file_errors += 1
            batch.logger.warning("skipping unreadable file %s", error)
            continue
        record = batch.records[location]
        if value != record.get(name):
            updates.setdefault(location, {"_id": record["_id"]})[name] = value
    if updates:
        client.upsert_list_of_docdb_records(
            list(updates.values()), max_payload_size=batch.options.max_payload_size
        )
    batch.counts.records_upserted = len(updates)
    batch.counts.fields_upserted = sum(len(u) - 1 for u in updates.values())
    for location, update in updates.items():
        fields = ", ".join(sorted(k for k in update if k != "_id"))
        batch.change(location, "fields updated from S3", fields)
    return list(updates)


def _register_missing(batch: _Batch, client: Any, missing: list[str]) -> list[str]:
    """Register the unknown folders (under a claim on their locations, so overlapping runs
    and flows register each once); the locations that now have a record."""
    elsewhere = other_version_locations(batch.block, [batch.location(p) for p in missing])
    batch.counts.other_version = len(elsewhere)
    missing = [p for p in missing if batch.location(p) not in elsewhere]
    wanted = [
        batch.location(p)
        for p in missing
        if batch.options.register_missing and "data_description.json" in batch.listing[p]
    ]
    batch.counts.unregistered = len(missing) - len(wanted)
    with claim(ASSET_LOCATION, wanted):
        outcomes, transient = register_locations(
            client, [{"location": loc} for loc in wanted], batch.logger
        )
    TransientBatchError.raise_for(transient, len(wanted), "registrations")
    for outcome in outcomes:
        if outcome.outcome == "failed":
            batch.counts.unregistered += 1
            batch.change(outcome.location, "registration failed", outcome.detail)
        elif outcome.outcome == "registered":
            batch.counts.registered += 1
            batch.change(outcome.location, "registered")
    # Locations another run registered meanwhile have records now too.
    return [o.location for o in outcomes if o.outcome != "failed"]


def _write_nd_files(batch: _Batch) -> set[str]:
    """Write ``metadata.nd.json`` where it differs from the record; the prefixes written."""
    if not batch.options.docdb_to_s3:
        return set()
    cutoff = batch.cutoff
    writes: list[tuple[str, bytes]] = []  # (prefix, body)
    for location, record in batch.records.items():
        prefix = location[len(batch.location("")) :]
        files = batch.listing.get(prefix, {})
        if not files:
            continue  # the folder is gone: reported as vanished by the flow
        nd = files.get(ND_FILE)
        stamp = parse_time(record.get(STAMP_FIELD[batch.version]))
        if nd is not None and cutoff is not None and stamp is not None and stamp < cutoff:
            continue
        body = canonical_json(record)
        if nd is not None and etag(nd) == md5_hex(body):
            continue
        writes.append((prefix, body))
    map_bounded(
        lambda item: put_bytes(batch.s3, batch.bucket, f"{item[0]}/{ND_FILE}", item[1]),
        writes,
        S3_THREADS,
    )
    batch.counts.nd_written = len(writes)
    return {prefix for prefix, _body in writes}


def _summary_rows(batch: _Batch, nd_written: set[str]) -> list[dict[str, Any]]:
    """One export row per known asset of the batch, as the folder is after this run."""
    changed = {c["location"]: c["change"] for c in batch.changes}
    rows = []
    for prefix in batch.prefixes:
        record = batch.records.get(batch.location(prefix))
        if record is None:
            continue
        # Count the metadata.nd.json this run may have just written, so a rerun exports the
        # same number.
        files = set(batch.listing.get(prefix, {})) | ({ND_FILE} if prefix in nd_written else set())
        outcome = changed.get(batch.location(prefix), "unchanged")
        rows.append(summary_row(record, batch.version, outcome, len(files)))
    return rows


def _batch_run_name() -> str:
    prefixes = task_run.parameters.get("prefixes") or [""]
    return f"sync-metadata-batch: {prefixes[0]}..{prefixes[-1]} ({len(prefixes)} folders)"


@task(
    name="sync-metadata-batch",
    task_run_name=_batch_run_name,
    **task_options(tags=["docdb", "write", "s3"]),
)
def sync_metadata_batch(
    docdb: str | DocDbApiCredentials,
    aws: str | AwsCredentials | None,
    bucket: str,
    prefixes: list[str],
    options: SyncOptions,
    checkpoint_key: str | None = None,
) -> BatchResult:
    """Synchronise one batch of asset folders with DocDB, both ways, then checkpoint it.

    Args:
        docdb: DocDB block or its name.
        aws: `AwsCredentials` block (or name) for S3; None uses the DocDB block's.
        bucket: The bucket.
        prefixes: Sorted asset folders of this batch.
        options: Directions, lookback cutoff and bulk_write budget.
        checkpoint_key: S3 key of this batch's marker (written last), or None.

    Returns:
        Counts, one summary row per asset and the assets this batch changed (for the report).
    """
    block = load_docdb(docdb)
    s3 = load_aws(aws, block).get_s3_client()
    batch = _Batch(
        block=block,
        s3=s3,
        bucket=bucket,
        prefixes=prefixes,
        options=options,
        listing=list_folder_files(s3, bucket, prefixes),
        logger=get_run_logger(),
        counts=SyncCounts(assets=len(prefixes)),
    )
    with block.get_client(max_workers=DOCDB_WORKERS) as client:
        batch.records = _fetch_batch_records(client, bucket, prefixes)
        to_read, missing = _stale_core_files(batch)
        updated = _upsert_from_s3(batch, client, to_read)
        landed = _register_missing(batch, client, missing)
        if updated or landed:
            # Re-read what changed: the server stamped new modification times.
            for record in client.fetch_records_by_filter_list("location", [*updated, *landed]):
                batch.records[record["location"]] = record
    nd_written = _write_nd_files(batch)
    result = BatchResult(
        prefixes=prefixes,
        counts=batch.counts.model_dump(),
        rows=_summary_rows(batch, nd_written),
        changes=batch.changes,
    )
    if checkpoint_key:
        put_bytes(s3, bucket, checkpoint_key, canonical_json(result.model_dump(mode="json")))
    return result


class SyncState(BaseModel):
    """``state.json`` of a sync configuration: which generation, running or complete."""

    generation: int = Field(description="Counts the runs of this configuration that started.")
    status: Literal["running", "complete"]
    cutoff: str | None = Field(default=None, description="The generation's lookback cutoff.")
    started: str | None = None
    finished: str | None = None
    request: dict[str, Any] = Field(default_factory=dict, description="The request, as JSON.")


class SyncCheckpoint:
    """Durable progress of one sync configuration in its bucket.

    ``s3://<bucket>/.neurodata/metadata-sync/<sync id>/state.json`` says whether generation
    ``n`` finished; ``gen-<n>/batch-<digest>.json`` markers hold each finished batch's
    `BatchResult`, written by the batch after its last write (so a marker exists only if the
    batch's work landed). Each batch writes its own object: no read-modify-write race.

    Example:
        ```python
        checkpoint = SyncCheckpoint(s3_client, "aind-open-data", "0123abcd")
        state, resumed = checkpoint.begin(lookback_days=14, restart=False, request={})
        ```
    """

    def __init__(self, s3: Any, bucket: str, ident: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.root = f"{CHECKPOINT_ROOT}/metadata-sync/{ident}"

    def state(self) -> SyncState | None:
        """The saved state, or None before the first run."""
        try:
            return SyncState.model_validate(
                read_json(self.s3, self.bucket, f"{self.root}/state.json")
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def save(self, state: SyncState) -> None:
        """Replace ``state.json``."""
        body = canonical_json(state.model_dump(mode="json", exclude_none=True))
        put_bytes(self.s3, self.bucket, f"{self.root}/state.json", body)

    def begin(
        self, *, lookback_days: float | None, restart: bool, request: dict[str, Any]
    ) -> tuple[SyncState, bool]:
        """Continue an unfinished generation (same cutoff) or start the next one.

        Returns:
            The running state (saved) and whether it resumes an unfinished generation.
        """
        state = self.state()
        resumed = bool(state and state.status == "running" and not restart)
        if state is not None and resumed:
            running = state.model_copy(update={"request": request})
        else:
            cutoff = None
            if lookback_days is not None:
                since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=lookback_days)
                cutoff = since.isoformat()
            running = SyncState(
                generation=state.generation + 1 if state else 1,
                status="running",
                cutoff=cutoff,
                started=utc_now_iso(),
                request=request,
            )
        self.save(running)
        return running, resumed

    def finish(self, state: SyncState) -> None:
        """Mark the generation complete."""
        self.save(
            state.model_copy(
                update={"status": "complete", "started": None, "finished": utc_now_iso()}
            )
        )

    def marker_key(self, generation: int, prefixes: list[str]) -> str:
        """S3 key of the marker of the batch ``prefixes`` in ``generation``."""
        digest = hashlib.sha1(
            f"{prefixes[0]}\n{prefixes[-1]}\n{len(prefixes)}".encode(), usedforsecurity=False
        ).hexdigest()[:20]
        return f"{self.root}/gen-{generation}/batch-{digest}.json"

    def markers(self, generation: int) -> list[BatchResult]:
        """The results of the batches of ``generation`` that finished."""
        keys: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.root}/gen-{generation}/"):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return [BatchResult.model_validate(read_json(self.s3, self.bucket, k)) for k in keys]
