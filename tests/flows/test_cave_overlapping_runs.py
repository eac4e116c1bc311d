"""Overlapping runs of the two CAVE flows end in the state of one clean run (issue 13.1).

Four runs of the same flow on the same input start at once, each in its own process (as
workers on several machines would), against the real Prefect server and the CAVE stand-in
(with latency, so the runs' read-then-write windows overlap). Before the claims, four annotation
uploads of 12,000 rows left 21,000 rows. Each test compares the end state with one clean run and
checks from the runs' own logs which run sent which chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefect_neurodata.flows.annotation_upload import AnnotationUploadRequest, upload_annotations
from prefect_neurodata.flows.materialization_snapshot import (
    SnapshotRequest,
    snapshot_materialization,
)
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

RUNS = 4

UPLOAD = (
    "import sys\n"
    "from prefect_neurodata.flows.annotation_upload import *\n"
    "s = upload_annotations(AnnotationUploadRequest.model_validate_json(sys.argv[1]),"
    " cave_block=sys.argv[2])\n"
    "print('SUMMARY', s.model_dump_json(), flush=True)\n"
)
SNAPSHOT = (
    "import sys\n"
    "from prefect_neurodata.flows.materialization_snapshot import *\n"
    "s = snapshot_materialization(SnapshotRequest.model_validate_json(sys.argv[1]),"
    " cave_block=sys.argv[2])\n"
    "print('SUMMARY', s.model_dump_json(), flush=True)\n"
)


def run_at_once(script: str, request_json: str, block: str, api: str, logs: Path) -> list[dict]:
    """Start ``RUNS`` processes of a flow at once; wait; return their summaries (all must pass)."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "INFO"}
    children = []
    for n in range(RUNS):
        out = (logs / f"run-{n}.log").open("w")
        children.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", script, request_json, block],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                ),
                out,
            )
        )
    summaries = []
    for n, (child, out) in enumerate(children):
        code = child.wait(timeout=900)
        out.close()
        text = (logs / f"run-{n}.log").read_text()
        assert code == 0, f"run {n} failed:\n{text[-4000:]}"
        line = next(x for x in text.splitlines() if x.startswith("SUMMARY "))
        summaries.append({**json.loads(line[len("SUMMARY ") :]), "log": text})
    return summaries


def test_four_overlapping_uploads_write_each_row_once(
    sandbox: Any, saved_cave_block: str, prefect_api: str, tmp_path: Path
) -> None:
    env = sandbox.env
    rows = synapse_rows(12_000, seed=31)
    source = write_csv(tmp_path / "same.csv", rows)
    clean_table, shared_table = table_name("olap_clean"), table_name("olap_shared")
    clean = upload_annotations(
        AnnotationUploadRequest(table=clean_table, source=source, chunk_size=1000, create=SYNAPSE),
        cave_block=saved_cave_block,
    )
    request = AnnotationUploadRequest(
        table=shared_table, source=source, chunk_size=1000, create=SYNAPSE
    )
    with cave_faults(sandbox, rate=0.0, latency_ms=100, seed=3):
        runs = run_at_once(
            UPLOAD, request.model_dump_json(), saved_cave_block, prefect_api, tmp_path / "logs"
        )

    annotation = client_for(env).annotation
    assert annotation.get_annotation_count(shared_table) == 12_000  # was 21,000 before claims
    # Every chunk was sent by exactly one run; the others found it done in the ledger.
    assert sum(r["chunks_sent"] for r in runs) == 12
    assert all(r["chunks_sent"] + r["chunks_skipped"] == 12 for r in runs)
    sent_lines = [
        line for r in runs for line in r["log"].splitlines() if "sent by this run" in line
    ]
    assert len(sent_lines) == 12 and {
        f"chunk {i}/12 " in " ".join(sent_lines) for i in range(1, 13)
    } == {True}
    assert sum("already done by flow run" in r["log"] for r in runs) >= RUNS - 1
    # Same end state as one clean run: the same rows, each once, the same id map in every run.
    final = runs[0]
    ids = [int(x) for x in _id_column(Path(final["id_map"]))]
    assert len(set(ids)) == 12_000
    assert all(Path(r["id_map"]).read_text() == Path(final["id_map"]).read_text() for r in runs)
    assert content(live_rows(env, shared_table, ids)) == content(
        live_rows(env, clean_table, ids_of(clean))
    )


def _id_column(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.split(",")[1] for line in lines[1:]]


def test_four_overlapping_snapshots_leave_one_intact_snapshot(
    sandbox: Any, saved_cave_block: str, prefect_api: str, tmp_path: Path
) -> None:
    tables = ["cell_type_local", "nucleus_detection", "synapses"]
    clean = snapshot_materialization(
        SnapshotRequest(destination=str(tmp_path / "clean"), tables=tables, rows_per_part=2000),
        cave_block=saved_cave_block,
    )
    request = SnapshotRequest(
        destination=str(tmp_path / "shared"), tables=tables, rows_per_part=2000
    )
    with cave_faults(sandbox, rate=0.0, latency_ms=50, seed=4):
        runs = run_at_once(
            SNAPSHOT, request.model_dump_json(), saved_cave_block, prefect_api, tmp_path / "logs"
        )
    # One run wrote each table; the others found it intact in the manifest and skipped it.
    statuses = [t["status"] for r in runs for t in r["tables"]]
    assert statuses.count("written") == len(tables)
    assert statuses.count("skipped") == len(tables) * (RUNS - 1)
    root = Path(runs[0]["manifest"]).parent
    manifest = json.loads(Path(runs[0]["manifest"]).read_text())
    reference = json.loads(Path(clean.manifest).read_text())
    assert sorted(manifest["tables"]) == sorted(reference["tables"]) == sorted(tables)
    for table in tables:
        entry, expected = manifest["tables"][table], reference["tables"][table]
        assert entry["rows"] == entry["expected_rows"] == expected["rows"]
        for item in entry["files"]:
            data = (root / item["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == item["sha256"]
        assert sorted(f["rows"] for f in entry["files"]) == sorted(
            f["rows"] for f in expected["files"]
        )
    # No scratch or stray files: only the manifest's files and the manifest itself.
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    listed = {f["path"] for e in manifest["tables"].values() for f in e["files"]}
    assert on_disk == listed | {"manifest.json"}
