"""Annotation upload flow through a real Prefect API against the CAVE (and S3) stand-ins."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from prefect_neurodata.flows.annotation_upload import (
    AnnotationUploadRequest,
    AnnotationValidationError,
    NewTable,
    ledger_dir_for,
    load_source,
    upload_annotations,
)
from prefect_neurodata.tasks.annotation_ledger import entry_uri, write_entry
from prefect_neurodata.tasks.cave import CaveInputError, CavePermissionError
from tests.flows.cave_helpers import (
    FAULTS_20,
    cave_faults,
    client_for,
    table_name,
)

pytestmark = pytest.mark.flows

SYNAPSE = NewTable(schema_type="synapse", description="Test synapses (flow tests).")
HEADER = ["pre_pt_position", "ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z",
          "post_pt_position", "size"]  # fmt: skip


def synapse_rows(n: int, seed: int = 0) -> list[list[Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x, y, z = rng.randint(1000, 90000), rng.randint(1000, 90000), rng.randint(10, 900)
        rows.append(
            [f"{x},{y},{z}", x + 4, y + 4, z, f"[{x + 8}, {y + 8}, {z}]", rng.randint(1, 999)]
        )
    return rows


def write_csv(path: Path, rows: list[list[Any]], header: list[str] = HEADER) -> str:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def live_rows(env: dict[str, str], table: str, ids: list[int]) -> list[dict[str, Any]]:
    return client_for(env).annotation.get_annotation(table, ids)


def ids_of(summary: Any) -> list[int]:
    with open(summary.id_map) as src:
        return [int(row["id"]) for row in csv.DictReader(src)]


def content(rows: list[dict[str, Any]]) -> list[tuple]:
    return sorted(
        (tuple(r["pre_pt_position"]), tuple(r["post_pt_position"]), r["size"]) for r in rows
    )


def test_insert_creates_table_and_uploads_each_row_once(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table = table_name("up_insert")
    source = write_csv(tmp_path / "syn.csv", synapse_rows(2500, seed=1))
    request = AnnotationUploadRequest(table=table, source=source, chunk_size=1000, create=SYNAPSE)

    first = upload_annotations(request, cave_block=saved_cave_block)
    assert (first.rows, first.chunks, first.chunks_sent, first.table_created) == (2500, 3, 3, True)
    ids = ids_of(first)
    assert len(ids) == len(set(ids)) == 2500
    client = client_for(sandbox.env)
    assert client.annotation.get_annotation_count(table) == 2500
    meta = client.annotation.get_table_metadata(table)
    assert meta["schema_type"] == "synapse" and meta["description"] == SYNAPSE.description
    stored = live_rows(sandbox.env, table, ids[:3])
    assert stored[0]["pre_pt_position"] == [
        int(v) for v in synapse_rows(1, seed=1)[0][0].split(",")
    ]

    again = upload_annotations(request, cave_block=saved_cave_block)
    assert (again.chunks_sent, again.chunks_skipped) == (0, 3)
    assert client.annotation.get_annotation_count(table) == 2500
    assert ids_of(again) == ids


def test_every_bad_row_is_reported_before_any_write(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table = table_name("up_bad")
    rows = synapse_rows(40)
    rows[2][0] = "1,2"  # too short
    rows[7][5] = "big"  # not a number
    rows[30][0] = ""  # required point missing
    rows[31][1] = ""  # one coordinate missing
    source = write_csv(tmp_path / "bad.csv", rows)
    request = AnnotationUploadRequest(table=table, source=source, create=SYNAPSE)
    with pytest.raises(AnnotationValidationError) as caught:
        upload_annotations(request, cave_block=saved_cave_block)
    found = {(p.row, p.field) for p in caught.value.problems}
    assert found == {
        (3, "pre_pt_position"),
        (8, "size"),
        (31, "pre_pt_position"),
        (32, "ctr_pt_position"),
    }
    message = str(caught.value)
    assert "row 8: size = 'big'" in message and "nothing was written" in message
    # Nothing was written: not even the table.
    assert table not in client_for(sandbox.env).annotation.get_tables()


def test_unknown_column_and_schema_are_reported(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "x.csv", [r + [1] for r in synapse_rows(3)], HEADER + ["sise"])
    with pytest.raises(AnnotationValidationError, match=r"column sise: not a field of schema"):
        upload_annotations(
            AnnotationUploadRequest(table=table_name("up_col"), source=source, create=SYNAPSE),
            cave_block=saved_cave_block,
        )
    with pytest.raises(CaveInputError, match=r"schema 'no_such_schema' is not known"):
        upload_annotations(
            AnnotationUploadRequest(
                table=table_name("up_schema"),
                source=source,
                create=NewTable(schema_type="no_such_schema", description="x"),
            ),
            cave_block=saved_cave_block,
        )
    with pytest.raises(CaveInputError, match=r"does not exist .* pass create="):
        upload_annotations(
            AnnotationUploadRequest(table=table_name("up_missing"), source=source),
            cave_block=saved_cave_block,
        )


def test_viewer_token_fails_before_any_write(
    sandbox: Any, viewer_cave_block: str, tmp_path: Path
) -> None:
    table = table_name("up_viewer")
    source = write_csv(tmp_path / "v.csv", synapse_rows(5))
    with pytest.raises(CavePermissionError, match=r"user 'viewer' .* lacks the 'edit' permission"):
        upload_annotations(
            AnnotationUploadRequest(table=table, source=source, create=SYNAPSE),
            cave_block=viewer_cave_block,
        )
    assert table not in client_for(sandbox.env).annotation.get_tables()


def test_private_table_of_another_user_fails_before_any_write(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    # The seeded synapse table is PRIVATE to the admin (user 1); the block's user is user 2.
    source = write_csv(tmp_path / "p.csv", synapse_rows(5))
    before = client_for(sandbox.env).annotation.get_annotation_count("synapses")
    with pytest.raises(CavePermissionError, match=r"write_permission PRIVATE"):
        upload_annotations(
            AnnotationUploadRequest(table="synapses", source=source),
            cave_block=saved_cave_block,
        )
    assert client_for(sandbox.env).annotation.get_annotation_count("synapses") == before


def test_update_and_delete_modes(sandbox: Any, saved_cave_block: str, tmp_path: Path) -> None:
    table = table_name("up_modes")
    inserted = upload_annotations(
        AnnotationUploadRequest(
            table=table, source=write_csv(tmp_path / "a.csv", synapse_rows(30)), create=SYNAPSE
        ),
        cave_block=saved_cave_block,
    )
    ids = ids_of(inserted)
    updates = [{"id": i, "size": 5000 + n} for n, i in enumerate(ids[:10])]
    updated = upload_annotations(
        AnnotationUploadRequest(table=table, mode="update", records=updates, chunk_size=4),
        cave_block=saved_cave_block,
    )
    assert (updated.rows, updated.chunks) == (10, 3)
    with open(updated.id_map) as src:
        mapping = {int(r["old_id"]): int(r["new_id"]) for r in csv.DictReader(src)}
    assert sorted(mapping) == ids[:10]
    rows = live_rows(sandbox.env, table, [mapping[i] for i in ids[:10]])
    assert sorted(r["size"] for r in rows) == [5000 + n for n in range(10)]

    deleted = upload_annotations(
        AnnotationUploadRequest(
            table=table, mode="delete", records=[{"id": i} for i in ids[20:25]]
        ),
        cave_block=saved_cave_block,
    )
    assert deleted.rows == 5
    assert all(r["deleted"] for r in live_rows(sandbox.env, table, ids[20:25]))
    assert not any(r["deleted"] for r in live_rows(sandbox.env, table, ids[25:30]))

    with pytest.raises(AnnotationValidationError, match=r"row 2: id .* duplicate id"):
        upload_annotations(
            AnnotationUploadRequest(table=table, mode="delete", records=[{"id": 3}, {"id": 3}]),
            cave_block=saved_cave_block,
        )


def _pending_then_sent(
    env: dict[str, str], request: AnnotationUploadRequest, datastack: str, records: list
) -> None:
    """Do what a run does right before its answer is lost: mark pending, then send."""
    source = load_source(request)
    _key, ledger = ledger_dir_for(request, source, datastack)
    annotation = client_for(env).annotation
    entry: dict[str, Any] = {"status": "pending", "chunk": 0, "mode": request.mode}
    if request.mode == "insert":
        entry["count_before"] = annotation.get_annotation_count(request.table)
        annotation.post_annotation(request.table, records)
    else:
        annotation.update_annotation(request.table, records)
    write_entry(ledger, entry)


def test_lost_answer_of_an_insert_is_reconciled_not_resent(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    env = sandbox.env
    table = table_name("up_lost")
    client_for(env).annotation.create_table(table, "synapse", "lost answers", [4, 4, 40])
    rows = synapse_rows(250, seed=3)
    source = write_csv(tmp_path / "l.csv", rows)
    request = AnnotationUploadRequest(table=table, source=source, chunk_size=100)
    first_chunk = [
        {
            "pre_pt": {"position": [int(v) for v in r[0].split(",")]},
            "ctr_pt": {"position": [r[1], r[2], r[3]]},
            "post_pt": {"position": json.loads(r[4])},
            "size": r[5],
        }
        for r in rows[:100]
    ]
    _pending_then_sent(env, request, env["NEURODATA_CAVE_DATASTACK"], first_chunk)

    summary = upload_annotations(request, cave_block=saved_cave_block)
    assert (summary.chunks, summary.chunks_sent, summary.chunks_resumed) == (3, 3, 1)
    annotation = client_for(env).annotation
    assert annotation.get_annotation_count(table) == 250
    ids = ids_of(summary)
    assert len(set(ids)) == 250
    assert content(live_rows(env, table, ids)) == content(
        [
            {
                "pre_pt_position": [int(v) for v in r[0].split(",")],
                "post_pt_position": json.loads(r[4]),
                "size": float(r[5]),
            }
            for r in rows
        ]
    )


def test_lost_answer_of_an_update_is_reconciled_not_resent(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    env = sandbox.env
    table = table_name("up_lostupd")
    inserted = upload_annotations(
        AnnotationUploadRequest(
            table=table, source=write_csv(tmp_path / "u.csv", synapse_rows(6)), create=SYNAPSE
        ),
        cave_block=saved_cave_block,
    )
    ids = ids_of(inserted)
    updates = [{"id": i, "size": 77} for i in ids[:4]]
    request = AnnotationUploadRequest(table=table, mode="update", records=updates)
    # The first two updates landed, the answer was lost, the other two never went out.
    _pending_then_sent(env, request, env["NEURODATA_CAVE_DATASTACK"], updates[:2])
    summary = upload_annotations(request, cave_block=saved_cave_block)
    assert summary.chunks_resumed == 1
    with open(summary.id_map) as src:
        mapping = {int(r["old_id"]): int(r["new_id"]) for r in csv.DictReader(src)}
    assert sorted(mapping) == ids[:4]
    # 6 inserted + 4 replacement rows: nothing was updated twice.
    assert client_for(env).annotation.get_annotation_count(table) == 10


def test_same_result_under_transient_faults(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    env = sandbox.env
    rows = synapse_rows(1200, seed=5)
    source = write_csv(tmp_path / "f.csv", rows)
    clean_table, faulty_table = table_name("up_clean"), table_name("up_faulty")
    clean = upload_annotations(
        AnnotationUploadRequest(table=clean_table, source=source, chunk_size=200, create=SYNAPSE),
        cave_block=saved_cave_block,
    )
    with cave_faults(sandbox, **FAULTS_20):
        faulty = upload_annotations(
            AnnotationUploadRequest(
                table=faulty_table, source=source, chunk_size=200, create=SYNAPSE
            ),
            cave_block=saved_cave_block,
        )
        stats = requests.get(f"{env['NEURODATA_CAVE_LOCAL_URL']}/__sandbox__/stats", timeout=10)
    assert sum(stats.json()["faults"].values()) > 0
    annotation = client_for(env).annotation
    assert annotation.get_annotation_count(faulty_table) == 1200
    assert content(live_rows(env, faulty_table, ids_of(faulty))) == content(
        live_rows(env, clean_table, ids_of(clean))
    )


def test_killed_run_resumes_without_duplicates(
    sandbox: Any, saved_cave_block: str, prefect_api: str, tmp_path: Path
) -> None:
    env = sandbox.env
    table = table_name("up_killed")
    source = write_csv(tmp_path / "k.csv", synapse_rows(3000, seed=9))
    request = AnnotationUploadRequest(table=table, source=source, chunk_size=300, create=SYNAPSE)
    _key, ledger = ledger_dir_for(request, load_source(request), env["NEURODATA_CAVE_DATASTACK"])
    script = (
        "import json, sys\n"
        "from prefect_neurodata.flows.annotation_upload import *\n"
        "upload_annotations(AnnotationUploadRequest.model_validate_json(sys.argv[1]),"
        " cave_block=sys.argv[2])\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, request.model_dump_json(), saved_cave_block],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = Path(entry_uri(ledger, 2))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if marker.exists() and json.loads(marker.read_text()).get("status") == "done":
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run finished before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    landed = client_for(env).annotation.get_annotation_count(table)
    assert 900 <= landed < 3000

    summary = upload_annotations(request, cave_block=saved_cave_block)
    assert summary.chunks_skipped >= 3
    assert client_for(env).annotation.get_annotation_count(table) == 3000
    ids = ids_of(summary)
    assert len(set(ids)) == 3000


def test_parquet_source_on_s3(
    sandbox: Any, saved_cave_block: str, cave_bucket: str, cave_aws_env: dict[str, str]
) -> None:
    import boto3

    rows = synapse_rows(50, seed=11)
    table = pa.table(
        {
            "pre_pt_position": [[int(v) for v in r[0].split(",")] for r in rows],
            "ctr_pt_position": [[r[1], r[2], r[3]] for r in rows],
            "post_pt_position": [json.loads(r[4]) for r in rows],
            "size": [float(r[5]) for r in rows],
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    s3 = boto3.client("s3", endpoint_url=cave_aws_env["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket=cave_bucket, Key="in/syn.parquet", Body=sink.getvalue().to_pybytes())
    name = table_name("up_s3")
    summary = upload_annotations(
        AnnotationUploadRequest(
            table=name, source=f"s3://{cave_bucket}/in/syn.parquet", create=SYNAPSE
        ),
        cave_block=saved_cave_block,
    )
    assert summary.rows == 50
    assert summary.ledger.startswith(f"s3://{cave_bucket}/in/.neurodata-ledger/")
    assert client_for(sandbox.env).annotation.get_annotation_count(name) == 50
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=cave_bucket)["Contents"]]
    assert any(k.endswith("chunk-000000.json") for k in keys)
