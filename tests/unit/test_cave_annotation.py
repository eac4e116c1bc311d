"""Annotation engine client and StagedAnnotations: request shapes, batching, validation."""

from __future__ import annotations

import json
import threading
from collections.abc import Set
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import responses
from responses import matchers

from prefect_neurodata.clients.cave import endpoints
from prefect_neurodata.clients.cave.annotationengine import (
    AnnotationClient,
    AnnotationClientV2,
    AnnotationUploadError,
)
from prefect_neurodata.clients.cave.tools import StagedAnnotations
from prefect_neurodata.clients.cave.tools.stage import AnnotationValidationError

AE = "https://local.example.org"
AV = "test_volume"
BASE = f"{AE}/annotation/api/v2/aligned_volume/{AV}"
TOKEN = "b" * 32

POINT = {
    "type": "object",
    "properties": {
        "position": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
        "supervoxel_id": {"type": ["integer", "null"]},
        "root_id": {"type": ["integer", "null"]},
    },
    "required": ["position"],
    "additionalProperties": False,
}
CELL_TYPE_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "definitions": {
        "BoundSpatialPoint": POINT,
        "CellTypeLocal": {
            "type": "object",
            "properties": {
                "valid": {"type": ["boolean", "null"]},
                "classification_system": {"type": "string"},
                "cell_type": {"type": "string"},
                "pt": {"type": "object", "$ref": "#/definitions/BoundSpatialPoint"},
                "confidence": {"type": ["number", "null"]},
            },
            "required": ["cell_type", "classification_system", "pt"],
            "additionalProperties": True,
        },
    },
    "$ref": "#/definitions/CellTypeLocal",
}
REFERENCE_SCHEMA = {
    "definitions": {
        "ReferenceTag": {
            "type": "object",
            "properties": {"target_id": {"type": "integer"}, "tag": {"type": "string"}},
            "required": ["target_id", "tag"],
        }
    },
    "$ref": "#/definitions/ReferenceTag",
}


class FakeSchemaClient:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def schema_definition(self, name: str) -> dict[str, Any]:
        self.asked.append(name)
        return {"cell_type_local": CELL_TYPE_SCHEMA, "reference_tag": REFERENCE_SCHEMA}[name]


def make_client(schema_client: Any = None) -> AnnotationClientV2:
    return AnnotationClientV2(
        AE,
        {"Authorization": f"Bearer {TOKEN}"},
        2,
        endpoints.annotation_endpoints_v2,
        "ae_server_address",
        AV,
        schema_client=schema_client,
    )


def body(call: Any) -> Any:
    return json.loads(call.request.body)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


@responses.activate
def test_factory_and_table_reads() -> None:
    client = AnnotationClient(AE, aligned_volume_name=AV)
    assert isinstance(client, AnnotationClientV2) and client.api_version == 2
    assert client.aligned_volume_name == AV
    responses.get(f"{BASE}/table", json=["a", "b"])
    responses.get(f"{BASE}/table/a/count", json=12)
    responses.get(
        f"{BASE}/table/a",
        status=201,
        json={
            "table_name": "a",
            "voxel_resolution_x": 4,
            "voxel_resolution_y": 4,
            "voxel_resolution_z": 40,
            "schema_type": "bound_tag",
        },
        headers={"Warning": "Table Owner Notice: provisional"},
    )
    assert client.get_tables() == ["a", "b"]
    assert client.get_annotation_count("a") == 12
    meta = client.get_table_metadata("a")
    assert meta["voxel_resolution"] == [4, 4, 40] and "voxel_resolution_x" not in meta
    assert AnnotationClient(AE, dataset_name="legacy").aligned_volume_name == "legacy"


