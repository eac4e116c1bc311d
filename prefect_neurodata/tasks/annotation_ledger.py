"""The durable ledger of an annotation upload: a typed header and one typed entry per chunk.

A ledger is a directory (local or ``s3://``) named after a content hash of the upload, so the
same upload always finds the same ledger:

```
{ledger}/ledger.json            LedgerHeader: what is uploaded where, in how many chunks
{ledger}/chunk-000000.json      ChunkEntry: pending (before the request) -> done (after)
{ledger}/id_map.csv             the whole id mapping, written at the end of a run
```

A chunk is written ``pending`` (with the table's live row count for inserts) before its
request and ``done`` (with the new ids) after the server answered; a rerun skips ``done``
chunks and reconciles ``pending`` ones (see `prefect_neurodata.tasks.cave.upload_annotation_chunk`).
Every entry names the flow run that wrote it, so the log and the ledger say which run did which
chunk. Runs on the same table never write a ledger at the same time: the upload flow holds the
table's claim (`prefect_neurodata.tasks.claims.exclusive`) while it reads and writes it.

Example:
    ```python
    from prefect_neurodata.tasks.annotation_ledger import ChunkEntry, read_entry, write_entry

    write_entry("/tmp/ledger", ChunkEntry(status="pending", chunk=0, mode="insert", rows=[1, 10]))
    assert read_entry("/tmp/ledger", 0).status == "pending"
    ```
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from prefect.context import FlowRunContext, TaskRunContext
from prefect_aws import AwsCredentials
from pydantic import Field

from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.common import utc_now_iso

__all__ = [
    "ChunkEntry",
    "LedgerHeader",
    "entry_uri",
    "header_uri",
    "read_entry",
    "read_header",
    "write_entry",
    "write_header",
    "write_id_map",
]

HEADER_NAME = "ledger.json"


class LedgerHeader(storage.JsonDocument):
    """What a ledger is about (written once, before the first chunk)."""

    key: str = Field(description="Content hash of source, datastack, table, mode, chunk size.")
    source: str
    source_sha256: str
    datastack: str
    table: str
    mode: Literal["insert", "update", "delete"]
    chunk_size: int
    rows: int
    chunks: int
    created: str = Field(default_factory=utc_now_iso)


class ChunkEntry(storage.JsonDocument):
    """The state of one chunk of an upload."""

    status: Literal["pending", "done"]
    chunk: int
    mode: Literal["insert", "update", "delete"]
    rows: list[int] = Field(default_factory=list, description="First and last source row.")
    flow_run: str | None = Field(default_factory=lambda: current_run(), description="Writer.")
    pid: int = Field(default_factory=os.getpid)
    started: float | None = None
    finished: float | None = None
    count_before: int | None = Field(default=None, description="Live rows before an insert.")
    id_hint: int | None = Field(default=None, description="First id an insert should get.")
    ids: list[int] | None = Field(default=None, description="New ids (insert), deleted ids.")
    id_map: dict[str, int] | None = Field(default=None, description="old id -> new id (update).")
    resumed: bool = Field(default=False, description="Reconciled after a lost answer.")

    @property
    def done(self) -> bool:
        """Whether the server acknowledged the chunk."""
        return self.status == "done"


def current_run() -> str | None:
    """The id of the flow run we are in (from a task or the flow itself), or None."""
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return str(task_ctx.task_run.flow_run_id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id)
    return None


def header_uri(ledger_dir: str) -> str:
    """Where the ledger keeps its header."""
    return storage.join(ledger_dir, HEADER_NAME)


def entry_uri(ledger_dir: str, chunk_index: int) -> str:
    """Where the ledger keeps the state of one chunk."""
    return storage.join(ledger_dir, f"chunk-{chunk_index:06d}.json")


def read_header(ledger_dir: str, aws: AwsCredentials | None = None) -> LedgerHeader | None:
    """The ledger's header, or None before the first run wrote it."""
    return LedgerHeader.read_document(header_uri(ledger_dir), aws)


def write_header(
    ledger_dir: str, header: LedgerHeader, aws: AwsCredentials | None = None
) -> LedgerHeader:
    """Write the header unless one exists (the first run's header is kept); return the one kept."""
    storage.ensure_dir(ledger_dir)
    existing = read_header(ledger_dir, aws)
    if existing is not None:
        return existing
    header.write_document(header_uri(ledger_dir), aws)
    return header


def read_entry(
    ledger_dir: str, chunk_index: int, aws: AwsCredentials | None = None
) -> ChunkEntry | None:
    """The entry of a chunk, or None if the chunk was never started."""
    return ChunkEntry.read_document(entry_uri(ledger_dir, chunk_index), aws)


def write_entry(
    ledger_dir: str, entry: ChunkEntry | Mapping[str, Any], aws: AwsCredentials | None = None
) -> ChunkEntry:
    """Write (replace) a chunk's entry atomically; return it as a `ChunkEntry`."""
    model = ChunkEntry.coerce(entry)
    if model.status == "pending" and model.started is None:
        model.started = time.time()
    if model.status == "done" and model.finished is None:
        model.finished = time.time()
    model.write_document(entry_uri(ledger_dir, model.chunk), aws, exclude_none=True)
    return model


def write_id_map(
    ledger: str, mode: str, entries: Sequence[ChunkEntry], aws: AwsCredentials | None = None
) -> tuple[str, list]:
    """Write the whole id mapping as CSV next to the ledger; return its URI and the rows."""
    rows: list[dict[str, Any]] = []
    for entry in sorted(entries, key=lambda e: e.chunk):
        first = entry.rows[0]
        if mode == "update":
            for old, new in (entry.id_map or {}).items():
                rows.append({"old_id": int(old), "new_id": int(new)})
        elif mode == "insert":
            for offset, new in enumerate(entry.ids or []):
                rows.append({"row": first + offset, "id": int(new)})
        else:
            rows.extend({"deleted_id": int(i)} for i in entry.ids or [])
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    uri = storage.join(ledger, "id_map.csv")
    storage.write_bytes_atomic(uri, out.getvalue().encode(), aws)
    return uri, rows
