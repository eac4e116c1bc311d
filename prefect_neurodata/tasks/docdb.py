"""Retryable Prefect tasks over the AIND DocDB REST API, one batch of work per task.

Every task takes the DocDB block (or its saved name), builds its own client and closes it; no
live client or secret crosses a task boundary and results are plain, secret-free data.

Writes that the API does not make idempotent (registration, QC attachment, deregistration) are
made safe to repeat here: each item is checked before it is written, and after an ambiguous
failure (the request may or may not have been applied) it is checked again instead of being
resent blindly. A task retry therefore never writes anything twice.

Example:
    ```python
    from prefect import flow
    from prefect_neurodata.tasks.docdb import lookup_locations, register_asset_batch

    @flow
    def register(locations: list[str]):
        known = lookup_locations("aind-docdb", locations)
        todo = [{"location": loc} for loc in locations if loc not in known]
        return register_asset_batch("aind-docdb", todo)
    ```
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.runtime import task_run
from pydantic import BaseModel, Field

from prefect_neurodata.blocks.docdb import DocDbApiCredentials
from prefect_neurodata.clients.http import ServiceError
from prefect_neurodata.tasks.claims import ASSET_LOCATION, QC_TARGET, claim
from prefect_neurodata.tasks.common import load_docdb
from prefect_neurodata.tasks.retries import TransientBatchError, is_transient_error, task_options

DocDb = str | DocDbApiCredentials


def reconcile_write(
    act: Callable[[], Any],
    done: Callable[[], bool],
    *,
    conflict_means_done: bool = False,
) -> tuple[str, Any]:
    """Send a non-idempotent write once; after a transient failure, ask once whether it landed.

    Items are not retried here (one retry budget, `prefect_neurodata.tasks.retries`): the HTTP
    core already resent what was safe to resend, so a transient failure that outlasted it
    fails the item, and the task retries the batch, whose lookup skips what landed. ``done()``
    tells a write whose answer was lost (it landed) from one that did not.

    Returns:
        ``("written", response)``, ``("present", None)`` when the effect was found in place
        after a lost answer, ``("conflict", exception)`` for a 409 when
        ``conflict_means_done`` (someone else wrote it), or ``("failed", exception)`` for a
        non-transient error.

    Raises:
        Exception: The transient error, when the write did not land (or the check failed too).
    """
    try:
        return "written", act()
    except Exception as exc:  # noqa: BLE001 - classified below
        if conflict_means_done and isinstance(exc, ServiceError) and exc.status_code == 409:
            return "conflict", exc
        if not is_transient_error(exc):
            return "failed", exc
        if _landed(done):
            return "present", None
        raise


def _landed(done: Callable[[], bool]) -> bool:
    """``done()``, or False when the check itself hits a transient failure."""
    try:
        return done()
    except Exception as exc:  # noqa: BLE001 - classified below
        if is_transient_error(exc):
            return False
        raise


def _is_registered(client: Any, location: str) -> bool:
    return bool(location_map(client, [location]))


def _is_deregistered(client: Any, location: str) -> bool:
    return not location_map(client, [location])


def location_map(client: Any, locations: list[str]) -> dict[str, str]:
    """``{location: _id}`` of the records at ``locations`` (one small-projection read)."""
    if not locations:
        return {}
    records = client.fetch_records_by_filter_list(
        "location", locations, projection={"_id": 1, "location": 1}
    )
    return {r["location"]: r["_id"] for r in records if "location" in r}


def other_version_locations(block: DocDbApiCredentials, locations: list[str]) -> dict[str, str]:
    """Locations among ``locations`` that the *other* collection generation (v1/v2) holds.

    Assets of both generations share buckets; an asset registered in v2 must not be registered
    again in v1 (and the other way round), as the AIND indexer learned (#182).
    """
    if not locations:
        return {}
    other = block.model_copy(update={"version": "v2" if block.version == "v1" else "v1"})
    with other.get_client() as client:
        return location_map(client, locations)


def error_message(exc: BaseException) -> str:
    """A short, secret-free line for an outcome row: the HTTP status and the server's words."""
    if isinstance(exc, ServiceError):
        return f"HTTP {exc.status_code}: {exc.server_message or exc.reason}"
    return f"{type(exc).__name__}: {exc}"


@task(name="check-docdb", **task_options(tags=["docdb"]))
def check_docdb(docdb: DocDb) -> None:
    """Fail before any write when DocDB cannot be read or writes could not be signed.

    A cheap probe: one record id is read, and the block's AWS identity must resolve to
    credentials (DocDB writes are SigV4-signed). Transient failures are retried like any read.

    Raises:
        ValueError: Naming the host and what is wrong.
    """
    block = load_docdb(docdb)
    if block.aws_credentials.get_boto3_session().get_credentials() is None:
        raise ValueError(
            f"DocDB block for {block.host}: its AWS credentials resolve to nothing, so writes "
            "could not be signed; set aws_credentials on the block"
        )
    try:
        with block.get_client() as client:
            client.retrieve_docdb_records(filter_query={}, projection={"_id": 1}, limit=1)
    except Exception as exc:
        if is_transient_error(exc):
            raise
        raise ValueError(f"DocDB at {block.host} cannot be read: {error_message(exc)}") from exc


@task(name="lookup-docdb-locations", **task_options(tags=["docdb"]))
def lookup_locations(
    docdb: DocDb, locations: list[str], include_other_version: bool = True
) -> dict[str, str]:
    """Map each location that DocDB already has to its record ``_id``.

    Args:
        docdb: DocDB block or its name.
        locations: ``s3://bucket/prefix`` locations.
        include_other_version: Also look in the other generation's collection (v1/v2).

    Returns:
        ``{location: _id}`` for the locations found; missing ones are absent.
    """
    block = load_docdb(docdb)
    with block.get_client() as client:
        found = location_map(client, list(locations))
    if include_other_version:
        rest = [loc for loc in locations if loc not in found]
        found.update(other_version_locations(block, rest))
    return found


RegistrationOutcomeKind = Literal[
    "registered",
    "already registered",
    "registered by another run",
    "skipped",
    "failed",
]


class RegistrationOutcome(BaseModel):
    """What happened to one asset location.

    ``registered``: this run registered it; ``already registered``: DocDB had it when this run
    looked (under its claim); ``registered by another run``: the API answered 409 because a
    writer outside the claims registered it first; ``skipped``: an incomplete folder left out
    of a bucket scan; ``failed``: the API rejected it (``detail`` says why).
    """

    location: str = Field(description="s3://bucket/prefix of the asset.")
    outcome: RegistrationOutcomeKind = Field(description="What happened to it.")
    record_id: str | None = Field(default=None, description="DocDB _id of its record.")
    detail: str = Field(default="", description="The API's message, or why it failed.")


def register_locations(
    client: Any, items: list[dict[str, Any]], logger: Any
) -> tuple[list[RegistrationOutcome], list[str]]:
    """Register what DocDB lacks among ``items``; call it under a claim on their locations.

    Args:
        client: An open `MetadataDbClient`.
        items: ``{"location"}`` for plain assets (``register_asset``), plus ``name``,
            ``co_asset_id`` and ``co_computation_id`` for Code Ocean results.
        logger: Run logger for per-item warnings.

    Returns:
        The outcomes of the items that settled, and the locations that still hit transient
        errors after item-level retries (to be retried by the task).
    """
    known = location_map(client, [item["location"] for item in items])
    outcomes: list[RegistrationOutcome] = []
    transient: list[str] = []
    for item in items:
        location = item["location"]
        if location in known:
            outcomes.append(
                RegistrationOutcome(
                    location=location, outcome="already registered", record_id=known[location]
                )
            )
            continue
        try:
            status, result = reconcile_write(
                functools.partial(_register, client, item),
                functools.partial(_is_registered, client, location),
                conflict_means_done=True,
            )
        except Exception as exc:  # noqa: BLE001 - transient after item retries
            logger.warning("registering %s: %s (will retry)", location, error_message(exc))
            transient.append(location)
            continue
        outcomes.append(_registration_outcome(location, status, result))
    ids = location_map(client, [o.location for o in outcomes if o.record_id is None])
    for outcome in outcomes:
        outcome.record_id = outcome.record_id or ids.get(outcome.location)
    return outcomes, transient


def _register(client: Any, item: dict[str, Any]) -> Any:
    if item.get("co_asset_id"):
        return client.register_co_result(
            item["location"], item["name"], item["co_asset_id"], item["co_computation_id"]
        )
    return client.register_asset(item["location"])


def _registration_outcome(location: str, status: str, result: Any) -> RegistrationOutcome:
    if status == "failed":
        return RegistrationOutcome(
            location=location, outcome="failed", detail=error_message(result)
        )
    if status == "conflict":
        return RegistrationOutcome(
            location=location,
            outcome="registered by another run",
            detail=result.server_message or "409 Conflict",
        )
    detail = result.get("message", "") if isinstance(result, dict) else ""
    return RegistrationOutcome(
        location=location,
        outcome="registered",
        detail=detail or "found registered after a lost answer",
    )


def _batch_label(key: str) -> Callable[[], str]:
    """A task-run name giving the size and first item of the batch parameter ``key``."""

    def name() -> str:
        items = task_run.parameters.get(key) or []
        first = items[0] if items else ""
        if isinstance(first, dict):
            first = first.get("location") or first.get("asset_id") or ""
        first = str(first).rsplit("/", 1)[-1][:60]
        more = f" +{len(items) - 1}" if len(items) > 1 else ""
        return f"{task_run.task_name}: {first}{more}"

    return name


@task(
    name="register-asset-batch",
    task_run_name=_batch_label("items"),
    **task_options(tags=["docdb", "write"]),
)
def register_asset_batch(docdb: DocDb, items: list[dict[str, Any]]) -> list[RegistrationOutcome]:
    """Register a batch of assets, skipping those DocDB already has.

    The check and the writes happen under a claim on the batch's locations (see
    `prefect_neurodata.tasks.claims`), so overlapping runs on several machines register each
    location once.

    Args:
        docdb: DocDB block or its name.
        items: ``{"location": s3 uri}`` for plain assets (``register_asset``), plus ``name``,
            ``co_asset_id`` and ``co_computation_id`` for Code Ocean results
            (``register_co_result``).

    Returns:
        One `RegistrationOutcome` per item.

    Raises:
        TransientBatchError: Some items still hit transient errors after item-level retries
            (the task is retried; what landed is found and skipped).
    """
    logger = get_run_logger()
    locations = [item["location"] for item in items]
    with (
        load_docdb(docdb).get_client() as client,
        claim(ASSET_LOCATION, locations),
    ):
        outcomes, transient = register_locations(client, items, logger)
    TransientBatchError.raise_for(transient, len(items), "registrations")
    return outcomes


@task(name="resolve-docdb-assets", **task_options(tags=["docdb"]))
def resolve_assets(docdb: DocDb, refs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Resolve asset references (``id``, ``name`` or ``location``) to DocDB records.

    Args:
        docdb: DocDB block or its name.
        refs: Each a dict with exactly one of ``id``, ``name``, ``location``.

    Returns:
        ``{"ref", "id", "name", "location"}`` per reference, in order.

    Raises:
        ValueError: Naming every reference that matches no record, or several.
    """
    projection = {"_id": 1, "name": 1, "location": 1}
    found: dict[str, list[dict[str, Any]]] = {}
    with load_docdb(docdb).get_client() as client:
        for key, field in (("id", "_id"), ("name", "name"), ("location", "location")):
            values = [ref[key] for ref in refs if ref.get(key)]
            if not values:
                continue
            for record in client.fetch_records_by_filter_list(field, values, projection):
                found.setdefault(f"{key}={record.get(field)}", []).append(record)
    resolved: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, ref in enumerate(refs):
        key, value = next((k, v) for k, v in ref.items() if v)
        matches = found.get(f"{key}={value}", [])
        if not matches:
            problems.append(f"assets[{index}]: no DocDB record has {key} {value!r}")
        elif len(matches) > 1:
            ids = ", ".join(str(m["_id"]) for m in matches[:5])
            problems.append(
                f"assets[{index}]: {key} {value!r} matches {len(matches)} records ({ids})"
            )
        else:
            record = matches[0]
            resolved.append(
                {
                    "ref": f"{key}={value}",
                    "id": record["_id"],
                    "name": record.get("name"),
                    "location": record.get("location"),
                }
            )
    if problems:
        raise ValueError("unknown or ambiguous asset(s):\n  " + "\n  ".join(problems))
    return resolved


def qc_items(record: dict[str, Any] | None, version: str) -> list[dict[str, Any]]:
    """The QC entries attached to a record: v1 evaluations, v2 metrics."""
    qc = (record or {}).get("quality_control") or {}
    items = qc.get("evaluations" if version == "v1" else "metrics") or []
    return [item for item in items if isinstance(item, dict)]


def is_attached(evaluation: dict[str, Any], attached: list[dict[str, Any]]) -> bool:
    """Whether an entry carrying every key/value of ``evaluation`` is already attached.

    The server may add computed keys (e.g. ``latest_status``) to what it stores, so a stored
    entry matches when it agrees with the submitted one on every submitted key.
    """
    return any(all(item.get(k) == v for k, v in evaluation.items()) for item in attached)


class QcOutcome(BaseModel):
    """What happened to one asset's QC evaluations."""

    asset_id: str = Field(description="DocDB _id of the asset.")
    attached: int = Field(description="Evaluations this run attached.")
    skipped: int = Field(description="Evaluations already attached when this run looked.")
    outcome: Literal["attached", "already attached", "failed"] = Field(
        description="What happened to the asset's evaluations."
    )
    detail: str = Field(default="", description="Why it failed, in the API's words.")


def _attach_one(
    client: Any, version: str, asset_id: str, evaluations: list[dict[str, Any]]
) -> QcOutcome:
    """Attach the evaluations the asset lacks (read now, under the caller's claim).

    Raises:
        Exception: The last transient error after item-level retries.
    """

    def attached_now() -> list[dict[str, Any]]:
        records = client.retrieve_docdb_records(
            filter_query={"_id": asset_id}, projection={"quality_control": 1}, limit=1
        )
        return qc_items(records[0] if records else None, version)

    current = attached_now()
    todo = [e for e in evaluations if not is_attached(e, current)]
    skipped = len(evaluations) - len(todo)
    if not todo:
        return QcOutcome(asset_id=asset_id, attached=0, skipped=skipped, outcome="already attached")
    status, result = reconcile_write(
        lambda: client.add_qc_evaluation(asset_id, {"qc_evaluation": todo}),
        lambda: all(is_attached(e, attached_now()) for e in todo),
    )
    if status == "failed":
        return QcOutcome(
            asset_id=asset_id,
            attached=0,
            skipped=skipped,
            outcome="failed",
            detail=error_message(result),
        )
    return QcOutcome(asset_id=asset_id, attached=len(todo), skipped=skipped, outcome="attached")


@task(
    name="attach-qc-batch",
    task_run_name=_batch_label("assignments"),
    **task_options(tags=["docdb", "write"]),
)
def attach_qc_batch(docdb: DocDb, assignments: list[dict[str, Any]]) -> list[QcOutcome]:
    """Attach QC evaluations to a batch of assets, skipping the ones already attached.

    Each asset's attached evaluations are read and extended under a claim on the batch's
    assets (see `prefect_neurodata.tasks.claims`), so overlapping runs attach each evaluation
    once.

    Args:
        docdb: DocDB block or its name.
        assignments: ``{"asset_id", "evaluations": [...]}`` per asset (already validated).

    Returns:
        One `QcOutcome` per asset.

    Raises:
        TransientBatchError: Some assets still hit transient errors after item-level retries.
    """
    logger = get_run_logger()
    block = load_docdb(docdb)
    outcomes: list[QcOutcome] = []
    transient: list[str] = []
    ids = [a["asset_id"] for a in assignments]
    with block.get_client() as client, claim(QC_TARGET, ids):
        for assignment in assignments:
            asset_id = assignment["asset_id"]
            try:
                outcome = _attach_one(client, block.version, asset_id, assignment["evaluations"])
            except Exception as exc:  # noqa: BLE001 - transient after retries
                logger.warning("attaching QC to %s: %s (will retry)", asset_id, error_message(exc))
                transient.append(asset_id)
                continue
            outcomes.append(outcome)
    TransientBatchError.raise_for(transient, len(assignments), "QC attachments")
    return outcomes


@task(name="index-docdb-locations", **task_options(tags=["docdb"]))
def index_locations(docdb: DocDb, bucket: str, starts_with: str = "") -> dict[str, str]:
    """``{location: _id}`` of every record located in ``bucket`` (names starting with
    ``starts_with``), read with a small projection."""
    prefix = f"s3://{bucket}/{starts_with}"
    upper = prefix + "\U0010ffff"
    with load_docdb(docdb).get_client() as client:
        records = client.retrieve_docdb_records(
            filter_query={"location": {"$gte": prefix, "$lt": upper}},
            projection={"_id": 1, "location": 1},
        )
    return {r["location"]: r["_id"] for r in records if r.get("location")}


@task(name="deregister-asset-batch", **task_options(tags=["docdb", "write"]))
def deregister_asset_batch(docdb: DocDb, locations: list[str]) -> list[dict[str, Any]]:
    """De-register assets whose data is gone; locations DocDB no longer has are skipped.

    Returns:
        ``{"location", "outcome", "detail"}`` per location.
    """
    outcomes: list[dict[str, Any]] = []
    with (
        load_docdb(docdb).get_client() as client,
        claim(ASSET_LOCATION, locations),
    ):
        known = location_map(client, locations)
        for location in locations:
            if location not in known:
                outcomes.append({"location": location, "outcome": "not in DocDB", "detail": ""})
                continue
            status, result = reconcile_write(
                functools.partial(client.deregister_asset, location),
                functools.partial(_is_deregistered, client, location),
            )
            outcomes.append(
                {
                    "location": location,
                    "outcome": "failed" if status == "failed" else "deregistered",
                    "detail": error_message(result) if status == "failed" else "",
                }
            )
    return outcomes