@responses.activate
def test_create_table_body() -> None:
    client = make_client(FakeSchemaClient())
    responses.post(
        f"{BASE}/table",
        body="my_table",
        content_type="text/plain",
        match=[
            matchers.json_params_matcher(
                {
                    "schema_type": "cell_type_local",
                    "table_name": "my_table",
                    "metadata": {
                        "description": "cells of a test",
                        "voxel_resolution_x": 4.0,
                        "voxel_resolution_y": 4.0,
                        "voxel_resolution_z": 40.0,
                        "write_permission": "GROUP",
                        "read_permission": "PUBLIC",
                        "user_id": 7,
                        "notice_text": "careful",
                        "flat_segmentation_source": "precomputed://gs://x",
                    },
                }
            ),
            matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"}),
        ],
    )
    response = client.create_table(
        "my_table",
        "cell_type_local",
        "cells of a test",
        [4, 4, 40],
        flat_segmentation_source="precomputed://gs://x",
        user_id=7,
        write_permission="GROUP",
        notice_text="careful",
    )
    assert response.text == "my_table"


@responses.activate
def test_create_reference_table_body() -> None:
    client = make_client(FakeSchemaClient())
    responses.post(
        f"{BASE}/table",
        body="tags",
        match=[
            matchers.json_params_matcher(
                {
                    "schema_type": "reference_tag",
                    "table_name": "tags",
                    "metadata": {
                        "description": "d",
                        "voxel_resolution_x": 1.0,
                        "voxel_resolution_y": 1.0,
                        "voxel_resolution_z": 1.0,
                        "write_permission": "PRIVATE",
                        "read_permission": "PUBLIC",
                        "table_metadata": {
                            "reference_table": "cells",
                            "track_target_id_updates": True,
                        },
                    },
                }
            )
        ],
    )
    client.create_table(
        "tags",
        "reference_tag",
        "d",
        [1, 1, 1],
        reference_table="cells",
        track_target_id_updates=True,
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("Bad-Name", "cell_type_local", "d", [4, 4, 40]), {}, "table_name 'Bad-Name'"),
        (("ok", "cell_type_local", "  ", [4, 4, 40]), {}, "description"),
        (("ok", "cell_type_local", "d", [4, 4]), {}, "voxel_resolution"),
        (("ok", "cell_type_local", "d", [4, 0, 40]), {}, "positive"),
        (("ok", "cell_type_local", "d", [4, 4, 40]), {"read_permission": "ALL"}, "read_perm"),
        (("ok", "reference_tag", "d", [4, 4, 40]), {}, "reference schema"),
        (("ok", "cell_type_local", "d", [4, 4, 40]), {"reference_table": "ok"}, "another"),
    ],
)
def test_create_table_validation_happens_before_any_write(
    args: tuple, kwargs: dict[str, Any], message: str
) -> None:
    client = make_client(FakeSchemaClient())
    with responses.RequestsMock() as rsps, pytest.raises(ValueError, match=message):
        client.create_table(*args, **kwargs)
    assert len(rsps.calls) == 0


@responses.activate
def test_update_metadata_and_delete_table() -> None:
    client = make_client()
    responses.put(
        f"{BASE}/table",
        json={"table_name": "t", "notice_text": None},
        match=[
            matchers.json_params_matcher(
                {"table_name": "t", "metadata": {"read_permission": "GROUP", "notice_text": ""}}
            )
        ],
    )
    responses.delete(f"{BASE}/table/t", json=True)
    assert client.update_metadata("t", read_permission="GROUP", notice_text="None")["table_name"]
    assert client.delete_table("t") is True
    with pytest.raises(ValueError, match="at least one"):
        client.update_metadata("t")
    with pytest.raises(ValueError, match="write_permission"):
        client.update_metadata("t", write_permission="everyone")


# ---------------------------------------------------------------------------------------------
# annotations
# ---------------------------------------------------------------------------------------------


def ids_callback(request: Any) -> tuple[int, dict[str, str], str]:
    annos = json.loads(request.body)["annotations"]
    start = ids_callback.next  # type: ignore[attr-defined]
    ids_callback.next += len(annos)  # type: ignore[attr-defined]
    return 200, {}, json.dumps(list(range(start, start + len(annos))))


