"""The annotation upload flow over real HTTP while the CAVE stand-in loses answers.

A lost answer (``lost_rate``) is a write the stand-in carries out in full and then answers with a
504, so a client that resent it blindly would write it twice. Each test runs the real flow
with lost answers switched on and then reads the table back to check that every row landed
exactly once and the run accounted for every chunk.

Why these sizes cannot fail by chance (``lost_rate`` 0.3, no other fault):

* A read (GET) is retried by the HTTP core 5 times (the block's ``max_retries``), so it gives up
  only when 6 answers in a row are lost: 0.3**6 = 7.3e-4. A chunk task makes at most ~4 reads
  per attempt, so an attempt fails through its reads with p <= 3e-3.
* A chunk's write is sent once per attempt and, once sent, has landed (a lost answer is a
  write carried out), so the next attempt reconciles with reads only: at most one of the
  task's 5 attempts (``TASK_RETRIES`` 4) fails through its write. The chunk fails only if the
  other 4 fail through reads: <= 5 * 0.3 * (3e-3)**4 = 1.2e-10 per task; with 40 chunks and
  a few other tasks per run (each under the same bound), < 1e-8 per test.
* 40 chunks: the chance that no chunk's write lost its answer (so nothing was reconciled and
  the test would prove nothing) is 0.7**40 = 6.4e-7.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import requests

from prefect_neurodata.flows.annotation_upload import (
    AnnotationUploadRequest,
    AnnotationUploadSummary,
    upload_annotations,
)
from prefect_neurodata.tasks.annotation_ledger import read_entry
from tests.flows.cave_helpers import cave_faults, client_for, table_name
from tests.flows.test_annotation_upload import (
    SYNAPSE,
    content,
    ids_of,
    live_rows,
    synapse_rows,
    write_csv,
)

pytestmark = pytest.mark.flows

LOST_ANSWERS = {"lost_rate": 0.3, "seed": 5}
ROWS = 200
CHUNK_SIZE = 5  # 40 chunks: see the module docstring for why so many


def upload_losing_answers(
    sandbox: Any, request: AnnotationUploadRequest, cave_block: str
) -> AnnotationUploadSummary:
    """Run the upload flow while the CAVE stand-in loses answers; check some really were."""
    with cave_faults(sandbox, **LOST_ANSWERS):
        summary = upload_annotations(request, cave_block=cave_block)
        stats = requests.get(
            f"{sandbox.env['NEURODATA_CAVE_LOCAL_URL']}/__sandbox__/stats", timeout=10
        ).json()
    assert stats["lost"] > 0, stats
    return summary


def assert_every_chunk_accounted_for(summary: AnnotationUploadSummary) -> None:
    """Every chunk is done in the ledger, in order, and the summary counts the reconciled ones."""
    chunks = ROWS // CHUNK_SIZE
    assert (summary.rows, summary.chunks, summary.chunks_sent) == (ROWS, chunks, chunks)
    assert summary.chunks_skipped == 0
    entries = [read_entry(summary.ledger, index) for index in range(chunks)]
    assert all(entry is not None and entry.done for entry in entries)
    spans = [entry.rows for entry in entries if entry is not None]
    assert spans == [[first, first + CHUNK_SIZE - 1] for first in range(1, ROWS, CHUNK_SIZE)]
    resumed = sum(entry.resumed for entry in entries if entry is not None)
    assert summary.chunks_resumed == resumed >= 1


def source_content(rows: list[list[Any]]) -> list[tuple]:
    """The rows of a synapse CSV as `content` reads them back from the table."""
    return content(
        [
            {
                "pre_pt_position": [int(v) for v in row[0].split(",")],
                "post_pt_position": [int(v) for v in row[4].strip("[]").split(",")],
                "size": float(row[5]),
            }
            for row in rows
        ]
    )


def inserted_table(cave_block: str, tmp_path: Path, prefix: str) -> tuple[str, list[int]]:
    """A new synapse table of `ROWS` rows, uploaded without faults: its name and ids in order."""
    request = AnnotationUploadRequest(
        table=table_name(prefix),
        source=write_csv(tmp_path / f"{prefix}.csv", synapse_rows(ROWS, seed=21)),
        create=SYNAPSE,
    )
    return request.table, ids_of(upload_annotations(request, cave_block=cave_block))


def test_insert_lands_every_row_once_while_answers_are_lost(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table = table_name("lost_insert")
    rows = synapse_rows(ROWS, seed=17)
    request = AnnotationUploadRequest(
        table=table,
        source=write_csv(tmp_path / "insert.csv", rows),
        chunk_size=CHUNK_SIZE,
        create=SYNAPSE,
    )
    summary = upload_losing_answers(sandbox, request, saved_cave_block)

    assert summary.table_created
    assert_every_chunk_accounted_for(summary)
    ids = ids_of(summary)
    assert len(ids) == len(set(ids)) == ROWS
    annotation = client_for(sandbox.env).annotation
    assert annotation.get_annotation_count(table) == ROWS
    assert content(live_rows(sandbox.env, table, ids)) == source_content(rows)

    rerun = upload_annotations(request, cave_block=saved_cave_block)
    assert (rerun.chunks_sent, rerun.chunks_skipped) == (0, ROWS // CHUNK_SIZE)
    assert ids_of(rerun) == ids
    assert annotation.get_annotation_count(table) == ROWS


def test_update_replaces_every_row_once_while_answers_are_lost(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table, old_ids = inserted_table(saved_cave_block, tmp_path, "lost_update")
    updates = [{"id": ident, "size": 7000 + n} for n, ident in enumerate(old_ids)]
    request = AnnotationUploadRequest(
        table=table, mode="update", records=updates, chunk_size=CHUNK_SIZE,
        ledger_location=str(tmp_path / "ledgers"),
    )  # fmt: skip
    summary = upload_losing_answers(sandbox, request, saved_cave_block)

    assert_every_chunk_accounted_for(summary)
    with open(summary.id_map) as src:
        new_of = {int(r["old_id"]): int(r["new_id"]) for r in csv.DictReader(src)}
    assert sorted(new_of) == sorted(old_ids)
    # The old rows plus one replacement each: no update was applied twice.
    assert client_for(sandbox.env).annotation.get_annotation_count(table) == 2 * ROWS
    new_rows = {r["id"]: r for r in live_rows(sandbox.env, table, list(new_of.values()))}
    assert [new_rows[new_of[i]]["size"] for i in old_ids] == [7000 + n for n in range(ROWS)]
    old_rows = live_rows(sandbox.env, table, old_ids)
    assert {r["id"]: r["superceded_id"] for r in old_rows} == new_of


def test_delete_removes_every_row_while_answers_are_lost(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table, ids = inserted_table(saved_cave_block, tmp_path, "lost_delete")
    request = AnnotationUploadRequest(
        table=table, mode="delete", records=[{"id": i} for i in ids], chunk_size=CHUNK_SIZE,
        ledger_location=str(tmp_path / "ledgers"),
    )  # fmt: skip
    summary = upload_losing_answers(sandbox, request, saved_cave_block)

    assert_every_chunk_accounted_for(summary)
    with open(summary.id_map) as src:
        assert sorted(int(r["deleted_id"]) for r in csv.DictReader(src)) == sorted(ids)
    assert client_for(sandbox.env).annotation.get_annotation_count(table) == ROWS
    assert all(r["deleted"] for r in live_rows(sandbox.env, table, ids))
