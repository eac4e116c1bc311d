"""Flow 3: keep S3 asset folders and DocDB records in sync, both ways, and export a summary.

* **S3 -> DocDB**: each asset folder's core JSON files (``subject.json``,
  ``data_description.json``, ...) are compared with the fields of its DocDB record; only the
  fields whose file changed are upserted (``bulk_write`` in payload-sized chunks). Unchanged
  files are recognised without downloading them: their ETag is compared with the MD5 of the
  record's field in the canonical file form. Folders DocDB does not know are registered
  (``register_asset``) unless ``register_missing`` is off.
* **DocDB -> S3**: ``metadata.nd.json`` is written back where it differs from the record.
* **Lookback**: only files and records changed within ``lookback_days`` are compared.
* **Vanished prefixes**: records whose folder no longer exists are reported; they are
  de-registered only when ``deregister_vanished`` is set.
* **Export**: a flat table, one row per asset, replaces ``export_table`` in Postgres/RDS through
  the RDS client.

**Resumable.** Work is cut into batches of ``batch_size`` folders (15,000 assets at the default
500 make 30 batch task runs). Each batch, once done, writes a small marker object under
``s3://<bucket>/.neurodata/metadata-sync/<sync id>/gen-<n>/``; a ``state.json`` next to them says
whether generation ``n`` finished. A run that finds an unfinished generation continues it with
the same lookback cutoff and skips every batch that has a marker; the markers also carry the
batch's summary rows, so the export after a resume still covers every asset.

Why S3 for the checkpoint rather than a Prefect variable or artifact: it sits next to the data
it describes, it survives a Prefect server being rebuilt or replaced, each batch writes its own
object (no read-modify-write race between concurrent batches), and a marker is written by the
same task, after the batch's last write, so it exists only if the batch's work landed.

Example:
    ```python
    from prefect_neurodata.flows.metadata_sync import MetadataSyncRequest, sync_metadata

    summary = sync_metadata(
        MetadataSyncRequest(bucket="aind-open-data", lookback_days=14),
        docdb_block="neurodata-docdb",
        rds_block="neurodata-rds",
    )
    print(summary.counts)
    ```
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.futures import as_completed
from prefect_aws import AwsCredentials
from pydantic import BaseModel, Field, field_validator

from prefect_neurodata.constants import DEFAULT_DOCDB_BLOCK
from prefect_neurodata.flows._artifacts import (
    Progress,
    failure_report,
    markdown_counts,
    publish_markdown,
    publish_table,
    request_inputs,
)
from prefect_neurodata.flows._names import neurodata_flow, request_value
from prefect_neurodata.flows.parameters import (
    AwsBlockName,
    BucketName,
    DocDbBlockName,
    ExportTableName,
    RdsBlockName,
)
from prefect_neurodata.tasks.claims import SYNC_CONFIG, exclusive
from prefect_neurodata.tasks.common import (
    bucket_problem,
    chunks,
    load_aws,
    load_docdb,
    load_rds,
)
from prefect_neurodata.tasks.docdb import check_docdb, deregister_asset_batch, index_locations
from prefect_neurodata.tasks.rds import check_rds, check_table_name, export_rows
from prefect_neurodata.tasks.s3 import check_bucket, list_asset_prefixes
from prefect_neurodata.tasks.sync import (
    BatchResult,
    SyncCheckpoint,
    SyncCounts,
    SyncOptions,
    SyncState,
    sync_metadata_batch,
)

ARTIFACT_KEY = "metadata-sync"


class MetadataSyncRequest(BaseModel):
    """What to synchronise and how."""

    bucket: BucketName = Field(description="Bucket whose top-level folders are assets.")
    starts_with: list[str] = Field(
        default_factory=lambda: [""],
        description="Only folders whose names start with one of these (all by default).",
    )
    lookback_days: float | None = Field(
        default=14.0,
        ge=0,
        description="Compare only files and records changed in this many days (None: all).",
    )
    s3_to_docdb: bool = Field(default=True, description="Upsert changed core files to DocDB.")
    docdb_to_s3: bool = Field(default=True, description="Write metadata.nd.json back to S3.")
    register_missing: bool = Field(
        default=True, description="Register folders that have no DocDB record."
    )
    deregister_vanished: bool = Field(
        default=False, description="De-register records whose S3 folder is gone."
    )
    export_table: ExportTableName | None = Field(
        default="asset_summary",
        description="Postgres/RDS table replaced by the summary (needs an RDS block).",
    )
    batch_size: int = Field(
        default=500, ge=1, le=5000, description="Asset folders per batch task run."
    )
    max_payload_size: int = Field(
        default=5_000_000, ge=10_000, le=9_000_000, description="bulk_write chunk budget."
    )
    max_batches: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many batches; the next run continues (time-boxed runs).",
    )
    restart: bool = Field(
        default=False, description="Ignore an unfinished earlier run and start over."
    )

    @field_validator("bucket")
    @classmethod
    def _bucket_ok(cls, value: str) -> str:
        problem = bucket_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("starts_with")
    @classmethod
    def _starts_ok(cls, value: list[str]) -> list[str]:
        for item in value:
            if "/" in item.strip("/") or item.startswith("."):
                raise ValueError(f"starts_with entries are folder-name starts, got {item!r}")
        return value or [""]

    @field_validator("export_table")
    @classmethod
    def _table_ok(cls, value: str | None) -> str | None:
        return None if value is None else check_table_name(value)


"""What each key of `MetadataSyncSummary.counts` means, as the report shows it."""


class MetadataSyncSummary(BaseModel):
    """What a sync run did."""

    bucket: str
    sync_id: str
    generation: int
    resumed: bool
    complete: bool
    cutoff: str | None
    assets: int
    batches_run: int
    batches_skipped: int
    counts: dict[str, int]
    vanished: list[str]
    deregistered: list[str]
    exported_rows: int


def sync_id(block: Any, request: MetadataSyncRequest) -> str:
    """Identity of a sync configuration: runs with the same one share checkpoints."""
    key = json.dumps(
        [
            block.host,
            block.version,
            block.database,
            block.collection,
            request.bucket,
            sorted(request.starts_with),
            request.s3_to_docdb,
            request.docdb_to_s3,
            request.register_missing,
        ]
    )
    return hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]


@dataclass
class SyncPlan:
    """What a sync run will do: its generation, the folders and the batches still to run."""

    ident: str
    checkpoint: SyncCheckpoint
    state: SyncState
    resumed: bool
    prefixes: list[str]
    done: list[BatchResult]
    batches: list[list[str]]
    complete: bool


def check_backends(
    request: MetadataSyncRequest,
    docdb_block: str,
    aws_block: str | None,
    rds_block: str | None,
) -> tuple[Any, AwsCredentials, Any]:
    """Load the blocks and probe every backend the run writes to, before any write.

    Returns:
        The DocDB block, the AWS credentials for S3 and the RDS block (None: no export).

    Raises:
        ValueError: Naming the backend that cannot be reached or used.
    """
    block = load_docdb(docdb_block)
    s3 = load_aws(aws_block, block)
    rds = load_rds(rds_block) if (rds_block and request.export_table) else None
    check_bucket(s3, request.bucket)
    check_docdb(block)
    if rds is not None:
        check_rds(rds)
    return block, s3, rds


def plan_sync(request: MetadataSyncRequest, s3: AwsCredentials, ident: str) -> SyncPlan:
    """Open the checkpoint (resume or start a generation) and cut the folders into batches."""
    checkpoint = SyncCheckpoint(s3.get_s3_client(), request.bucket, ident)
    state, resumed = checkpoint.begin(
        lookback_days=request.lookback_days,
        restart=request.restart,
        request=request.model_dump(mode="json"),
    )
    prefixes = list_asset_prefixes(s3, request.bucket, request.starts_with)
    done = checkpoint.markers(state.generation) if resumed else []
    done_prefixes = {p for marker in done for p in marker.prefixes}
    remaining = list(chunks([p for p in prefixes if p not in done_prefixes], request.batch_size))
    batches = remaining[: request.max_batches] if request.max_batches else remaining
    get_run_logger().info(
        "sync %s gen %d: %d folders, %d already done, %d batch(es) to run",
        ident,
        state.generation,
        len(prefixes),
        len(done_prefixes),
        len(batches),
    )
    return SyncPlan(
        ident=ident,
        checkpoint=checkpoint,
        state=state,
        resumed=resumed,
        prefixes=prefixes,
        done=done,
        batches=batches,
        complete=len(batches) == len(remaining),
    )


def run_batches(
    plan: SyncPlan, request: MetadataSyncRequest, docdb_block: str, s3: AwsCredentials
) -> list[BatchResult]:
    """Run the plan's batches (two at a time), with a progress bar; every batch's result."""
    options = SyncOptions(
        cutoff=plan.state.cutoff,
        s3_to_docdb=request.s3_to_docdb,
        docdb_to_s3=request.docdb_to_s3,
        register_missing=request.register_missing,
        max_payload_size=request.max_payload_size,
    )
    generation = plan.state.generation
    futures = [
        sync_metadata_batch.submit(
            docdb_block,
            s3,
            request.bucket,
            batch,
            options,
            plan.checkpoint.marker_key(generation, batch),
        )
        for batch in plan.batches
    ]
    progress = Progress(
        f"{ARTIFACT_KEY}-progress",
        len(plan.prefixes),
        f"Asset folders of s3://{request.bucket} synchronised (generation {generation})",
    )
    progress.advance(sum(len(marker.prefixes) for marker in plan.done))
    results = list(plan.done)
    for future in as_completed(futures):
        result = future.result()
        results.append(result)
        progress.advance(len(result.prefixes))
    return results


def find_vanished(plan: SyncPlan, request: MetadataSyncRequest, docdb_block: str) -> list[str]:
    """Top-level locations DocDB has in the bucket (and scope) whose folder is gone."""
    s3_locations = {f"s3://{request.bucket}/{p}" for p in plan.prefixes}
    known: dict[str, str] = {}
    for start in request.starts_with:
        known.update(index_locations(docdb_block, request.bucket, start))
    root = f"s3://{request.bucket}/"
    return sorted(loc for loc in known if loc not in s3_locations and "/" not in loc[len(root) :])


def finish_sync(
    plan: SyncPlan,
    results: list[BatchResult],
    request: MetadataSyncRequest,
    docdb_block: str,
    rds: Any,
) -> tuple[MetadataSyncSummary, list[dict[str, Any]]]:
    """After a complete pass: vanished prefixes, de-registration, export, checkpoint done."""
    counts: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    for result in results:
        for key, value in result.counts.items():
            counts[key] = counts.get(key, 0) + value
        rows.extend(result.rows)
        changes.extend(result.changes)
    vanished: list[str] = []
    deregistered: list[str] = []
    exported = 0
    if plan.complete:
        vanished = find_vanished(plan, request, docdb_block)
        if vanished and request.deregister_vanished:
            for batch in chunks(vanished, 200):
                for outcome in deregister_asset_batch(docdb_block, batch):
                    if outcome["outcome"] == "deregistered":
                        deregistered.append(outcome["location"])
        if rds is not None and request.export_table and rows:
            rows.sort(key=lambda row: row["location"] or "")
            exported = export_rows(rds, request.export_table, rows)
        plan.checkpoint.finish(plan.state)
    summary = MetadataSyncSummary(
        bucket=request.bucket,
        sync_id=plan.ident,
        generation=plan.state.generation,
        resumed=plan.resumed,
        complete=plan.complete,
        cutoff=plan.state.cutoff,
        assets=len(plan.prefixes),
        batches_run=len(plan.batches),
        batches_skipped=len(plan.done),
        counts=counts,
        vanished=vanished,
        deregistered=deregistered,
        exported_rows=exported,
    )
    return summary, changes


def _run_name() -> str:
    """Flow-run name: bucket and window (``sync s3://aind-open-data, last 14 days``)."""
    days = request_value("lookback_days")
    window = f"last {days:g} days" if isinstance(days, (int, float)) else "everything"
    return f"sync s3://{request_value('bucket') or '?'}, {window}"


@neurodata_flow("aind-metadata-sync", _run_name, max_workers=2)
def sync_metadata(
    request: MetadataSyncRequest,
    docdb_block: DocDbBlockName = DEFAULT_DOCDB_BLOCK,
    aws_block: AwsBlockName | None = None,
    rds_block: RdsBlockName | None = None,
) -> MetadataSyncSummary:
    """Synchronise a bucket's asset folders with DocDB (both ways) and export a summary table.

    Overlapping runs of one sync configuration take turns (a claim on the configuration, see
    `prefect_neurodata.tasks.claims`): a later run waits, then finds the work done. Runs of
    different configurations register each unknown folder once (a claim per location).

    Args:
        request: Bucket, scope, directions, lookback and batching.
        docdb_block: The saved `DocDbApiCredentials` block, by name or picked in the run form.
        aws_block: Name of an `AwsCredentials` block for S3; defaults to the DocDB block's.
        rds_block: The saved `RdsCredentials` block, by name or picked in the run form; the
            export is skipped without it.

    Returns:
        Counts, vanished prefixes and checkpoint information.

    Raises:
        ValueError: Invalid input, or a bucket, DocDB or RDS database that cannot be reached
            or used with the blocks' credentials, before any write.
    """
    inputs = request_inputs(request, docdb_block=docdb_block, rds_block=rds_block)
    with failure_report(ARTIFACT_KEY, "Metadata sync", inputs):
        block, s3, rds = check_backends(request, docdb_block, aws_block, rds_block)
        ident = sync_id(block, request)
        # One run per sync configuration at a time: the others wait, then find the work done.
        with exclusive(SYNC_CONFIG, request.bucket, ident):
            plan = plan_sync(request, s3, ident)
            results = run_batches(plan, request, docdb_block, s3)
            summary, changes = finish_sync(plan, results, request, docdb_block, rds)
    report_sync(summary, changes, request)
    return summary


def report_sync(
    summary: MetadataSyncSummary, changes: list[dict[str, Any]], request: MetadataSyncRequest
) -> None:
    """Publish the counts (with human labels), vanished prefixes and the table of changes."""
    labels = SyncCounts.labels()
    notes = [
        f"- sync id `{summary.sync_id}`, generation {summary.generation}"
        + (" (resumed)" if summary.resumed else ""),
        f"- lookback cutoff: {summary.cutoff or 'none (everything compared)'}",
    ]
    if not summary.complete:
        notes.append("- **partial run**: the next run continues where this one stopped")
    if summary.vanished:
        action = "de-registered" if request.deregister_vanished else "reported only"
        notes.append(f"- {len(summary.vanished)} vanished prefix(es), {action}:")
        notes += [f"  - `{loc}`" for loc in summary.vanished[:100]]
    publish_markdown(
        f"{ARTIFACT_KEY}-report",
        markdown_counts(
            f"Metadata sync of s3://{summary.bucket}",
            {
                "asset folders": summary.assets,
                "batches run / skipped (checkpoint)": f"{summary.batches_run} / "
                f"{summary.batches_skipped}",
                **{labels.get(key, key): value for key, value in summary.counts.items()},
                "vanished": len(summary.vanished),
                "de-registered": len(summary.deregistered),
                "rows exported": summary.exported_rows,
            },
            notes,
        ),
        "Metadata sync report",
    )
    publish_table(
        f"{ARTIFACT_KEY}-changes",
        sorted(changes, key=lambda c: c["location"]),
        f"{len(changes)} asset(s) changed by this sync.",
    )