@responses.activate
def test_post_annotation_batches_at_10000() -> None:
    client = make_client()
    # One batch at a time, so this counting server hands out ids in input order; with
    # overlapping batches the ids still map row by row (test_batches_after_the_first_overlap_...).
    client.batches_in_flight = 1
    ids_callback.next = 1  # type: ignore[attr-defined]
    responses.add_callback(
        responses.POST,
        f"{BASE}/table/t/annotations",
        callback=ids_callback,
        content_type="application/json",
    )
    data = [
        {"pt": {"position": [i, 0, 0]}, "tag": np.str_("x"), "n": np.int64(i)}
        for i in range(25_001)
    ]
    ids = client.post_annotation("t", data)
    assert ids == list(range(1, 25_002))
    sizes = [len(body(c)["annotations"]) for c in responses.calls]
    assert sizes == [10_000, 10_000, 5_001]
    assert body(responses.calls[0])["annotations"][3] == {
        "pt": {"position": [3, 0, 0]},
        "tag": "x",
        "n": 3,
    }
    assert responses.calls[0].request.headers["Content-Type"] == "application/json"


@responses.activate
def test_post_single_dict() -> None:
    client = make_client()
    responses.post(
        f"{BASE}/table/t/annotations",
        json=[5],
        match=[matchers.json_params_matcher({"annotations": [{"tag": "a"}]})],
    )
    assert client.post_annotation("t", {"tag": "a"}) == [5]


@responses.activate
def test_failed_later_batch_reports_what_landed_and_post_is_not_retried() -> None:
    client = make_client()
    responses.post(f"{BASE}/table/t/annotations", json=list(range(10_000)))
    responses.post(f"{BASE}/table/t/annotations", status=502, json={"message": "gateway"})
    data = [{"tag": "x"} for _ in range(15_000)]
    with pytest.raises(AnnotationUploadError) as info:
        client.post_annotation("t", data)
    err = info.value
    assert isinstance(err, requests.HTTPError)
    assert err.done == range(0, 10_000)
    assert err.uncertain == range(10_000, 15_000)  # a gateway error: the batch may have landed
    assert len(err.not_done) == 0
    assert err.result == list(range(10_000))
    assert err.status_code == 502
    assert "rows 0-9999 were written" in str(err) and "may or may not" in str(err)
    assert len(responses.calls) == 2  # the 502 was not retried: the POST may have landed


@responses.activate
def test_failed_later_batch_with_a_server_error_was_not_written() -> None:
    client = make_client()
    responses.post(f"{BASE}/table/t/annotations", json=list(range(3)))
    responses.post(f"{BASE}/table/t/annotations", status=422, json={"message": "bad field"})
    with pytest.raises(AnnotationUploadError) as info:
        client._write(
            "POST",
            "t",
            [{"a": i} for i in range(5)],
            key="annotations",
            aligned_volume_name=None,
            batch_size=3,
        )
    assert info.value.not_done == range(3, 5) and len(info.value.uncertain) == 0
    assert "bad field" in str(info.value)


class BatchServer:
    """A `responses` callback for the annotations URL that answers each batch with ids
    ``1000 + row`` (rows are tagged with their input position), fails the batches holding
    ``fail_rows`` with ``fail_status``, and records how many batches were under way at once.

    Every batch after the first waits (up to 2 s) until ``together`` batches have been seen
    under way at once, so the overlap is observed however slowly the threads are scheduled;
    a client that does not overlap makes each batch wait out the 2 s and ``peak`` stays 1.
    """

    def __init__(
        self, fail_rows: Set[int] = frozenset(), fail_status: int = 422, together: int = 4
    ) -> None:
        self.fail_rows = fail_rows
        self.fail_status = fail_status
        self.together = together
        self.changed = threading.Condition()
        self.in_flight = 0
        self.peak = 0
        self.alone_at_first = False
        self.batches: list[list[int]] = []

    def __call__(self, request: Any) -> tuple[int, dict[str, str], str]:
        rows = [int(a["tag"]) for a in json.loads(request.body)["annotations"]]
        with self.changed:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.batches.append(rows)
            self.changed.notify_all()
            if rows[0] == 0:
                self.alone_at_first = self.in_flight == 1
            else:
                self.changed.wait_for(lambda: self.peak >= self.together, timeout=2)
            self.in_flight -= 1
        if self.fail_rows & set(rows):
            return self.fail_status, {}, json.dumps({"message": "refused"})
        return 200, {}, json.dumps([1000 + row for row in rows])


