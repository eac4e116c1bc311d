"""The typed checkpoints of the CAVE flows (upload ledger, snapshot manifest) and claim names."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from prefect_neurodata.tasks.annotation_ledger import (
    ChunkEntry,
    LedgerHeader,
    read_entry,
    read_header,
    write_entry,
    write_header,
    write_id_map,
)
from prefect_neurodata.tasks.claims import claim_name
from prefect_neurodata.tasks.snapshot_manifest import Manifest, SnapshotFile, TableEntry


def test_ledger_entries_move_from_pending_to_done(tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    assert read_entry(ledger, 0) is None
    pending = write_entry(
        ledger, {"status": "pending", "chunk": 0, "mode": "insert", "rows": [1, 3]}
    )
    assert pending.started is not None and not pending.done
    done = write_entry(
        ledger, ChunkEntry(status="done", chunk=0, mode="insert", rows=[1, 3], ids=[7, 8, 9])
    )
    again = read_entry(ledger, 0)
    assert again is not None and again.done and again.ids == [7, 8, 9] and again.finished
    assert json.loads((tmp_path / "ledger" / "chunk-000000.json").read_text())["status"] == "done"
    uri, rows = write_id_map(ledger, "insert", [done])
    assert rows == [{"row": 1, "id": 7}, {"row": 2, "id": 8}, {"row": 3, "id": 9}]
    assert Path(uri).read_text().splitlines()[0] == "row,id"
    with pytest.raises(ValidationError):
        write_entry(ledger, {"status": "sent", "chunk": 1, "mode": "insert"})


def test_the_first_ledger_header_is_kept(tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    first = LedgerHeader(key="k", source="a.csv", source_sha256="s", datastack="d", table="t",
                         mode="insert", chunk_size=10, rows=25, chunks=3)  # fmt: skip
    write_header(ledger, first)
    kept = write_header(ledger, first.model_copy(update={"rows": 99}))
    assert kept.rows == 25 and read_header(ledger) == kept


def test_manifest_round_trip_and_intact_tables(tmp_path: Path) -> None:
    root = str(tmp_path)
    part = tmp_path / "t" / "part-00000.parquet"
    part.parent.mkdir()
    part.write_bytes(b"parquet bytes")
    digest = hashlib.sha256(b"parquet bytes").hexdigest()
    manifest = Manifest(datastack="d", version=3)
    file = SnapshotFile(
        path="t/part-00000.parquet", rows=5, sha256=digest, bytes=13, id_range=[None, None]
    )
    manifest.record("t", TableEntry(rows=5, expected_rows=5, files=[file]))
    manifest.write(root)
    again = Manifest.read(root)
    assert again is not None and again.tables["t"].bytes == 13 and again.updated
    assert again.is_intact(root, "t", None)
    assert not again.is_intact(root, "t", [4.0, 4.0, 40.0])  # another resolution
    assert not again.is_intact(root, "other", None)
    part.write_bytes(b"damaged")
    assert not again.is_intact(root, "t", None)


def test_claim_names_are_safe_and_distinct() -> None:
    name = claim_name("cave-snapshot", "ds", "v3", "s3://bucket/a%b")
    assert not set("/%&<>") & set(name) and name.startswith("neurodata-cave-snapshot-ds-v3")
    assert name != claim_name("cave-snapshot", "ds", "v3", "s3://bucket/a&b")
    assert len(claim_name("k", "x" * 500)) <= 120
