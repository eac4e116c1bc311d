"""Hostile input to the annotation upload flow is stopped before the first write (issue 13.2).

Each case writes a table first (or uses an existing one), runs the flow on input that used to
be partly written before failing, and checks that the error names the row, field and value and
that the table holds exactly what it held before.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from prefect_neurodata.clients.cave.annotation_rows import AnnotationValidationError
from prefect_neurodata.flows.annotation_upload import (
    AnnotationUploadRequest,
    NewTable,
    upload_annotations,
)
from tests.flows.cave_helpers import client_for, table_name
from tests.flows.test_annotation_upload import HEADER, ids_of, synapse_rows, write_csv

pytestmark = pytest.mark.flows

SYNAPSE = NewTable(schema_type="synapse", description="Hostile input tests.")


def empty_synapse_table(env: dict[str, str], prefix: str) -> str:
    table = table_name(prefix)
    client_for(env).annotation.create_table(table, "synapse", "hostile input", [4, 4, 40])
    return table


@pytest.mark.parametrize(
    ("column", "value", "field", "shown"),
    [
        (0, "1e400,2,3", "pre_pt_position", "inf"),
        (1, "1e400", "ctr_pt_position", "inf"),
        (5, "inf", "size", "inf"),
    ],
)
def test_non_finite_values_in_a_csv_write_nothing(
    sandbox: Any, saved_cave_block: str, tmp_path: Path, column: int, value: str, field: str,
    shown: str,
) -> None:  # fmt: skip
    table = empty_synapse_table(sandbox.env, "hostile_inf")
    rows = synapse_rows(300, seed=21)
    rows[249][column] = value  # row 250: the third chunk of 100; chunks 1-2 used to land
    source = write_csv(tmp_path / "inf.csv", rows)
    request = AnnotationUploadRequest(table=table, source=source, chunk_size=100)
    with pytest.raises(AnnotationValidationError) as caught:
        upload_annotations(request, cave_block=saved_cave_block)
    message = str(caught.value)
    assert f"row 250: {field} = " in message and shown in message and "finite" in message
    assert source in message and "nothing was written" in message
    assert client_for(sandbox.env).annotation.get_annotation_count(table) == 0


def test_ids_beyond_int64_write_nothing(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table = empty_synapse_table(sandbox.env, "hostile_id")
    rows = [r + [""] for r in synapse_rows(300, seed=22)]
    rows[260][-1] = str(2**64)
    source = write_csv(tmp_path / "ids.csv", rows, [*HEADER, "pre_pt_root_id"])
    request = AnnotationUploadRequest(table=table, source=source, chunk_size=100)
    with pytest.raises(
        AnnotationValidationError, match=r"row 261: pre_pt_root_id = 18446744073709551616"
    ):
        upload_annotations(request, cave_block=saved_cave_block)
    assert client_for(sandbox.env).annotation.get_annotation_count(table) == 0


@pytest.mark.parametrize("mode", ["update", "delete"])
def test_update_or_delete_of_missing_ids_write_nothing(
    sandbox: Any, saved_cave_block: str, tmp_path: Path, mode: str
) -> None:
    table = table_name(f"hostile_{mode}")
    inserted = upload_annotations(
        AnnotationUploadRequest(
            table=table, source=write_csv(tmp_path / "a.csv", synapse_rows(12)), create=SYNAPSE
        ),
        cave_block=saved_cave_block,
    )
    ids = ids_of(inserted)
    missing = max(ids) + 10_000
    records = [{"id": i, "size": 9.0} if mode == "update" else {"id": i} for i in ids[:9]]
    records[7] = {**records[7], "id": missing}  # row 8: the second chunk of 4
    annotation = client_for(sandbox.env).annotation
    before = annotation.get_annotation_count(table)
    with pytest.raises(AnnotationValidationError) as caught:
        upload_annotations(
            AnnotationUploadRequest(table=table, mode=mode, records=records, chunk_size=4),
            cave_block=saved_cave_block,
        )
    message = str(caught.value)
    assert f"row 8: id = {missing}: cannot {mode}: no annotation with this id" in message
    assert annotation.get_annotation_count(table) == before
    rows = annotation.get_annotation(table, ids)
    assert not any(r["deleted"] or r["superceded_id"] for r in rows)


def test_a_20_mb_field_names_the_file_and_row(
    sandbox: Any, saved_cave_block: str, tmp_path: Path
) -> None:
    table = table_name("hostile_big")
    client_for(sandbox.env).annotation.create_table(table, "bound_tag", "big field", [4, 4, 40])
    source = tmp_path / "tags.csv"
    with source.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["pt_position", "tag"])
        writer.writerow(["1,2,3", "small"])
        writer.writerow(["4,5,6", "x" * 20_000_000])
        writer.writerow(["7,8,9", "small"])
    with pytest.raises(AnnotationValidationError) as caught:
        upload_annotations(
            AnnotationUploadRequest(table=table, source=str(source)),
            cave_block=saved_cave_block,
        )
    message = str(caught.value)
    assert str(source) in message and "row 2: tag = 'xxx" in message
    assert "20,000,002 characters" in message and "straddling" not in message
    assert len(message) < 2_000
    assert client_for(sandbox.env).annotation.get_annotation_count(table) == 0