def tagged(n: int) -> list[dict[str, str]]:
    return [{"tag": str(i)} for i in range(n)]


def failed_write(client: AnnotationClientV2, server: BatchServer, n: int) -> AnnotationUploadError:
    """The error of posting ``n`` tagged rows in batches of 2 to ``server``."""
    responses.add_callback(responses.POST, f"{BASE}/table/t/annotations", callback=server)
    with pytest.raises(AnnotationUploadError) as info:
        client._write(
            "POST", "t", tagged(n), key="annotations", aligned_volume_name=None, batch_size=2
        )
    return info.value


@responses.activate
def test_batches_after_the_first_overlap_and_ids_keep_the_input_order() -> None:
    client = make_client()
    assert client.batches_in_flight == 4
    server = BatchServer()
    responses.add_callback(responses.POST, f"{BASE}/table/t/annotations", callback=server)
    ids = client._write(
        "POST", "t", tagged(19), key="annotations", aligned_volume_name=None, batch_size=2
    )
    assert [i for answer in ids for i in answer] == [1000 + row for row in range(19)]
    assert server.alone_at_first  # the first batch is a probe: nothing else is under way
    assert server.peak == 4
    assert sorted(row for batch in server.batches for row in batch) == list(range(19))


@responses.activate
def test_one_batch_in_flight_sends_them_one_after_the_other() -> None:
    client = make_client()
    client.batches_in_flight = 1
    server = BatchServer(together=1)
    responses.add_callback(responses.POST, f"{BASE}/table/t/annotations", callback=server)
    assert client.post_annotation("t", tagged(25_000)) == [1000 + row for row in range(25_000)]
    assert server.peak == 1
    assert [batch[0] for batch in server.batches] == [0, 10_000, 20_000]


@responses.activate
def test_a_failed_batch_among_overlapping_ones_reports_every_batch_that_landed() -> None:
    client = make_client()
    client.batches_in_flight = 2
    server = BatchServer(fail_rows={4}, together=2)
    err = failed_write(client, server, 10)
    # Rows 0-3 landed before the failure of rows 4-5, and rows 6-7 were already under way;
    # nothing was started after the failure.
    assert err.done == [0, 1, 2, 3, 6, 7]
    assert err.not_done == [4, 5, 8, 9]
    assert len(err.uncertain) == 0
    assert err.result == [1000, 1001, 1002, 1003, 1006, 1007]
    assert err.status_code == 422
    assert "failed at rows 4-5: rows 0-3, 6-7 were written, rows 4-5, 8-9 were not" in str(err)
    assert sorted(row for batch in server.batches for row in batch) == list(range(8))


@responses.activate
def test_a_gateway_error_among_overlapping_batches_leaves_only_its_rows_uncertain() -> None:
    err = failed_write(make_client(), BatchServer(fail_rows={2}, fail_status=502), 9)
    assert err.uncertain == range(2, 4)
    assert err.done == [0, 1, 4, 5, 6, 7, 8]  # the window of four was under way
    assert len(err.not_done) == 0
    assert "rows 2-3 may or may not have been written" in str(err)


@responses.activate
def test_a_refused_first_batch_stops_the_write_before_any_other_batch() -> None:
    client = make_client()
    server = BatchServer(fail_rows={0}, fail_status=403)
    responses.add_callback(responses.POST, f"{BASE}/table/t/annotations", callback=server)
    with pytest.raises(requests.HTTPError) as info:
        client.post_annotation("t", tagged(30_000))
    assert not isinstance(info.value, AnnotationUploadError)  # nothing was written
    assert len(server.batches) == 1


@responses.activate
def test_unserialisable_annotation_fails_before_any_write() -> None:
    client = make_client()
    data = [{"tag": "a"}] * 3 + [{"tag": object()}]
    with pytest.raises(ValueError, match=r"annotations\[3\]\.tag"):
        client.post_annotation("t", data)
    assert len(responses.calls) == 0
    with pytest.raises(ValueError, match="annotation 1 must be a dict"):
        client.post_annotation("t", [{"a": 1}, 5])


