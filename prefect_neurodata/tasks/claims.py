"""Exclusive claims on a target (a table, a snapshot) that hold across processes and machines.

Overlapping runs are normal: a schedule fires while an operator starts the same flow from the
UI, or several events start it at once, on different workers. Work that reads a ledger and then
writes (an annotation upload, a snapshot and its manifest) must not be done by two runs at
once, or both send the same chunk. `exclusive` makes the whole write phase of a run exclusive
per target with a Prefect **global concurrency limit** of one slot named after the target: the
Prefect server arbitrates, so it holds for runs in other processes, on other machines and in
Dask workers, with no lock server of our own. A second run waits, then finds the first run's
work done in the ledger or manifest and only reports it.

The slot is leased (`LEASE_SECONDS`, renewed while the run lives): a run killed while holding
it releases it when the lease runs out, so a rerun after a crash waits at most about that long.

Example:
    ```python
    from prefect_neurodata.tasks.claims import exclusive

    with exclusive("cave-annotations", "minnie65_public", "my_synapses"):
        ...  # read the ledger, send what is not done, mark it done
    ```
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger

__all__ = ["LEASE_SECONDS", "claim_name", "exclusive"]

LEASE_SECONDS = 60
"""Lease of a claim (the Prefect server's minimum); renewed while the holder lives."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
_MAX_NAME = 120


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


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect_neurodata.claims")


def _ensure_limit(name: str) -> None:
    """Create the one-slot limit ``name`` unless it exists (safe when runs race to create it)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


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
    _ensure_limit(name)
    flow_run = FlowRunContext.get()
    holder = (
        ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
        if flow_run is not None and flow_run.flow_run is not None
        else None
    )
    asked = time.monotonic()
    logger.info("claiming %s (%s) for this run", " / ".join(target), name)
    with concurrency(name, occupy=1, lease_duration=LEASE_SECONDS, strict=True, holder=holder):
        waited = time.monotonic() - asked
        if waited >= 1:
            logger.info("claimed %s after waiting %.1f s for another run", name, waited)
        yield name
    logger.info("released %s", name)
