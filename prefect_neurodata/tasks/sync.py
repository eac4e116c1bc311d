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
from typing import Any

from prefect import get_run_logger, task
from prefect_aws import AwsCredentials

from prefect_neurodata.blocks.docdb import DocDbApiCredentials
from prefect_neurodata.clients.http import map_bounded
from prefect_neurodata.tasks.common import load_aws, load_docdb
from prefect_neurodata.tasks.docdb import (
    _location_map,
    _message,
    _reconcile,
    other_version_locations,
)
from prefect_neurodata.tasks.retries import TransientBatchError, task_options
from prefect_neurodata.tasks.s3 import (
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


@task(name="sync-metadata-batch", **task_options(tags=["docdb", "write", "s3"]))
def sync_metadata_batch(
    docdb: str | DocDbApiCredentials,
    aws: str | AwsCredentials | None,
    bucket: str,
    prefixes: list[str],
    options: dict[str, Any],
) -> dict[str, Any]:
    """Synchronise one batch of asset folders with DocDB, both ways, then checkpoint it.

    Args:
        docdb: DocDB block or its name.
        aws: `AwsCredentials` block (or name) for S3; None uses the DocDB block's.
        bucket: The bucket.
        prefixes: Sorted asset folders of this batch.
        options: ``cutoff`` (ISO time or None: consider only S3 files and records changed
            since), ``s3_to_docdb``, ``docdb_to_s3``, ``register_missing`` (bools),
            ``max_payload_size`` (bulk_write chunk budget), ``checkpoint_key`` (S3 key of
            this batch's marker, or None).

    Returns:
        ``{"prefixes", "counts", "rows", "changes"}``: counts per outcome, one summary row per
        asset, and the assets this run changed (for the report).
    """
    logger = get_run_logger()
    block = load_docdb(docdb)
    version = block.version
    core_names = CORE_FILES[version]
    s3 = load_aws(aws, block).get_s3_client()
    cutoff = parse_time(options.get("cutoff"))
    counts = {
        "assets": len(prefixes),
        "fields_upserted": 0,
        "records_upserted": 0,
        "registered": 0,
        "unregistered": 0,
        "nd_written": 0,
        "file_errors": 0,
        "other_version": 0,
    }
    changes: list[dict[str, Any]] = []
    listing = list_folder_files(s3, bucket, prefixes)

    def is_recent(obj: dict[str, Any]) -> bool:
        if cutoff is None:
            return True
        modified = obj.get("LastModified")
        return modified is None or parse_time(modified) >= cutoff

    with block.get_client(max_workers=DOCDB_WORKERS) as client:
        records = _fetch_batch_records(client, bucket, prefixes)

        # S3 -> DocDB: which core files differ from their record's field?
        to_read: list[tuple[str, str, str]] = []  # (location, field, key)
        missing: list[str] = []
        for prefix in prefixes:
            location = f"s3://{bucket}/{prefix}"
            files = listing.get(prefix, {})
            record = records.get(location)
            if record is None:
                if files:
                    missing.append(prefix)
                continue
            if not options.get("s3_to_docdb", True):
                continue
            record_stamp = parse_time(record.get(STAMP_FIELD[version]))
            for name in core_names:
                obj = files.get(f"{name}.json")
                if obj is None or not is_recent(obj):
                    continue
                current = record.get(name)
                if current is not None and not _file_is_newer(obj, record_stamp):
                    # The record was written after this file (e.g. a QC evaluation was
                    # attached): DocDB holds the newer truth, so the file must not overwrite it.
                    continue
                if current is not None and md5_hex(canonical_json(current)) == etag(obj):
                    continue
                to_read.append((location, name, f"{prefix}/{name}.json"))

        def read(item: tuple[str, str, str]) -> tuple[Any, str | None]:
            try:
                return read_json(s3, bucket, item[2]), None
            except ValueError as exc:  # corrupt JSON: report, leave DocDB as it is
                return None, f"{item[2]}: {exc}"

        updates: dict[str, dict[str, Any]] = {}
        for (location, name, _key), (value, error) in zip(
            to_read, map_bounded(read, to_read, S3_THREADS), strict=True
        ):
            if error:
                counts["file_errors"] += 1
                logger.warning("skipping unreadable file %s", error)
                continue
            if value != records[location].get(name):
                updates.setdefault(location, {"_id": records[location]["_id"]})[name] = value
        if updates:
            client.upsert_list_of_docdb_records(
                list(updates.values()), max_payload_size=options.get("max_payload_size", 5e6)
            )
            counts["records_upserted"] = len(updates)
            counts["fields_upserted"] = sum(len(u) - 1 for u in updates.values())
            for location, update in updates.items():
                changes.append(
                    {
                        "location": location,
                        "change": "fields updated from S3",
                        "detail": ", ".join(sorted(k for k in update if k != "_id")),
                    }
                )

        # Folders DocDB does not know: register them (the API builds the record).
        registered: list[str] = []
        transient: list[str] = []
        elsewhere = other_version_locations(block, [f"s3://{bucket}/{p}" for p in missing])
        counts["other_version"] = len(elsewhere)
        missing = [p for p in missing if f"s3://{bucket}/{p}" not in elsewhere]
        for prefix in missing:
            location = f"s3://{bucket}/{prefix}"
            if not options.get("register_missing", True) or (
                "data_description.json" not in listing[prefix]
            ):
                counts["unregistered"] += 1
                continue
            try:
                status, result = _reconcile(
                    lambda location=location: client.register_asset(location),
                    lambda location=location: bool(_location_map(client, [location])),
                    conflict_means_done=True,
                )
            except Exception as exc:  # noqa: BLE001 - transient after the core retries
                logger.warning("registering %s: %s (will retry)", location, _message(exc))
                transient.append(location)
                continue
            if status == "failed":
                counts["unregistered"] += 1
                changes.append(
                    {
                        "location": location,
                        "change": "registration failed",
                        "detail": _message(result),
                    }
                )
            else:
                registered.append(location)
                changes.append({"location": location, "change": "registered", "detail": ""})
        if transient:
            raise TransientBatchError(
                f"{len(transient)} registrations hit transient errors (first: {transient[0]})"
            )
        counts["registered"] = len(registered)
        if updates or registered:
            # Re-read what changed: the server stamped new modification times.
            fresh = client.fetch_records_by_filter_list("location", [*updates, *registered])
            for record in fresh:
                records[record["location"]] = record

    # DocDB -> S3: metadata.nd.json where it differs from the record.
    writes: list[tuple[str, bytes]] = []
    if options.get("docdb_to_s3", True):
        for location, record in records.items():
            prefix = location[len(f"s3://{bucket}/") :]
            files = listing.get(prefix, {})
            if not files:
                continue  # the folder is gone: reported as vanished by the flow
            nd = files.get(ND_FILE)
            stamp = parse_time(record.get(STAMP_FIELD[version]))
            if nd is not None and cutoff is not None and stamp is not None and stamp < cutoff:
                continue
            body = canonical_json(record)
            if nd is not None and etag(nd) == md5_hex(body):
                continue
            writes.append((f"{prefix}/{ND_FILE}", body))
        map_bounded(lambda item: put_bytes(s3, bucket, item[0], item[1]), writes, S3_THREADS)
        counts["nd_written"] = len(writes)

    changed = {c["location"]: c["change"] for c in changes}
    rows = []
    for prefix in prefixes:
        location = f"s3://{bucket}/{prefix}"
        record = records.get(location)
        if record is None:
            continue
        outcome = changed.get(location, "unchanged")
        rows.append(summary_row(record, version, outcome, len(listing.get(prefix, {}))))
    result = {"prefixes": prefixes, "counts": counts, "rows": rows, "changes": changes}
    if options.get("checkpoint_key"):
        put_bytes(s3, bucket, options["checkpoint_key"], canonical_json(result))
    return result