@responses.activate
def test_update_and_delete_annotations() -> None:
    client = make_client()
    responses.put(
        f"{BASE}/table/t/annotations",
        json={"1": 11, "2": 12},
        match=[
            matchers.json_params_matcher(
                {"annotations": [{"id": 1, "tag": "a"}, {"id": 2, "tag": "b"}]}
            )
        ],
    )
    responses.delete(
        f"{BASE}/table/t/annotations",
        json=[1, 2],
        match=[matchers.json_params_matcher({"annotation_ids": [1, 2]})],
    )
    assert client.update_annotation("t", [{"id": 1, "tag": "a"}, {"id": 2, "tag": "b"}]) == {
        "1": 11,
        "2": 12,
    }
    assert client.delete_annotation("t", np.array([1, 2])) == [1, 2]
    with pytest.raises(ValueError, match="annotation 0 needs an integer 'id'"):
        client.update_annotation("t", [{"tag": "a"}])


@responses.activate
def test_update_put_is_not_retried() -> None:
    client = make_client()
    responses.put(f"{BASE}/table/t/annotations", status=503, json={"message": "busy"})
    with pytest.raises(requests.HTTPError):
        client.update_annotation("t", {"id": 1, "tag": "a"})
    assert len(responses.calls) == 1


@responses.activate
def test_get_annotation_batches_ids_in_the_url() -> None:
    client = make_client()
    responses.get(
        f"{BASE}/table/t/annotations",
        json=[{"id": 1}],
        match=[matchers.query_param_matcher({"annotation_ids": "1,2,3"})],
    )
    assert client.get_annotation("t", [1, 2, 3]) == [{"id": 1}]
    responses.get(f"{BASE}/table/t/annotations", json=[])
    client.get_annotation("t", range(10_000_000, 10_003_000))
    assert len(responses.calls) > 2
    assert all(len(c.request.url) < 7000 for c in responses.calls)


def test_process_position_columns_variants() -> None:
    df = pd.DataFrame(
        {
            "pt_position": [np.array([1, 2, 3]), [4, 5, 6]],
            "tag": ["a", "b"],
            "score": [0.5, np.nan],
        }
    )
    out = AnnotationClientV2.process_position_columns(df, ["pt_position"])
    assert out == [
        {"tag": "a", "score": 0.5, "pt": {"position": [1, 2, 3]}},
        {"tag": "b", "pt": {"position": [4, 5, 6]}},
    ]
    assert AnnotationClientV2.process_position_columns(df, None) == out
    mapped = AnnotationClientV2.process_position_columns(
        df.rename(columns={"pt_position": "where"}), {"where": "pt"}
    )
    assert mapped == out
    split = pd.DataFrame(
        {"pt_position_x": [1], "pt_position_y": [2], "pt_position_z": [3], "tag": ["a"]}
    )
    assert AnnotationClientV2.process_position_columns(split, ["pt_position"]) == [
        {"tag": "a", "pt": {"position": [1, 2, 3]}}
    ]
    with pytest.raises(ValueError, match="must end in '_position'"):
        AnnotationClientV2.process_position_columns(df, ["tag"])
    with pytest.raises(ValueError, match="needs 3 coordinates"):
        AnnotationClientV2.process_position_columns(
            pd.DataFrame({"pt_position": [[1, 2]]}), ["pt_position"]
        )


@responses.activate
def test_post_and_update_annotation_df() -> None:
    client = make_client()
    responses.post(
        f"{BASE}/table/t/annotations",
        json=[1],
        match=[
            matchers.json_params_matcher(
                {"annotations": [{"tag": "a", "pt": {"position": [1, 2, 3]}}]}
            )
        ],
    )
    responses.put(
        f"{BASE}/table/t/annotations",
        json={"1": 2},
        match=[
            matchers.json_params_matcher(
                {"annotations": [{"id": 1, "tag": "b", "pt": {"position": [1, 2, 3]}}]}
            )
        ],
    )
    df = pd.DataFrame({"pt_position": [[1, 2, 3]], "tag": ["a"]})
    assert client.post_annotation_df("t", df, ["pt_position"]) == [1]
    df2 = pd.DataFrame({"id": [1], "pt_position": [[1, 2, 3]], "tag": ["b"]})
    assert client.update_annotation_df("t", df2, ["pt_position"]) == {"1": 2}
    with pytest.raises(ValueError, match="'id' column"):
        client.update_annotation_df("t", df, ["pt_position"])


