"""Exclusive claims that hold across processes and machines, so overlapping runs never write twice.

Overlapping runs are normal: a schedule fires while an operator starts the same flow from the
UI, or several events start it at once, on different workers. Work that checks and then writes
(read a ledger and send what is not done; register a location DocDB lacks; attach a QC
evaluation not attached yet) must not be done by two runs at once. A claim takes the one slot of
a Prefect **global concurrency limit**; the check and the write happen while it is held, and the
next run's check then sees the first run's write. The Prefect server arbitrates, so it holds for
runs in other processes, on other machines and in Dask workers, with no lock server of our own.

Two forms:

* `exclusive(kind, *target)`: one limit per target (a table, a snapshot, a sync
  configuration), named after it; for a whole write phase.
* `claim(kind, keys)`: many small resources at once (asset locations, QC targets), hashed onto
  a fixed set of `CLAIM_STRIPES` limits per kind, not one limit per resource (15,000 assets
  would leave 15,000 limits on the server). Two resources that share a stripe only wait for
  each other. All the limits a claim needs are taken in one request, all or nothing, so two
  claims never hold parts of each other's set (no deadlock).

Slots are leased (`LEASE_SECONDS`, renewed while the holder lives): a run killed while holding
one releases it when the lease runs out (plus the server's sweep, ~15 s), so a rerun after a
crash waits at most about a minute. The limits are created on first use with ``limit=1`` and
appear in the UI under Concurrency as ``neurodata-...``; raising one above 1 would switch the
exclusion off.

Example:
    ```python
    from prefect_neurodata.tasks.claims import claim, exclusive

    with exclusive("cave-annotations", "minnie65_public", "my_synapses"):
        ...  # read the ledger, send what is not done, mark it done

    with claim("asset-location", ["s3://aind-open-data/ecephys_1_2024-01-01_10-00-00"]):
        ...  # check what DocDB has, then register what it lacks
    ```
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import httpx
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError, ObjectAlreadyExists
from prefect.logging import get_run_logger

__all__ = [
    "ASSET_LOCATION",
    "CLAIM_STRIPES",
    "LEASE_SECONDS",
    "QC_TARGET",
    "SYNC_CONFIG",
    "claim",
    "claim_name",
    "claim_names",
    "exclusive",
]

LEASE_SECONDS = 60
"""Lease of a claim (the Prefect server's minimum); renewed every 45 s while the holder lives."""

CLAIM_STRIPES = 64
"""Limits per kind of `claim`; a resource always maps to the same one."""

ASSET_LOCATION = "asset-location"
"""Kind of claim held while registering (or de-registering) asset locations."""
QC_TARGET = "qc-target"
"""Kind of claim held while reading and extending an asset's QC evaluations."""
SYNC_CONFIG = "metadata-sync"
"""Kind of exclusive claim held by a metadata-sync run for its sync configuration."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
_MAX_NAME = 120
_known_limits: set[str] = set()
_known_lock = threading.Lock()


def claim_name(kind: str, *parts: str) -> str:
    """The concurrency-limit name of a target: readable, safe, and unique per target.

    Characters Prefect refuses in names (``/ % & < >``) and anything unusual become ``_``; a
    hash of the exact parts keeps two targets that differ only there (or in a cut tail) apart.
    """
    exact = "\x1f".join((kind, *parts))
    digest = hashlib.sha256(exact.encode()).hexdigest()[:10]
    prefix = "neurodata-"
    room = _MAX_NAME - len(prefix) - len(digest) - 1
    readable = _UNSAFE.sub("_", "-".join((kind, *parts)))[:room]
    return f"{prefix}{readable}-{digest}"


def claim_names(kind: str, keys: Collection[str]) -> list[str]:
    """The striped limit names that guard ``keys`` of ``kind`` in a `claim` (sorted, unique).

    Example:
        ```python
        claim_names("qc-target", ["a", "b"])  # e.g. ['neurodata-qc-target-17', ...]
        ```
    """
    stripes = {
        int(hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:8], 16) % CLAIM_STRIPES
        for key in keys
    }
    return [f"neurodata-{kind}-{stripe:02d}" for stripe in sorted(stripes)]


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect_neurodata.claims")


def _ensure_limits(names: Collection[str]) -> None:
    """Create the one-slot limits among ``names`` that the server lacks (safe when runs race)."""
    with _known_lock:
        missing = [name for name in names if name not in _known_limits]
    if not missing:
        return
    with get_client(sync_client=True) as client:
        for name in missing:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
            except ObjectAlreadyExists:
                pass  # another run created it first: the same limit
            except httpx.HTTPStatusError:
                # Two runs creating it at the same moment: a SQLite-backed server answers the
                # loser with 500 instead of 409. It exists if it can be read.
                client.read_global_concurrency_limit_by_name(name)
    with _known_lock:
        _known_limits.update(missing)


def _holder() -> ConcurrencyLeaseHolder | None:
    """The task or flow run that holds a claim (shown on the lease)."""
    task_run = TaskRunContext.get()
    if task_run is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
    return None


@contextmanager
def exclusive(kind: str, *target: str) -> Iterator[str]:
    """Hold the one slot of the target's global concurrency limit while the block runs.

    Args:
        kind: What is claimed, e.g. ``"cave-annotations"`` or ``"cave-snapshot"``.
        *target: What identifies the target, e.g. datastack and table.

    Yields:
        The limit's name (shown in the Prefect UI under Concurrency).
    """
    name = claim_name(kind, *target)
    logger = _logger()
    _ensure_limits([name])
    asked = time.monotonic()
    logger.info("claiming %s (%s) for this run", " / ".join(target), name)
    with concurrency(name, occupy=1, lease_duration=LEASE_SECONDS, strict=True, holder=_holder()):
        waited = time.monotonic() - asked
        if waited >= 1:
            logger.info("claimed %s after waiting %.1f s for another run", name, waited)
        yield name
    logger.info("released %s", name)


@contextmanager
def claim(
    kind: str,
    keys: Collection[str],
    *,
    timeout_seconds: float | None = None,
) -> Iterator[None]:
    """Hold the claim on ``keys`` of ``kind`` (striped limits) for the body of the block.

    Args:
        kind: Kind of resource, e.g. `ASSET_LOCATION` or `QC_TARGET`; claims of different
            kinds never wait for each other.
        keys: The resources (locations, record ids, ...); empty claims nothing.
        timeout_seconds: Give up waiting after this long (`TimeoutError`); None waits.

    Raises:
        TimeoutError: The claim was not granted within ``timeout_seconds``.
    """
    if not keys:
        yield
        return
    names = claim_names(kind, keys)
    _ensure_limits(names)
    asked = time.monotonic()
    with concurrency(
        names,
        occupy=1,
        timeout_seconds=timeout_seconds,
        lease_duration=LEASE_SECONDS,
        strict=True,
        holder=_holder(),
    ):
        _logger().info(
            "claimed %d %s(s) (%d limit(s), waited %.1f s)",
            len(keys),
            kind,
            len(names),
            time.monotonic() - asked,
        )
        yield
