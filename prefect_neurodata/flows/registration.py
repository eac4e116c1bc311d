"""Flow 1: register new AIND assets from S3 in DocDB (and Code Ocean).

Given S3 locations (or a bucket and asset prefixes), the flow validates every location, checks
that each asset folder exists and holds its core metadata files, skips what DocDB already has,
registers the rest in batches (``register_asset``, or ``register_co_result`` for Code Ocean
results) and publishes a table of location, outcome and record id. All validation happens
before the first write, and a rerun registers nothing twice.

Example:
    ```python
    from prefect_neurodata.flows.registration import RegistrationRequest, register_assets

    summary = register_assets(
        RegistrationRequest(locations=["s3://aind-open-data/ecephys_1_2024-01-01_10-00-00"]),
        docdb_block="neurodata-docdb",
    )
    print(summary.registered)
    ```
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, Field, field_validator

from prefect_neurodata.constants import DEFAULT_DOCDB_BLOCK
from prefect_neurodata.errors import NeurodataError
from prefect_neurodata.flows._artifacts import (
    failure_report,
    markdown_counts,
    publish_markdown,
    publish_table,
    request_inputs,
)
from prefect_neurodata.flows._names import first_and_count, neurodata_flow, request_value
from prefect_neurodata.flows.parameters import AwsBlockName, BucketName, DocDbBlockName, S3Location
from prefect_neurodata.tasks.common import (
    bucket_problem,
    chunks,
    prefix_problem,
    validate_locations,
)
from prefect_neurodata.tasks.docdb import (
    RegistrationOutcome,
    check_docdb,
    lookup_locations,
    register_asset_batch,
)
from prefect_neurodata.tasks.s3 import inspect_asset_folders, list_asset_prefixes

ARTIFACT_KEY = "asset-registration"


class CodeOceanResult(BaseModel):
    """A Code Ocean result asset to register with ``register_co_result``."""

    s3_location: S3Location = Field(description="s3://bucket/prefix of the result.")
    name: str = Field(min_length=1, description="Name of the result asset.")
    co_asset_id: str = Field(min_length=1, description="Code Ocean asset id.")
    co_computation_id: str = Field(min_length=1, description="Code Ocean computation id.")


class RegistrationRequest(BaseModel):
    """What to register. Give locations, or a bucket and asset prefixes, or both."""

    locations: list[S3Location] = Field(
        default_factory=list, description="Asset locations, s3://bucket/prefix."
    )
    bucket: BucketName | None = Field(
        default=None,
        description="Bucket of the prefixes below; without prefixes, every folder is scanned.",
    )
    prefixes: list[str] = Field(
        default_factory=list, description="Asset prefixes (folders) in the bucket."
    )
    starts_with: list[str] = Field(
        default_factory=list,
        description="When scanning a bucket: only folders whose names start with these.",
    )
    code_ocean_results: list[CodeOceanResult] = Field(
        default_factory=list, description="Code Ocean result assets."
    )
    required_files: list[str] = Field(
        default_factory=lambda: ["data_description.json"],
        description="Core metadata files each (non Code Ocean) asset folder must contain.",
    )
    batch_size: int = Field(
        default=50, ge=1, le=1000, description="Assets registered per task run."
    )

    @field_validator("prefixes", "starts_with")
    @classmethod
    def _prefixes_need_bucket(cls, value: list[str], info: Any) -> list[str]:
        if value and not info.data.get("bucket"):
            raise ValueError(f"{info.field_name} were given without a bucket")
        return value

    @property
    def scans_bucket(self) -> bool:
        """Whether the request scans the bucket's folders (a bucket without prefixes)."""
        return bool(self.bucket) and not self.prefixes


RegistrationRow = RegistrationOutcome
"""Outcome for one location (the task's typed outcome row)."""


class RegistrationSummary(BaseModel):
    """What a registration run did."""

    requested: int
    registered: int
    already_registered: int
    skipped: int
    failed: int
    rows: list[RegistrationRow]


class RegistrationFailed(RuntimeError, NeurodataError):
    """Some assets could not be registered (non-transient errors, e.g. rejected metadata)."""