@responses.activate
def test_post_annotation_df_sends_25000_rows_in_3_posts_in_order() -> None:
    client = make_client()
    client.batches_in_flight = 1  # a counting server: see test_post_annotation_batches_at_10000
    ids_callback.next = 1  # type: ignore[attr-defined]
    responses.add_callback(
        responses.POST,
        f"{BASE}/table/t/annotations",
        callback=ids_callback,
        content_type="application/json",
    )
    n = 25_000
    xyz = np.arange(3 * n).reshape(n, 3)
    df = pd.DataFrame(
        {
            "pt_position": list(xyz),
            "tag": pd.Series([f"t{i}" for i in range(n)], dtype=object),
            "score": np.where(np.arange(n) % 7 == 0, np.nan, np.arange(n) / 2),
        }
    )
    ids = client.post_annotation_df("t", df, ["pt_position"])
    assert ids == list(range(1, n + 1))
    sent = [body(c)["annotations"] for c in responses.calls]
    assert [len(b) for b in sent] == [10_000, 10_000, 5_000]
    rows = [row for batch in sent for row in batch]
    for i in (0, 1, 9_999, 10_000, 19_999, 20_000, 24_999):
        expected: dict[str, Any] = {"tag": f"t{i}", "pt": {"position": xyz[i].tolist()}}
        if i % 7:
            expected["score"] = i / 2
        assert rows[i] == expected


@responses.activate
@pytest.mark.parametrize("bad_row", [0, 10_000, 24_999])
def test_post_annotation_df_bad_row_anywhere_fails_before_the_first_post(bad_row: int) -> None:
    client = make_client()
    responses.post(f"{BASE}/table/t/annotations", json=[])
    n = 25_000
    positions = [[i, 0, 0] for i in range(n)]
    tags: list[Any] = ["a"] * n
    tags[bad_row] = object()
    df = pd.DataFrame({"pt_position": positions, "tag": tags}, index=range(100, 100 + n))
    with pytest.raises(ValueError, match=rf"column 'tag', row {100 + bad_row}\b"):
        client.post_annotation_df("t", df, ["pt_position"])
    positions[bad_row] = [1, 2]
    df = pd.DataFrame({"pt_position": positions, "tag": ["a"] * n}, index=range(100, 100 + n))
    with pytest.raises(ValueError, match=rf"'pt_position', row {100 + bad_row}: .*3 coordinates"):
        client.post_annotation_df("t", df, ["pt_position"])
    assert len(responses.calls) == 0


@responses.activate
def test_post_annotation_bad_row_in_a_later_batch_is_named_by_its_global_row() -> None:
    client = make_client()
    responses.post(f"{BASE}/table/t/annotations", json=[])
    data: list[dict[str, Any]] = [{"tag": "a"} for _ in range(12_000)]
    data[10_003] = {"tag": {"deep": object()}}
    with pytest.raises(ValueError, match=r"annotations\[10003\]\.tag\.deep"):
        client.post_annotation("t", data)
    assert len(responses.calls) == 0


@responses.activate
def test_dataframe_values_keep_their_json_meaning() -> None:
    client = make_client()
    responses.post(f"{BASE}/table/t/annotations", json=[1, 2])
    df = pd.DataFrame(
        {
            "pt_position_x": [1, 2],
            "pt_position_y": [1.5, 2.0],
            "pt_position_z": np.array([3, 4], dtype=np.int32),
            "f32": np.array([0.1, np.nan], dtype=np.float32),
            "n": pd.array([None, 3], dtype="Int64"),
            "s": pd.Series(["a", None]),
            "when": pd.to_datetime(["2020-01-01", None]),
            "o": pd.Series([np.float32(0.1), pd.NA], dtype=object),
            "deep": pd.Series([[np.float32(0.5), np.nan, pd.NaT], Decimal("NaN")], dtype=object),
            "np_time": pd.Series([np.datetime64("2020-01-02T03:04:05"), None], dtype=object),
        }
    )
    client.post_annotation_df("t", df, None)
    assert body(responses.calls[0])["annotations"] == [
        {
            "f32": float(np.float32(0.1)),  # the float32's exact value, as before
            "s": "a",
            "when": "2020-01-01T00:00:00",
            "o": float(np.float32(0.1)),
            "deep": [0.5, None, None],
            "np_time": "2020-01-02T03:04:05",
            "pt": {"position": [1.0, 1.5, 3.0]},
        },
        {"n": 3, "deep": None, "pt": {"position": [2.0, 2.0, 4.0]}},
    ]


