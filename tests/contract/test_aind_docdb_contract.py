"""AIND DocDB clients against the sandbox's DocDB REST stand-in, over real HTTP.

Reads of the seeded metadata collections are checked against the database itself (pymongo on
the sandbox's MongoDB-wire server). Writes go to a scratch collection of the analysis database
(or, for registration, to a location this module uploads and removes), so the seeded data other
tests rely on is left as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pymongo
import pytest
import requests

from prefect_neurodata.clients import http
from prefect_neurodata.clients.aind.document_db import (
    AnalysisDbClient,
    BulkWriteFailed,
    MetadataDbClient,
    SchemaDbClient,
)
from prefect_neurodata.clients.aind.utils import (
    build_docdb_location_to_id_map,
    does_metadata_record_exist_in_docdb,
    fetch_records_by_filter_list,
    get_record_from_docdb,
    get_s3_bucket_and_prefix,
    paginate_docdb,
)

FAST_RETRY = http.RetryPolicy(
    max_retries=10, backoff_factor=0.02, backoff_max=0.2, statuses=http.TRANSIENT_STATUSES | {500}
)
PHYSICAL_DB = {"v1": "metadata_index", "v2": "metadata_index_v2"}


@pytest.fixture(scope="module")
def env(sandbox: Any) -> dict[str, str]:
    return sandbox.env


@pytest.fixture(scope="module")
def boto_session(env: dict[str, str]) -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="module")
def mongo(env: dict[str, str]) -> Iterator[pymongo.MongoClient]:
    client = pymongo.MongoClient(env["NEURODATA_MONGO_URI"])
    yield client
    client.close()


def plain(doc: dict) -> dict:
    """A document as the REST API renders it (JSON types only)."""
    return json.loads(json.dumps(doc, default=str))


def truth(mongo: pymongo.MongoClient, version: str, flt: dict | None = None) -> dict[str, dict]:
    coll = mongo[PHYSICAL_DB[version]]["data_assets"]
    return {doc["_id"]: plain(doc) for doc in coll.find(flt or {})}


def metadata_client(env: dict, boto_session: Any, version: str, **kw: Any) -> MetadataDbClient:
    kw.setdefault("retry", FAST_RETRY)
    return MetadataDbClient(
        host=env["NEURODATA_DOCDB_HOST"], version=version, boto=boto_session, **kw
    )


@pytest.fixture
def scratch(env: dict[str, str], boto_session: Any) -> Iterator[AnalysisDbClient]:
    client = AnalysisDbClient(
        host=env["NEURODATA_DOCDB_HOST"],
        collection=f"contract_{uuid.uuid4().hex[:10]}",
        boto=boto_session,
        retry=FAST_RETRY,
        max_workers=4,
    )
    yield client
    client.close()


# -- reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_retrieve_all_records_exactly_once(env, boto_session, mongo, version):
    expected = truth(mongo, version)
    assert len(expected) >= 50  # seeded, and several pages at the fixture's page cap
    with metadata_client(env, boto_session, version) as client:
        records = client.retrieve_docdb_records()
    ids = [r["_id"] for r in records]
    assert len(ids) == len(set(ids)) == len(expected)
    assert ids == sorted(ids)
    assert {r["_id"]: r for r in records} == expected


def test_retrieve_filter_projection_sort_limit(env, boto_session, mongo):
    expected = truth(mongo, "v1", {"data_description.data_level": "raw"})
    with metadata_client(env, boto_session, "v1") as client:
        raw = client.retrieve_docdb_records(
            filter_query={"data_description.data_level": "raw"}, projection={"name": 1, "_id": 0}
        )
        assert sorted(r["name"] for r in raw) == sorted(d["name"] for d in expected.values())
        assert all(set(r) == {"name"} for r in raw)

        by_name = client.retrieve_docdb_records(sort={"name": -1}, projection={"name": 1})
        all_names = sorted((d["name"] for d in truth(mongo, "v1").values()), reverse=True)
        assert [r["name"] for r in by_name] == all_names

        top = client.retrieve_docdb_records(sort={"name": -1}, limit=7, projection={"name": 1})
        assert [r["name"] for r in top] == all_names[:7]
        first_ids = client.retrieve_docdb_records(limit=5, projection={"_id": 1})
        assert [r["_id"] for r in first_ids] == sorted(truth(mongo, "v1"))[:5]

        since = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
        recent = client.retrieve_docdb_records(
            filter_query={"last_modified": {"$gte": since}}, projection={"_id": 1}
        )
        assert len(recent) == len(
            truth(mongo, "v1", {"last_modified": {"$gte": "2000-01-01T00:00:00Z"}})
        )
        assert client._count_records({"data_description.data_level": "raw"}) == {
            "total_record_count": len(truth(mongo, "v1")),
            "filtered_record_count": len(expected),
        }


def test_paginate_docdb_every_record_once(env, boto_session, mongo):
    expected = truth(mongo, "v2")
    with metadata_client(env, boto_session, "v2") as client:
        pages = list(paginate_docdb(client, page_size=40, projection={"name": 1}))
    assert all(0 < len(page) <= 40 for page in pages)
    ids = [r["_id"] for page in pages for r in page]
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == set(expected)


def test_aggregate_and_filter_list_and_location_map(env, boto_session, mongo):
    expected = truth(mongo, "v1")
    docs = list(expected.values())
    with metadata_client(env, boto_session, "v1") as client:
        counts = client.aggregate_docdb_records(
            [{"$group": {"_id": "$data_description.data_level", "n": {"$sum": 1}}}]
        )
        assert sum(c["n"] for c in counts) == len(docs)

        names = [d["name"] for d in docs] + ["not-a-name"]
        found = client.fetch_records_by_filter_list("name", names, chunk_size=13)
        assert sorted(r["_id"] for r in found) == sorted(expected)
        assert {r["_id"]: r for r in found} == expected
        some = fetch_records_by_filter_list(client, "name", names[:3], projection={"name": 1})
        assert sorted(r["name"] for r in some) == sorted(names[:3])

        picked = docs[:5]
        parts = [get_s3_bucket_and_prefix(d["location"]) for d in picked]
        bucket = parts[0]["bucket"]
        same_bucket = [p["prefix"] + "/" for p in parts if p["bucket"] == bucket]
        mapping = build_docdb_location_to_id_map(client, bucket, [*same_bucket, "missing"])
        assert mapping == {
            d["location"]: d["_id"] for d in picked if d["location"].startswith(f"s3://{bucket}/")
        }
        assert get_record_from_docdb(client, picked[0]["_id"]) == picked[0]
        assert get_record_from_docdb(client, "no-such-id") is None
        assert does_metadata_record_exist_in_docdb(client, parts[0]["bucket"], parts[0]["prefix"])


def test_read_errors_are_service_errors(env, boto_session):
    with metadata_client(env, boto_session, "v1") as client:
        with pytest.raises(requests.HTTPError) as info:
            client.aggregate_docdb_records([{"$match_invalid": {}}])
        assert isinstance(info.value, http.ServiceError)
        assert info.value.status_code == 400 and info.value.server_message


# -- writes -----------------------------------------------------------------------------------


def test_crud_round_trip(scratch: AnalysisDbClient):
    rid = uuid.uuid4()
    when = dt.datetime(2025, 3, 17, 8, 30, tzinfo=dt.timezone.utc)
    inserted = scratch.insert_one_docdb_record({"_id": rid, "name": "a", "created": when})
    assert inserted.status_code == 200 and inserted.json()["acknowledged"] is True
    no_id = scratch.insert_one_docdb_record({"name": "server assigns the id"})
    new_id = no_id.json()["insertedId"]

    upsert = scratch.upsert_one_docdb_record({"_id": rid, "nested.field": 3, "name": "b"})
    assert upsert.json()["matchedCount"] == 1
    (record,) = scratch.retrieve_docdb_records(filter_query={"_id": rid})
    assert record["name"] == "b" and record["nested"] == {"field": 3}
    assert record["created"] == "2025-03-17T08:30:00Z"

    records = [{"_id": f"bulk-{i:03d}", "i": i, "blob": "x" * 3000} for i in range(60)]
    chunks = scratch.upsert_list_of_docdb_records(records, max_payload_size=20_000)
    assert len(chunks) > 3 and all(r.status_code == 200 for r in chunks)
    assert sum(r.json()["nUpserted"] for r in chunks) == 60
    again = scratch.upsert_list_of_docdb_records(records, max_payload_size=20_000)
    assert sum(r.json()["nMatched"] for r in again) == 60
    back = scratch.retrieve_docdb_records(filter_query={"_id": {"$regex": "^bulk-"}})
    assert [(r["_id"], r["i"]) for r in back] == [(r["_id"], r["i"]) for r in records]

    assert scratch.delete_one_record(str(rid)).json()["deletedCount"] == 1
    assert scratch.delete_one_record(str(rid)).json()["deletedCount"] == 0
    ids = [r["_id"] for r in records] + [new_id]
    assert scratch.delete_many_records(ids).json()["deletedCount"] == 61
    assert scratch.retrieve_docdb_records() == []


def test_bulk_write_error_names_records_that_did_not_land(scratch: AnalysisDbClient):
    # Changing an existing _id through $set is refused by the server: that record fails.
    scratch.insert_one_docdb_record({"_id": "ok-1", "v": 0})
    good = [{"_id": f"ok-{i}", "v": i} for i in range(6)]
    with pytest.raises(BulkWriteFailed) as info:
        scratch.upsert_list_of_docdb_records(
            [*good[:3], {"_id": {"$bad": 1}, "v": 9}, *good[3:]], max_payload_size=200
        )
    assert {"$bad": 1} in info.value.failed_ids
    assert not any(i in info.value.failed_ids for i in ("ok-0", "ok-1", "ok-2"))
    landed = {r["_id"] for r in scratch.retrieve_docdb_records()}
    assert {"ok-0", "ok-1", "ok-2"} <= landed


def test_wrong_credentials_are_refused(env: dict[str, str]):
    wrong = boto3.session.Session(
        aws_access_key_id="AKIAWRONGWRONGWRONG0", aws_secret_access_key="x" * 40,
        region_name=env["AWS_DEFAULT_REGION"],
    )  # fmt: skip
    client = AnalysisDbClient(host=env["NEURODATA_DOCDB_HOST"], collection="c", boto=wrong)
    with pytest.raises(http.ServiceError) as info:
        client.upsert_one_docdb_record({"_id": "x"})
    assert info.value.status_code == 403


def test_schema_client(env: dict[str, str], boto_session: Any):
    coll = f"contract_{uuid.uuid4().hex[:8]}"
    client = SchemaDbClient(
        host=env["NEURODATA_DOCDB_HOST"], collection=coll, boto=boto_session, retry=FAST_RETRY
    )
    client.upsert_list_of_docdb_records([{"_id": "1.0.0", "v": 1}, {"_id": "2.0.0", "v": 2}])
    (schema,) = client.retrieve_schema_records(schema_version="2.0.0")
    assert (schema["_id"], schema["v"]) == ("2.0.0", 2)
    assert [r["_id"] for r in client.retrieve_schema_records(sort={"_id": -1})] == [
        "2.0.0",
        "1.0.0",
    ]
    assert len(client.retrieve_schema_records(limit=1)) == 1
    client.delete_many_records(["1.0.0", "2.0.0"])


# -- admin routes -------------------------------------------------------------------------------


@pytest.fixture
def fresh_asset(env: dict[str, str]) -> Iterator[str]:
    """An S3 asset folder with core metadata files that DocDB does not know yet."""
    bucket = env["NEURODATA_S3_BUCKET"]
    name = f"ecephys_{uuid.uuid4().int % 900000 + 100000}_2025-01-01_00-00-00"
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    core = {
        "data_description": {"name": name, "subject_id": "123456", "data_level": "raw"},
        "subject": {"subject_id": "123456", "sex": "Female"},
    }
    for key, value in core.items():
        s3.put_object(Bucket=bucket, Key=f"{name}/{key}.json", Body=json.dumps(value).encode())
    yield f"s3://{bucket}/{name}"
    for key in core:
        s3.delete_object(Bucket=bucket, Key=f"{name}/{key}.json")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_register_qc_summary_deregister(env, boto_session, fresh_asset, version):
    with metadata_client(env, boto_session, version) as client:
        result = client.register_asset(fresh_asset + "/")
        assert result["registered_docdb"] is True
        (record,) = client.retrieve_docdb_records(filter_query={"location": fresh_asset})
        assert record["subject"]["subject_id"] == "123456"

        status = {"evaluator": "me", "status": "Pass", "timestamp": "2025-01-01T00:00:00Z"}
        metric = {"name": "m", "value": 1, "status_history": [status]}
        modality = {"name": "Extracellular electrophysiology", "abbreviation": "ecephys"}
        if version == "v1":
            item = {"modality": modality, "stage": "Raw data", "name": "e", "metrics": [metric]}
        else:
            item = {**metric, "modality": modality, "stage": "Raw data"}
        qc = client.add_qc_evaluation(record["_id"], {"qc_evaluation": [item]})
        assert qc == {"acknowledged": True, "matchedCount": 1}
        summary = client.generate_data_summary(record["_id"])
        assert summary["parameters"]["docdb_id"] == record["_id"]

        with pytest.raises(http.ServiceError) as info:
            client.add_qc_evaluation("no-such-record", {"qc_evaluation": [item]})
        assert info.value.status_code == 404

        co_location = f"s3://{env['NEURODATA_S3_BUCKET']}/co-{uuid.uuid4()}"
        co = client.register_co_result(co_location, "a result", "co-asset-1", "comp-1")
        assert "result asset" in co["message"]

        gone = client.deregister_asset(fresh_asset)
        assert gone["deregistered_docdb"] is True
        assert client.deregister_asset(co_location)["deregistered_docdb"] is True
        assert client.retrieve_docdb_records(filter_query={"location": fresh_asset}) == []


# -- with injected transient faults ---------------------------------------------------------------


@pytest.fixture
def faults(sandbox: Any) -> Iterator[None]:
    sandbox.faults(
        "docdb",
        rate=0.2,
        statuses=[429, 500, 502, 503, 504],
        drop_rate=0.02,
        seed=11,
        retry_after=0,
    )
    try:
        yield
    finally:
        sandbox.faults("docdb")


def test_reads_and_idempotent_writes_survive_20_percent_faults(
    env, boto_session, mongo, scratch, faults
):
    expected = truth(mongo, "v1")
    with metadata_client(env, boto_session, "v1", max_workers=4) as client:
        records = client.retrieve_docdb_records()
        assert {r["_id"]: r for r in records} == expected and len(records) == len(expected)
        pages = list(paginate_docdb(client, page_size=30))
        assert [r["_id"] for p in pages for r in p] == sorted(expected)
        found = client.fetch_records_by_filter_list(
            "name", [d["name"] for d in expected.values()], chunk_size=20
        )
        assert {r["_id"]: r for r in found} == expected
        assert client._count_records()["total_record_count"] == len(expected)
        sorted_names = client.retrieve_docdb_records(sort={"name": 1}, projection={"name": 1})
        assert [r["name"] for r in sorted_names] == sorted(d["name"] for d in expected.values())

    records = [{"_id": f"f-{i:03d}", "i": i, "blob": "y" * 2000} for i in range(80)]
    scratch.upsert_list_of_docdb_records(records, max_payload_size=15_000)
    scratch.upsert_one_docdb_record({"_id": "f-000", "extra": True})
    back = scratch.retrieve_docdb_records(projection={"i": 1, "extra": 1})
    assert [(r["_id"], r["i"]) for r in back] == [(r["_id"], r["i"]) for r in records]
    assert back[0]["extra"] is True
    scratch.delete_many_records([r["_id"] for r in records])
    assert scratch.retrieve_docdb_records() == []

    stats = requests.get(f"{env['NEURODATA_DOCDB_HOST']}/__sandbox__/stats", timeout=10).json()
    injected = sum(stats["faults"].values()) + stats["drops"]
    assert stats["requests"] > 30 and injected >= 0.1 * stats["requests"], stats


def test_inserts_whose_answers_were_lost_land_once_and_report_done(
    env, sandbox, scratch: AnalysisDbClient
):
    # The stand-in carries each of these requests out but may answer 504 instead: the write
    # landed and its answer was lost. A retried insert then meets its own record.
    sandbox.faults("docdb", lost_rate=0.3, seed=5)
    try:
        answers = [
            scratch.insert_one_docdb_record({"_id": f"l-{i:02d}", "i": i}) for i in range(20)
        ]
        stats = requests.get(f"{env['NEURODATA_DOCDB_HOST']}/__sandbox__/stats", timeout=10).json()
    finally:
        sandbox.faults("docdb")
    assert stats["lost"] >= 3, stats  # answers really were lost, inserts among them
    assert [a.json() for a in answers] == [
        {"acknowledged": True, "insertedId": f"l-{i:02d}"} for i in range(20)
    ]
    stored = scratch.retrieve_docdb_records()
    assert [(r["_id"], r["i"]) for r in stored] == [(f"l-{i:02d}", i) for i in range(20)]
    # A different record under a taken _id is still refused.
    with pytest.raises(requests.HTTPError, match="E11000"):
        scratch.insert_one_docdb_record({"_id": "l-00", "i": 99})
