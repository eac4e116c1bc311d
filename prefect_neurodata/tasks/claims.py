"""Claims on shared resources, so overlapping flow runs never write the same thing twice.

Schedules, UI runs and events start the same flow at once, on several machines. A write that is
"check, then write" (register a location DocDB lacks, attach a QC evaluation not attached yet)
is only safe when no other run checks and writes the same resource in between. The DocDB API
cannot be asked to refuse a duplicate (it is not documented to), so the runs exclude each other
through **Prefect global concurrency limits**: a claim takes one slot of a limit of 1, the check
and the write happen while it is held, and the next run's check then sees the first run's write.

Why this holds across machines: the slots live in the Prefect server's database, and a slot is
a lease the holder renews in the background; process workers on several hosts, Dask workers
and ad-hoc Python runs all ask the same server. A holder that dies stops renewing, and its slot
frees itself when the lease runs out (`CLAIM_LEASE_SECONDS`, the server's minimum, plus the
server's sweep interval), so a crashed run delays the resource's next writer by about a minute
and never blocks it for good.

Resources are hashed onto a fixed set of limits per kind (`CLAIM_STRIPES`), not one limit per
resource: 15,000 assets would otherwise leave 15,000 limits on the server. Two resources that
share a stripe only wait for each other. All the limits a claim needs are taken in one request,
all or nothing, so two claims can never hold parts of each other's set (no deadlock).

The limits are created on first use with ``limit=1`` and appear in the UI under
Concurrency as ``neurodata-<kind>-<nn>``; raising one above 1 would switch the exclusion off.

Example:
    ```python
    from prefect_neurodata.tasks.claims import claim

    with claim("asset-location", ["s3://aind-open-data/ecephys_1_2024-01-01_10-00-00"]):
        ...  # check what DocDB has, then register what it lacks
    ```
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectAlreadyExists
from prefect.logging import get_logger

CLAIM_STRIPES = 64
"""Limits per kind of resource; a resource always maps to the same one."""

CLAIM_PREFIX = "neurodata"

CLAIM_LEASE_SECONDS = 60.0
"""Lease of a claim, renewed every 45 s while held; the Prefect server accepts 60 s at least."""

ASSET_LOCATION = "asset-location"
"""Kind of claim held while registering (or checking) asset locations."""
QC_TARGET = "qc-target"
"""Kind of claim held while reading and extending an asset's QC evaluations."""
SYNC_CONFIG = "metadata-sync"
"""Kind of claim held by a metadata-sync run for its sync configuration."""

_known_limits: set[str] = set()
_known_lock = threading.Lock()


def claim_names(kind: str, keys: Collection[str]) -> list[str]:
    """The global concurrency limit names that guard ``keys`` of ``kind`` (sorted, unique).

    Example:
        ```python
        claim_names("qc-target", ["a", "b"])  # e.g. ['neurodata-qc-target-17', ...]
        ```
    """
    stripes = {
        int(hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:8], 16) % CLAIM_STRIPES
        for key in keys
    }
    return [f"{CLAIM_PREFIX}-{kind}-{stripe:02d}" for stripe in sorted(stripes)]


def ensure_claim_limits(names: Collection[str]) -> None:
    """Create the limits among ``names`` that the server lacks (``limit=1``, active)."""
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
def claim(
    kind: str,
    keys: Collection[str],
    *,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    timeout_seconds: float | None = None,
) -> Iterator[None]:
    """Hold the claim on ``keys`` of ``kind`` for the body of the ``with`` block.

    Args:
        kind: Kind of resource, e.g. ``asset-location`` or ``qc-target``; claims of
            different kinds never wait for each other.
        keys: The resources (locations, record ids, ...); empty claims nothing.
        logger: Where to say what is claimed and how long the wait took.
        timeout_seconds: Give up waiting after this long (`TimeoutError`); None waits.

    Raises:
        TimeoutError: The claim was not granted within ``timeout_seconds``.
    """
    if not keys:
        yield
        return
    log = logger or get_logger("prefect_neurodata.claims")
    names = claim_names(kind, keys)
    ensure_claim_limits(names)
    started = time.monotonic()
    with concurrency(
        names,
        occupy=1,
        timeout_seconds=timeout_seconds,
        lease_duration=CLAIM_LEASE_SECONDS,
        strict=True,
        holder=_holder(),
    ):
        log.info(
            "claimed %d %s(s) (%d limit(s), waited %.1f s)",
            len(keys),
            kind,
            len(names),
            time.monotonic() - started,
        )
        yield