# ---------------------------------------------------------------------------------------------
# staged annotations
# ---------------------------------------------------------------------------------------------


def test_staged_annotations_fields_and_validation() -> None:
    stage = StagedAnnotations(CELL_TYPE_SCHEMA, table_name="cells")
    assert stage.fields_required == ["classification_system", "cell_type", "pt_position"]
    assert set(stage.fields) == {
        "valid",
        "classification_system",
        "cell_type",
        "pt_position",
        "confidence",
    }
    stage.add(cell_type="basket", classification_system="m", pt_position=np.array([1, 2, 3]))
    stage.add("m", "chandelier", [4, 5, 6], confidence=np.float32(0.5))
    assert stage.annotation_list == [
        {"cell_type": "basket", "classification_system": "m", "pt": {"position": [1, 2, 3]}},
        {
            "classification_system": "m",
            "cell_type": "chandelier",
            "pt": {"position": [4, 5, 6]},
            "confidence": 0.5,
        },
    ]
    with pytest.raises(AnnotationValidationError, match=r"annotation 2: field 'pt_position'") as e:
        stage.add(cell_type="x", classification_system="m", pt_position=[1, 2])
    assert e.value.row == 2 and e.value.field == "pt_position"
    with pytest.raises(AnnotationValidationError, match="field 'cell_type' is invalid"):
        stage.add(cell_type=5, classification_system="m", pt_position=[1, 2, 3])
    with pytest.raises(AnnotationValidationError, match="'classification_system' is required"):
        stage.add(cell_type="x", pt_position=[1, 2, 3])
    with pytest.raises(AnnotationValidationError, match="unknown field 'colour'|unexpected"):
        stage.add(cell_type="x", classification_system="m", pt_position=[1, 2, 3], colour=1)
    assert len(stage) == 2
    assert "cells" in repr(stage) and "2 new annotations" in repr(stage)


def test_staged_add_dataframe_is_all_or_nothing_and_names_the_row() -> None:
    stage = StagedAnnotations(CELL_TYPE_SCHEMA, table_name="cells")
    good = pd.DataFrame(
        {
            "classification_system": ["m", "m"],
            "cell_type": ["a", "b"],
            "pt_position": [[1, 2, 3], [4, 5, 6]],
        },
        index=[10, 11],
    )
    bad = good.copy()
    bad.loc[11, "pt_position"] = [1, 2]
    with pytest.raises(AnnotationValidationError, match="annotation 11: field 'pt_position'"):
        stage.add_dataframe(bad)
    assert len(stage) == 0
    with pytest.raises(ValueError, match=r"not in dataframe: \['cell_type'\]"):
        stage.add_dataframe(good.drop(columns=["cell_type"]))
    with pytest.raises(ValueError, match=r"not in schema: \['extra'\]"):
        stage.add_dataframe(good.assign(extra=1))
    stage.add_dataframe(good)
    assert stage.annotation_dataframe["cell_type"].tolist() == ["a", "b"]


def test_staged_update_requires_integer_id_and_scales_positions() -> None:
    stage = StagedAnnotations(
        CELL_TYPE_SCHEMA,
        update=True,
        table_resolution=[4, 4, 40],
        annotation_resolution=[1, 1, 1],
    )
    assert stage.fields_required[0] == "id" and stage.is_update
    stage.add(id=3, cell_type="a", classification_system="m", pt_position=[4, 8, 40])
    assert stage.annotation_list[0]["pt"]["position"] == [1.0, 2.0, 1.0]
    with pytest.raises(AnnotationValidationError, match="'id' must be an integer"):
        stage.add(id="3", cell_type="a", classification_system="m", pt_position=[4, 8, 40])