def _collect(
    request: RegistrationRequest, scanned: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """All items to register, validated; raises ValueError naming every bad input."""
    problems: list[str] = []
    raw: list[str] = list(request.locations)
    raw += [f"s3://{request.bucket}/{prefix}" for prefix in scanned]
    if request.bucket:
        bad = bucket_problem(request.bucket)
        if bad:
            problems.append(f"bucket: {bad}")
        for index, prefix in enumerate(request.prefixes):
            bad_prefix = prefix_problem(prefix)
            if bad_prefix:
                problems.append(f"prefixes[{index}]: {bad_prefix}")
            raw.append(f"s3://{request.bucket}/{prefix.strip('/')}")
    if problems:
        raise ValueError("invalid registration request:\n  " + "\n  ".join(problems))
    items: dict[str, dict[str, Any]] = {}
    for location in validate_locations(raw):
        items.setdefault(location.uri, {"location": location.uri})
    co_uris = validate_locations([r.s3_location for r in request.code_ocean_results])
    for result, location in zip(request.code_ocean_results, co_uris, strict=True):
        items[location.uri] = {
            "location": location.uri,
            "name": result.name,
            "co_asset_id": result.co_asset_id,
            "co_computation_id": result.co_computation_id,
        }
    if not items and not request.scans_bucket:
        raise ValueError("nothing to register: give locations, bucket + prefixes, or results")
    plain = [uri for uri, item in items.items() if not item.get("co_asset_id")]
    return list(items.values()), plain


class RegistrationPlan(BaseModel):
    """What a registration run will do, decided by reads only."""

    items: list[dict[str, Any]] = Field(description="Every validated item, unique locations.")
    todo: list[dict[str, Any]] = Field(description="Items DocDB lacks, to register.")
    rows: list[RegistrationRow] = Field(description="Rows settled without writing.")


def plan_registration(request: RegistrationRequest, docdb_block: str, aws: Any) -> RegistrationPlan:
    """Validate every input and decide what to register; reads only, raises before any write.

    Raises:
        ValueError: Naming every bad location, missing folder and missing core file.
    """
    logger = get_run_logger()
    if request.bucket and bucket_problem(request.bucket):
        raise ValueError(f"invalid registration request: bucket: {bucket_problem(request.bucket)}")
    scanned: list[str] = []
    if request.scans_bucket and request.bucket:  # scans_bucket implies a bucket
        scanned = list_asset_prefixes(aws, request.bucket, request.starts_with or [""])
        logger.info("scanned s3://%s: %d asset folders", request.bucket, len(scanned))
    items, plain = _collect(request, scanned)
    check_docdb(docdb_block)
    known: dict[str, str] = {}
    lookups = [
        lookup_locations.submit(docdb_block, batch)
        for batch in chunks([item["location"] for item in items], 2000)
    ]
    for lookup in lookups:
        known.update(lookup.result())
    unknown = [location for location in plain if location not in known]
    missing: dict[str, list[str] | None] = {}
    for batch in chunks(unknown, 500):
        missing.update(inspect_asset_folders(aws, batch, list(request.required_files)))
    problems: list[str] = []
    rows: list[RegistrationRow] = []
    for location in unknown:
        absent = missing.get(location)
        if absent is None:
            problems.append(f"{location}: no such folder in S3")
        elif absent:
            problem = f"missing core metadata file(s) {', '.join(absent)}"
            if request.scans_bucket:
                rows.append(RegistrationRow(location=location, outcome="skipped", detail=problem))
            else:
                problems.append(f"{location}: {problem}")
    if problems:
        raise ValueError("cannot register; nothing was written:\n  " + "\n  ".join(problems))
    skipped = {row.location for row in rows}
    rows += [
        RegistrationRow(location=loc, outcome="already registered", record_id=record_id)
        for loc, record_id in known.items()
    ]
    todo = [item for item in items if item["location"] not in known.keys() | skipped]
    logger.info("%d to register, %d already in DocDB", len(todo), len(known))
    return RegistrationPlan(items=items, todo=todo, rows=rows)


def register_planned(
    plan: RegistrationPlan, docdb_block: str, batch_size: int
) -> list[RegistrationRow]:
    """Register the plan's items in batches (each under a claim); every row, sorted."""
    futures = [
        register_asset_batch.submit(docdb_block, batch) for batch in chunks(plan.todo, batch_size)
    ]
    rows = list(plan.rows)
    for future in futures:
        rows.extend(future.result())
    return sorted(rows, key=lambda row: row.location)


def summarize_registration(requested: int, rows: list[RegistrationRow]) -> RegistrationSummary:
    """Counts of the rows (a location another run registered counts as already registered)."""
    return RegistrationSummary(
        requested=requested,
        registered=sum(r.outcome == "registered" for r in rows),
        already_registered=sum(
            r.outcome in ("already registered", "registered by another run") for r in rows
        ),
        skipped=sum(r.outcome == "skipped" for r in rows),
        failed=sum(r.outcome == "failed" for r in rows),
        rows=rows,
    )


def report_registration(summary: RegistrationSummary) -> None:
    """Publish the outcome table and the counts."""
    rows = summary.rows
    # Thousands of "already registered" rows would bury the news: list those last.
    ordered = [r for r in rows if r.outcome != "already registered"] + [
        r for r in rows if r.outcome == "already registered"
    ]
    publish_table(
        ARTIFACT_KEY,
        [row.model_dump() for row in ordered],
        f"Asset registration: {summary.registered} registered, "
        f"{summary.already_registered} already registered, {summary.failed} failed.",
    )
    publish_markdown(
        f"{ARTIFACT_KEY}-summary",
        markdown_counts(
            "Asset registration",
            {
                "requested": summary.requested,
                "registered by this run": summary.registered,
                "already registered": summary.already_registered,
                "skipped (incomplete folder)": summary.skipped,
                "failed": summary.failed,
            },
            [f"- `{r.location}`: {r.detail}" for r in rows if r.outcome == "failed"][:50],
        ),
        "Registration counts",
    )


def _run_name() -> str:
    """Flow-run name: what is registered (e.g. ``register s3://aind-open-data/ecephys_1``)."""
    locations = list(request_value("locations") or [])
    if locations:
        return f"register {first_and_count(locations, 'locations')}"
    prefixes = list(request_value("prefixes") or [])
    bucket = request_value("bucket") or "?"
    return f"register {len(prefixes) or 'all'} folder(s) of s3://{bucket}"


@neurodata_flow("aind-asset-registration", _run_name, max_workers=4)
def register_assets(
    request: RegistrationRequest,
    docdb_block: DocDbBlockName = DEFAULT_DOCDB_BLOCK,
    aws_block: AwsBlockName | None = None,
) -> RegistrationSummary:
    """Register AIND assets that are in S3 but not yet in DocDB.

    Overlapping runs (events, schedules and UI runs at once) register each location once: every
    batch checks and registers under a claim on its locations (`prefect_neurodata.tasks.claims`).

    Args:
        request: Locations (or bucket + prefixes) and Code Ocean results to register.
        docdb_block: The saved `DocDbApiCredentials` block, by name or picked in the run form.
        aws_block: Name of an `AwsCredentials` block for S3; defaults to the DocDB block's.

    Returns:
        Counts and one row per location.

    Raises:
        ValueError: Invalid input (bad location, missing folder or core files) or an
            unreachable DocDB, before any write; the message names every problem.
        RegistrationFailed: The API rejected some registrations (after the artifact is out).
    """
    inputs = request_inputs(request, docdb_block=docdb_block)
    with failure_report(ARTIFACT_KEY, "Asset registration", inputs):
        aws = aws_block or _nested_aws(docdb_block)
        plan = plan_registration(request, docdb_block, aws)
        rows = register_planned(plan, docdb_block, request.batch_size)
        summary = summarize_registration(len(plan.items), rows)
        report_registration(summary)
        if summary.failed:
            failed = ", ".join(r.location for r in rows if r.outcome == "failed")
            raise RegistrationFailed(f"{summary.failed} registration(s) failed: {failed}")
    return summary


def _nested_aws(docdb_block: str) -> Any:
    """The DocDB block's own AWS credentials (loaded once in the flow, passed as a block)."""
    from prefect_neurodata.tasks.common import load_docdb

    return load_docdb(docdb_block).aws_credentials
