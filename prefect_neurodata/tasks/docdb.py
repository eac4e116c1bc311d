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

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task

from prefect_neurodata.blocks.docdb import DocDbApiCredentials
from prefect_neurodata.clients.http import ServiceError
from prefect_neurodata.tasks.common import load_docdb
from prefect_neurodata.tasks.retries import TransientBatchError, is_transient_error, task_options

DocDb = str | DocDbApiCredentials


def _reconcile(
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
        after a lost answer, or ``("failed", exception)`` for a non-transient error.

    Raises:
        Exception: The transient error, when the write did not land (or the check failed too).
    """
    try:
        return "written", act()
    except Exception as exc:  # noqa: BLE001 - classified below
        if conflict_means_done and isinstance(exc, ServiceError) and exc.status_code == 409:
            return "present", None
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


def _location_map(client: Any, locations: list[str]) -> dict[str, str]:
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
        return _location_map(client, locations)


def _message(exc: BaseException) -> str:
    if isinstance(exc, ServiceError):
        return f"HTTP {exc.status_code}: {exc.server_message or exc.reason}"
    return f"{type(exc).__name__}: {exc}"


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
        found = _location_map(client, list(locations))
    if include_other_version:
        rest = [loc for loc in locations if loc not in found]
        found.update(other_version_locations(block, rest))
    return found


@task(name="register-asset-batch", **task_options(tags=["docdb", "write"]))
def register_asset_batch(docdb: DocDb, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register a batch of assets, skipping those DocDB already has.

    Args:
        docdb: DocDB block or its name.
        items: ``{"location": s3 uri}`` for plain assets (``register_asset``), plus ``name``,
            ``co_asset_id`` and ``co_computation_id`` for Code Ocean results
            (``register_co_result``).

    Returns:
        One ``{"location", "outcome", "record_id", "detail"}`` per item, where outcome is
        ``registered``, ``already registered`` or ``failed``.

    Raises:
        TransientBatchError: Some items still hit transient errors after the HTTP core's retries
            (the task is retried; what landed is found and skipped).
    """
    logger = get_run_logger()
    outcomes: list[dict[str, Any]] = []
    transient: list[str] = []
    with load_docdb(docdb).get_client() as client:
        locations = [item["location"] for item in items]
        known = _location_map(client, locations)
        for item in items:
            location = item["location"]
            if location in known:
                outcomes.append(
                    {
                        "location": location,
                        "outcome": "already registered",
                        "record_id": known[location],
                        "detail": "",
                    }
                )
                continue
            if item.get("co_asset_id"):

                def act(item: dict[str, Any] = item) -> Any:
                    return client.register_co_result(
                        item["location"],
                        item["name"],
                        item["co_asset_id"],
                        item["co_computation_id"],
                    )
            else:

                def act(location: str = location) -> Any:
                    return client.register_asset(location)

            def present(location: str = location) -> bool:
                return bool(_location_map(client, [location]))

            try:
                status, result = _reconcile(act, present, conflict_means_done=True)
            except Exception as exc:  # noqa: BLE001 - transient after retries
                logger.warning("registering %s: %s (will retry)", location, _message(exc))
                transient.append(location)
                continue
            if status == "failed":
                outcomes.append(
                    {
                        "location": location,
                        "outcome": "failed",
                        "record_id": None,
                        "detail": _message(result),
                    }
                )
            else:
                detail = result.get("message", "") if isinstance(result, dict) else ""
                outcomes.append(
                    {
                        "location": location,
                        "outcome": "registered",
                        "record_id": None,
                        "detail": detail or "found registered after a lost answer",
                    }
                )
        if transient:
            raise TransientBatchError(
                f"{len(transient)} of {len(items)} registrations hit transient errors "
                f"(first: {transient[0]}); registered so far are skipped on retry"
            )
        ids = _location_map(client, [o["location"] for o in outcomes if not o["record_id"]])
    for outcome in outcomes:
        if outcome["record_id"] is None:
            outcome["record_id"] = ids.get(outcome["location"])
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


@task(name="attach-qc-batch", **task_options(tags=["docdb", "write"]))
def attach_qc_batch(docdb: DocDb, assignments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attach QC evaluations to a batch of assets, skipping the ones already attached.

    Args:
        docdb: DocDB block or its name.
        assignments: ``{"asset_id", "evaluations": [...]}`` per asset (already validated).

    Returns:
        ``{"asset_id", "attached", "skipped", "outcome", "detail"}`` per asset.

    Raises:
        TransientBatchError: Some assets still hit transient errors after the HTTP core's retries.
    """
    logger = get_run_logger()
    block = load_docdb(docdb)
    outcomes: list[dict[str, Any]] = []
    transient: list[str] = []
    with block.get_client() as client:

        def attached_now(asset_id: str) -> list[dict[str, Any]]:
            records = client.retrieve_docdb_records(
                filter_query={"_id": asset_id}, projection={"quality_control": 1}, limit=1
            )
            return qc_items(records[0] if records else None, block.version)

        ids = [a["asset_id"] for a in assignments]
        current = {
            r["_id"]: qc_items(r, block.version)
            for r in client.fetch_records_by_filter_list(
                "_id", ids, projection={"quality_control": 1}
            )
        }
        for assignment in assignments:
            asset_id = assignment["asset_id"]
            evaluations = assignment["evaluations"]
            todo = [e for e in evaluations if not is_attached(e, current.get(asset_id, []))]
            skipped = len(evaluations) - len(todo)
            if not todo:
                outcomes.append(
                    {
                        "asset_id": asset_id,
                        "attached": 0,
                        "skipped": skipped,
                        "outcome": "already attached",
                        "detail": "",
                    }
                )
                continue

            def act(asset_id: str = asset_id, todo: list[dict[str, Any]] = todo) -> Any:
                return client.add_qc_evaluation(asset_id, {"qc_evaluation": todo})

            def present(asset_id: str = asset_id, todo: list[dict[str, Any]] = todo) -> bool:
                now = attached_now(asset_id)
                return all(is_attached(e, now) for e in todo)

            try:
                status, result = _reconcile(act, present)
            except Exception as exc:  # noqa: BLE001 - transient after retries
                logger.warning("attaching QC to %s: %s (will retry)", asset_id, _message(exc))
                transient.append(asset_id)
                continue
            outcomes.append(
                {
                    "asset_id": asset_id,
                    "attached": 0 if status == "failed" else len(todo),
                    "skipped": skipped,
                    "outcome": "failed" if status == "failed" else "attached",
                    "detail": _message(result) if status == "failed" else "",
                }
            )
    if transient:
        raise TransientBatchError(
            f"{len(transient)} of {len(assignments)} QC attachments hit transient errors "
            f"(first asset: {transient[0]}); attached ones are skipped on retry"
        )
    return outcomes


@task(name="index-docdb-locations", **task_options(tags=["docdb"]))
def index_locations(docdb: DocDb, bucket: str, starts_with: str = "") -> dict[str, str]:
    """``{location: _id}`` of every record located in ``bucket`` (names starting with
    ``starts_with``), read with a small projection, streamed: only the index is held, never
    the pages (`Client.iter_docdb_records`)."""
    prefix = f"s3://{bucket}/{starts_with}"
    upper = prefix + "\U0010ffff"
    with load_docdb(docdb).get_client() as client:
        return {
            r["location"]: r["_id"]
            for r in client.iter_docdb_records(
                filter_query={"location": {"$gte": prefix, "$lt": upper}},
                projection={"_id": 1, "location": 1},
            )
            if r.get("location")
        }


@task(name="deregister-asset-batch", **task_options(tags=["docdb", "write"]))
def deregister_asset_batch(docdb: DocDb, locations: list[str]) -> list[dict[str, Any]]:
    """De-register assets whose data is gone; locations DocDB no longer has are skipped.

    Returns:
        ``{"location", "outcome", "detail"}`` per location.
    """
    outcomes: list[dict[str, Any]] = []
    with load_docdb(docdb).get_client() as client:
        known = _location_map(client, locations)
        for location in locations:
            if location not in known:
                outcomes.append({"location": location, "outcome": "not in DocDB", "detail": ""})
                continue
            status, result = _reconcile(
                lambda location=location: client.deregister_asset(location),
                lambda location=location: not _location_map(client, [location]),
            )
            outcomes.append(
                {
                    "location": location,
                    "outcome": "failed" if status == "failed" else "deregistered",
                    "detail": _message(result) if status == "failed" else "",
                }
            )
    return outcomes