@responses.activate
def test_stage_and_upload_resumes_after_failure() -> None:
    schema_client = FakeSchemaClient()
    client = make_client(schema_client)
    responses.get(
        f"{BASE}/table/cells",
        status=201,
        json={
            "schema_type": "cell_type_local",
            "voxel_resolution_x": 4,
            "voxel_resolution_y": 4,
            "voxel_resolution_z": 40,
        },
    )
    stage = client.stage_annotations("cells", annotation_resolution=[1, 1, 1])
    assert schema_client.asked == ["cell_type_local"]
    for i in range(5):
        stage.add(cell_type="a", classification_system="m", pt_position=[4 * i, 0, 0])
    responses.post(f"{BASE}/table/cells/annotations", json=[100, 101])
    responses.post(f"{BASE}/table/cells/annotations", status=500, json={"message": "boom"})
    with pytest.raises(AnnotationUploadError) as info:
        client.upload_staged_annotations(stage, batch_size=2)
    assert info.value.done == range(0, 2)
    tracked = stage.to_dataframe(include_tracking=True)
    assert tracked["is_uploaded"].tolist() == [True, True, False, False, False]
    assert tracked["new_id"].tolist()[:2] == [100, 101]
    assert body(responses.calls[1])["annotations"][1]["pt"]["position"] == [1.0, 0.0, 0.0]
    # the rerun sends only rows 2-4
    responses.replace(responses.POST, f"{BASE}/table/cells/annotations", json=[102, 103, 104])
    assert client.upload_staged_annotations(stage) == [102, 103, 104]
    assert len(body(responses.calls[-1])["annotations"]) == 3
    assert stage.to_dataframe(include_tracking=True)["new_id"].tolist() == [100, 101, 102, 103, 104]
    assert client.upload_staged_annotations(stage) == []
    stage.purge_uploaded_annotations()
    assert len(stage) == 0


@responses.activate
def test_upload_staged_updates_returns_mapping() -> None:
    client = make_client()
    stage = StagedAnnotations(CELL_TYPE_SCHEMA, update=True, table_name="cells")
    stage.add(id=7, cell_type="a", classification_system="m", pt_position=[1, 2, 3])
    responses.put(f"{BASE}/table/cells/annotations", json={"7": 70})
    assert client.upload_staged_annotations(stage) == {"7": 70}
    assert stage.to_dataframe(include_tracking=True)["new_id"].tolist() == [70]


def test_upload_needs_a_table_name() -> None:
    client = make_client()
    stage = StagedAnnotations(CELL_TYPE_SCHEMA)
    with pytest.raises(ValueError, match="no table_name"):
        client.upload_staged_annotations(stage)
    with pytest.raises(ValueError, match="table_name or a schema_name"):
        client.stage_annotations()


@responses.activate
def test_a_body_that_cannot_be_built_stops_the_overlapping_batches_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_neurodata.clients.cave import annotationengine

    encode = annotationengine._encode_batch

    def refuse_the_third_batch(key: str, part: Any, start: int, table: str) -> bytes:
        if start == 20_000:
            raise ValueError("row 20000: value cannot be sent")
        return encode(key, part, start, table)

    monkeypatch.setattr(annotationengine, "_encode_batch", refuse_the_third_batch)
    server = BatchServer(together=1)
    responses.add_callback(responses.POST, f"{BASE}/table/t/annotations", callback=server)
    df = pd.DataFrame({"tag": [str(i) for i in range(50_000)]})
    with pytest.raises(AnnotationUploadError) as info:
        make_client().post_annotation_df("t", df, position_columns=[])
    err = info.value
    assert err.done == range(0, 20_000)
    assert err.not_done == range(20_000, 50_000) and len(err.uncertain) == 0
    assert "value cannot be sent" in str(err)
    assert [batch[0] for batch in server.batches] == [0, 10_000]  # nothing sent after it
