"""What every CAVE task shares: block and client reuse, task options, errors, plain values.

Every task takes the `CaveCredentials` block (or, better, its saved *name*) and gets its
`CAVEclient` from `cave_client`: a saved block is read once per flow run, and a client is built
once per flow run and worker thread (keyed by the block's settings and a hash of its token),
so partition tasks skip the repeated block reads and client set-up. No live client or token
crosses a task boundary as a parameter or result.

Retries: the HTTP core already retries transient failures of idempotent requests; the task
level retries a batch the core gave up on, for transient errors only (`retries.task_options`),
so a schema error, an unknown table or a missing permission fails at once (`LIVE_OPTIONS`).
Reads of a *frozen* materialization version use ``INPUTS + TASK_SOURCE`` caching (`FROZEN_OPTIONS`).

Example:
    ```python
    from prefect_neurodata.tasks.cave_common import cave_client

    client = cave_client("neurodata-cave", "minnie65_public")
    ```
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.context import FlowRunContext, TaskRunContext

from prefect_neurodata.blocks.cave import CaveCredentials
from prefect_neurodata.clients.cave import frameworkclient as _frameworkclient  # noqa: F401
from prefect_neurodata.errors import NeurodataError
from prefect_neurodata.tasks.annotation_ledger import current_run
from prefect_neurodata.tasks.common import block_or_saved, load_saved
from prefect_neurodata.tasks.retries import task_options

# (The client package loads its modules, and pandas, lazily; the import of ``frameworkclient``
# above pays that one-off cost at import instead of inside the first task of a run.)

Cave = str | CaveCredentials

LIVE_OPTIONS: dict[str, Any] = task_options()
"""Task options of live reads and of writes: transient-only retries, no cache."""
FROZEN_OPTIONS: dict[str, Any] = task_options(
    cache_policy=INPUTS + TASK_SOURCE, persist_result=True
)
"""Task options of reads of a frozen materialization version: cached by inputs and source."""


class CaveInputError(ValueError, NeurodataError):
    """A request names something CAVE does not have (datastack, version, table, schema)."""


class CavePermissionError(PermissionError, NeurodataError):
    """The token lacks a permission the work needs (checked before any write)."""


class _RunLogRelay(logging.Handler):
    """Relays the CAVE client's warnings to the Prefect run they happen in.

    The client logs what the services say in their ``Warning`` headers (table owner notices,
    deprecations, a mangled CSV answer) on its own ``prefect_neurodata.cave`` loggers, as
    caveclient does; Prefect sends only its own loggers to the API, so without this relay those
    warnings reach the worker's console but not the run's logs in the UI. Outside a run nothing
    is relayed (the client's own logging is unchanged).
    """

    def emit(self, record: logging.LogRecord) -> None:
        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return
        try:
            get_run_logger().log(record.levelno, "CAVE: %s", record.getMessage())
        except Exception:  # a log line must never fail the task that logs it
            self.handleError(record)


def _install_run_log_relay() -> None:
    logger = logging.getLogger("prefect_neurodata.cave")
    if not any(isinstance(h, _RunLogRelay) for h in logger.handlers):
        logger.addHandler(_RunLogRelay(logging.WARNING))


_install_run_log_relay()


# A saved block is read from the Prefect API once per flow run (each read is an API round
# trip, slow when several partition tasks start at once), not once per task. The scope is the
# flow run, so a block re-saved between runs is always seen by the next run.
_BLOCKS: OrderedDict[tuple[str, str], CaveCredentials] = OrderedDict()
_BLOCKS_LOCK = threading.Lock()
_BLOCKS_MAX = 16
# Clients are reused by the tasks of one flow run on the same thread (clients are not shared
# across threads); the key carries a hash of the token, never the token.
_CLIENTS = threading.local()
_CLIENTS_MAX = 8


def load_cave(block: Cave) -> CaveCredentials:
    """The CAVE block itself, or the saved block of that name (read once per flow run)."""
    scope = current_run()
    if isinstance(block, CaveCredentials) or scope is None:
        return block_or_saved(CaveCredentials, block)
    key = (scope, block)
    with _BLOCKS_LOCK:
        cached = _BLOCKS.get(key)
    if cached is not None:
        return cached
    loaded = load_saved(CaveCredentials, block)
    with _BLOCKS_LOCK:
        _BLOCKS[key] = loaded
        while len(_BLOCKS) > _BLOCKS_MAX:
            _BLOCKS.popitem(last=False)
    return loaded


def _client_key(block: CaveCredentials, datastack: str | None, version: int | None) -> tuple:
    token = block.token.get_secret_value() if block.token else ""
    return (
        block.server_address,
        datastack or block.datastack_name,
        version,
        hashlib.sha256(token.encode()).hexdigest(),
        block.max_retries,
        block.pool_maxsize,
        tuple(block.desired_resolution or ()),
        block.request_timeout,
    )


def cave_client(block: Cave, datastack: str | None, version: int | None = None) -> Any:
    creds = load_cave(block)
    scope = current_run()
    if scope is None:
        return creds.get_client(datastack_name=datastack, version=version)
    if getattr(_CLIENTS, "scope", None) != scope:
        _CLIENTS.scope = scope
        _CLIENTS.cache = OrderedDict()
    cache: OrderedDict[tuple, Any] = _CLIENTS.cache
    key = _client_key(creds, datastack, version)
    client = cache.get(key)
    if client is None:
        client = creds.get_client(datastack_name=datastack, version=version)
        cache[key] = client
        while len(cache) > _CLIENTS_MAX:
            cache.popitem(last=False)
    return client


def json_safe(value: Any) -> Any:
    """Plain JSON values (datetimes as ISO strings, numpy scalars as Python)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
