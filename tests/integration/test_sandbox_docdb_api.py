"""The DocDB REST stand-in over real HTTP: uvicorn on 127.0.0.1, SecantusDB, moto S3.

Requests are built by hand (requests + botocore SigV4Auth) so these tests pin the wire protocol
of reference section 1 independently of our client.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import orjson
import pymongo
import pytest
import requests
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.server import ThreadedMotoServer
from secantus import SecantusDBServer

from prefect_neurodata.sandbox.docdb.app import create_app
from prefect_neurodata.sandbox.docdb.config import DocDBConfig

pytestmark = pytest.mark.integration

KEY_ID = "AKIASANDBOXTEST"
SECRET = "sandbox-secret-key"
REGION = "us-west-2"
PAGE_BYTES = 200_000
REQUEST_BYTES = 1_000_000
BUCKET = "aind-ephys-data"
COLL = "/v1/metadata_index/data_assets"
COLL2 = "/v2/metadata_index/data_assets"


# -- servers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mongo() -> Iterator[SecantusDBServer]:
    srv = SecantusDBServer(host="127.0.0.1", port=0, storage_path=":memory:")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    yield f"http://{host}:{port}"
    srv.stop()


class UvicornThread:
    """A real uvicorn server in a daemon thread (port chosen by the OS)."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def config(mongo: SecantusDBServer, moto_url: str) -> DocDBConfig:
    return DocDBConfig(
        mongo_uri=mongo.uri,
        aws_endpoint_url=moto_url,
        aws_region=REGION,
        access_key_id=KEY_ID,
        secret_access_key=SECRET,
        page_bytes=PAGE_BYTES,
        request_bytes=REQUEST_BYTES,
    )


@pytest.fixture(scope="module")
def app(config: DocDBConfig):
    return create_app(config)


@pytest.fixture(scope="module")
def base(app) -> Iterator[str]:
    with UvicornThread(app) as url:
        yield url


@pytest.fixture(scope="module")
def db(mongo: SecantusDBServer) -> Iterator[pymongo.MongoClient]:
    client = pymongo.MongoClient(mongo.uri, directConnection=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(autouse=True)
def _faults_off(base: str, http: requests.Session) -> Iterator[None]:
    yield
    http.put(base + "/__sandbox__/faults", json={})


# -- helpers ---------------------------------------------------------------------------------
def make_record(i: int, pad: int = 6_000) -> dict[str, Any]:
    name = f"ecephys_{600000 + i}_2024-01-{1 + i % 28:02d}_10-00-00"
    return {
        "_id": str(uuid.UUID(int=i + 1)),
        "name": name,
        "location": f"s3://{BUCKET}/{name}",
        "created": f"2024-01-{1 + i % 28:02d}T10:00:00Z",
        "subject": {"subject_id": str(600000 + i), "sex": "Male" if i % 2 else "Female"},
        "data_description": {"project_name": "Ephys Platform" if i % 3 else "Other"},
        "processing": {"notes": "x" * pad},
    }


def signed(
    http: requests.Session,
    method: str,
    url: str,
    body: Any = None,
    *,
    key: str = KEY_ID,
    secret: str = SECRET,
    region: str = REGION,
    service: str = "execute-api",
    raw: bytes | None = None,
) -> requests.Response:
    """Sign like the official client: body = json.dumps, Content-Type JSON, execute-api."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = AWSRequest(
        method=method, url=url, data=data, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    return http.request(method, url, data=data, headers=dict(request.headers.items()))


def find(http: requests.Session, base: str, path: str = COLL, **params: Any) -> requests.Response:
    query = {
        k: (json.dumps(v) if k in ("filter", "projection", "sort") else str(v))
        for k, v in params.items()
    }
    return http.get(base + path + "/find", params=query)


@pytest.fixture(scope="module")
def seeded(db: pymongo.MongoClient) -> list[dict[str, Any]]:
    records = [make_record(i) for i in range(40)]
    db.metadata_index.data_assets.insert_many(records)
    v2 = [
        {"_id": f"v2-{i}", "name": f"{600000 + i}_2024-01-01T100000", "location": f"s3://b/v2-{i}"}
        for i in range(5)
    ]
    db.metadata_index_v2.data_assets.insert_many(v2)
    db.schemas.ecephys.insert_many([{"_id": "1.2.1", "title": "schema 1.2.1"}, {"_id": "1.1.0"}])
    return records


# -- health and routing ---------------------------------------------------------------------
def test_health_reports_mongo(base: str, http: requests.Session) -> None:
    r = http.get(base + "/__sandbox__/health")
    assert r.status_code == 200
    assert r.json()["mongo"] == "ok" and r.json()["service"] == "docdb"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v3/metadata_index/data_assets/find",
        "/v1/unknown_db/data_assets/find",
        "/v1/metadata_index/data_assets/find_all",
        "/v1/metadata_index/data_assets/find/extra",
        "/v1/assets/register/now",
        "/docs",
        "/openapi.json",
    ],
)
def test_unknown_path_is_gateway_404(base: str, http: requests.Session, path: str) -> None:
    r = http.get(base + path)
    assert r.status_code == 404
    assert r.json() == {"message": "Not Found"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", COLL + "/find", "GET"),
        ("GET", COLL + "/aggregate", "POST"),
        ("GET", COLL + "/update_one", "POST"),
        ("POST", COLL + "/delete_many", "DELETE"),
        ("GET", "/v1/assets/register", "POST"),
        ("POST", "/v1/assets/deregister", "DELETE"),
        ("POST", "/v1/data_summary/abc", "GET"),
        ("PUT", COLL, "GET"),
    ],
)
def test_wrong_method_is_405(
    base: str, http: requests.Session, method: str, path: str, allowed: str
) -> None:
    r = http.request(method, base + path, data=b"{}")
    assert r.status_code == 405
    assert r.json() == {"message": "Method Not Allowed"}
    assert r.headers["allow"] == allowed


# -- reads ------------------------------------------------------------------------------------
def test_find_params_filter_projection_sort_skip_limit(
    base: str, http: requests.Session, seeded: list[dict]
) -> None:
    r = find(
        http,
        base,
        limit=3,
        skip=1,
        filter={"data_description.project_name": "Ephys Platform"},
        projection={"name": 1, "created": 1},
        sort={"name": -1},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    expected = sorted(
        (rec for rec in seeded if rec["data_description"]["project_name"] == "Ephys Platform"),
        key=lambda rec: rec["name"],
        reverse=True,
    )[1:4]
    assert r.json() == [
        {"_id": rec["_id"], "name": rec["name"], "created": rec["created"]} for rec in expected
    ]


def test_find_past_the_end_is_empty_array(base: str, http: requests.Session, seeded) -> None:
    r = find(http, base, limit=5, skip=10_000)
    assert r.status_code == 200 and r.json() == []


def test_find_sort_keeps_key_order(base: str, http: requests.Session, seeded) -> None:
    r = find(
        http,
        base,
        limit=0,
        skip=0,
        projection={"subject.sex": 1, "name": 1},
        sort={"subject.sex": 1, "name": -1},
    )
    got = [(d["subject"]["sex"], d["name"]) for d in r.json()]
    assert got == sorted(got, key=lambda t: (t[0], [-ord(c) for c in t[1]]))
    assert got[0][0] == "Female"


def test_find_pages_are_short_under_byte_cap_and_cover_everything(
    base: str, http: requests.Session, seeded: list[dict], db: pymongo.MongoClient
) -> None:
    # ~6.4 KB records: 200 KB pages hold ~30 of the 40+, so limit=0 pages come back short.
    pages, skip = [], 0
    while True:
        r = find(http, base, limit=0, skip=skip)
        assert r.status_code == 200
        assert len(r.content) <= PAGE_BYTES
        page = r.json()
        if not page:
            break
        pages.append(page)
        skip += len(page)
    assert len(pages) >= 2
    ids = [d["_id"] for page in pages for d in page]
    assert sorted(ids) == sorted(db.metadata_index.data_assets.distinct("_id"))
    assert len(set(ids)) == len(ids)


def test_find_short_page_when_limit_exceeds_budget(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    coll = db.analysis.big_pages
    coll.insert_many([{"_id": i, "blob": "y" * 30_000} for i in range(20)])
    r = find(http, base, "/v1/analysis/big_pages", limit=20, skip=0)
    page = r.json()
    assert r.status_code == 200
    assert 0 < len(page) < 20  # fewer than limit: the byte cap cut the page
    assert len(r.content) <= PAGE_BYTES
    assert len(r.content) + 30_050 > PAGE_BYTES  # and it was filled as far as it could
    r2 = find(http, base, "/v1/analysis/big_pages", limit=20, skip=len(page))
    assert r2.json()[0]["_id"] == len(page)


def test_single_record_over_cap_is_413(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    db.analysis.huge.insert_one({"_id": "huge", "blob": "z" * (PAGE_BYTES + 10)})
    r = find(http, base, "/v1/analysis/huge", limit=1, skip=0)
    assert r.status_code == 413
    assert r.json() == {
        "message": f"Response payload size exceeded maximum allowed payload size ({PAGE_BYTES}"
        " bytes)."
    }
    # A projection that leaves the blob out fits.
    r = find(http, base, "/v1/analysis/huge", limit=1, skip=0, projection={"blob": 0})
    assert r.json() == [{"_id": "huge"}]


def test_bare_get_is_413_when_too_large_and_works_small(
    base: str, http: requests.Session, seeded
) -> None:
    r = http.get(base + COLL, params={"limit": "0", "skip": "0"})
    assert r.status_code == 413
    r = http.get(
        base + "/v1/schemas/ecephys",
        params={"filter": json.dumps({"_id": "1.2.1"}), "limit": "0", "skip": "0"},
    )
    assert r.status_code == 200
    assert r.json() == [{"_id": "1.2.1", "title": "schema 1.2.1"}]


def test_count_documents(base: str, http: requests.Session, seeded) -> None:
    r = http.get(base + COLL + "/count_documents")
    assert r.status_code == 200
    total = r.json()["total_record_count"]
    assert total >= 40 and r.json()["filtered_record_count"] == total
    r = http.get(
        base + COLL + "/count_documents",
        params={"filter": json.dumps({"subject.sex": "Male"})},
    )
    assert r.json() == {"total_record_count": total, "filtered_record_count": 20}


def test_count_documents_rejects_read_params(base: str, http: requests.Session) -> None:
    r = http.get(base + COLL + "/count_documents", params={"limit": "5"})
    assert r.status_code == 400
    assert r.json()["error"] == "BadRequest" and "'limit'" in r.json()["detail"]


def test_aggregate_and_in_filter_list(base: str, http: requests.Session, seeded) -> None:
    ids = [seeded[0]["_id"], seeded[5]["_id"]]
    r = http.post(
        base + COLL + "/aggregate",
        json=[{"$match": {"_id": {"$in": ids}}}, {"$project": {"name": 1}}, {"$sort": {"_id": 1}}],
    )
    assert r.status_code == 200
    assert r.json() == [
        {"_id": i, "name": n}
        for i, n in sorted((s["_id"], s["name"]) for s in (seeded[0], seeded[5]))
    ]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([{"$match_invalid": {}}], "MongoServerError"),
        ([{"$out": "copy"}], "BadRequest"),
        ({"$match": {}}, "BadRequest"),
    ],
)
def test_aggregate_errors_are_400(base: str, http: requests.Session, body, error: str) -> None:
    r = http.post(base + COLL + "/aggregate", json=body)
    assert r.status_code == 400
    assert r.json()["error"] == error
    assert "MongoServerError" in r.text or error != "MongoServerError"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"limit": "5", "skip": "0", "page": "2"}, "'page'"),
        ({"limit": "five"}, "'limit' must be an integer"),
        ({"skip": "-1"}, "'skip' must be >= 0"),
        ({"filter": "{not json"}, "'filter' is not valid JSON"),
        ({"filter": "[1, 2]"}, "'filter' must be a JSON object"),
        ({"projection": "3"}, "'projection' must be a JSON object"),
        ({"sort": json.dumps([["name", 1]])}, "'sort' must be a JSON object"),
        ({"sort": json.dumps({"name": 2})}, "must be 1 or -1"),
    ],
)
def test_find_bad_parameters_are_400(
    base: str, http: requests.Session, params: dict, needle: str
) -> None:
    r = http.get(base + COLL + "/find", params=params)
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "BadRequest" and needle in body["detail"]


def test_find_bad_operator_is_mongo_error(base: str, http: requests.Session) -> None:
    r = find(http, base, limit=1, skip=0, filter={"$bogus": 1})
    assert r.status_code == 400
    assert r.json()["error"] == "MongoServerError"
    assert "$bogus" in r.json()["detail"]


def test_duplicate_query_parameter_is_400(base: str, http: requests.Session) -> None:
    r = http.get(base + COLL + "/find?limit=1&limit=2")
    assert r.status_code == 400 and "more than once" in r.json()["detail"]


def test_iso_string_date_filter(base: str, http: requests.Session, seeded) -> None:
    r = find(
        http,
        base,
        limit=0,
        skip=0,
        filter={"created": {"$gte": "2024-01-27T00:00:00Z"}},
        projection={"created": 1},
    )
    assert r.status_code == 200
    assert {d["created"][:10] for d in r.json()} <= {"2024-01-27", "2024-01-28"}
    assert len(r.json()) == sum(1 for s in seeded if s["created"] >= "2024-01-27")


# -- auth -------------------------------------------------------------------------------------
WRITE_ROUTES = [
    ("POST", COLL + "/insert_one"),
    ("POST", COLL + "/update_one"),
    ("POST", COLL + "/bulk_write"),
    ("DELETE", COLL + "/delete_one"),
    ("DELETE", COLL + "/delete_many"),
    ("POST", "/v1/assets/register"),
    ("DELETE", "/v1/assets/deregister"),
    ("POST", "/v1/add_qc_evaluation"),
    ("GET", "/v1/data_summary/some-id"),
    ("POST", "/v2/analysis/results/insert_one"),
]


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
def test_unsigned_write_or_admin_is_403_missing_token(
    base: str, http: requests.Session, method: str, path: str
) -> None:
    r = http.request(method, base + path, json={"filter": {"_id": "x"}})
    assert r.status_code == 403
    assert r.json() == {"message": "Missing Authentication Token"}


def test_bad_secret_is_403_signature_mismatch(base: str, http: requests.Session) -> None:
    r = signed(http, "POST", base + COLL + "/insert_one", {"name": "x"}, secret="wrong")
    assert r.status_code == 403
    message = r.json()["message"]
    assert message.startswith(
        "The request signature we calculated does not match the signature you provided."
    )
    assert "The Canonical String for this request should have been" in message


def test_tampered_body_is_403(base: str, http: requests.Session) -> None:
    url = base + COLL + "/insert_one"
    data = json.dumps({"name": "x"}).encode()
    request = AWSRequest(
        method="POST", url=url, data=data, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(KEY_ID, SECRET), "execute-api", REGION).add_auth(request)
    r = http.post(url, data=data.replace(b"x", b"y"), headers=dict(request.headers.items()))
    assert r.status_code == 403 and "does not match" in r.json()["message"]


def test_unknown_key_wrong_region_wrong_service(base: str, http: requests.Session) -> None:
    url = base + COLL + "/delete_one"
    r = signed(http, "DELETE", url, {"filter": {"_id": "x"}}, key="AKIAOTHER")
    assert r.json() == {"message": "The security token included in the request is invalid."}
    r = signed(http, "DELETE", url, {"filter": {"_id": "x"}}, region="us-east-1")
    assert r.status_code == 403
    assert r.json()["message"].startswith("Credential should be scoped to a valid region")
    r = signed(http, "DELETE", url, {"filter": {"_id": "x"}}, service="lambda")
    assert r.json() == {
        "message": "Credential should be scoped to correct service: 'execute-api'. "
    }


def test_expired_signature_is_403(base: str, http: requests.Session) -> None:
    past = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=6)
    with mock.patch("botocore.auth.get_current_datetime", return_value=past):
        r = signed(http, "DELETE", base + COLL + "/delete_one", {"filter": {"_id": "x"}})
    assert r.status_code == 403
    assert r.json()["message"].startswith("Signature expired: ")
    assert "- 5 min.)" in r.json()["message"]


def test_garbage_authorization_is_403(base: str, http: requests.Session) -> None:
    r = http.post(base + COLL + "/insert_one", json={}, headers={"Authorization": "Bearer abc"})
    assert r.status_code == 403
    assert "Authorization header requires 'Credential' parameter." in r.json()["message"]


def test_signed_read_is_fine(base: str, http: requests.Session, seeded) -> None:
    r = signed(http, "GET", base + COLL + "/count_documents")
    assert r.status_code == 200 and "total_record_count" in r.json()


# -- request size -----------------------------------------------------------------------------
def test_oversize_request_is_413_request_too_long(base: str, http: requests.Session) -> None:
    big = [{"$match": {"name": "a" * (REQUEST_BYTES + 10)}}]
    r = http.post(base + COLL + "/aggregate", json=big)
    assert r.status_code == 413
    assert r.json() == {"message": "Request Too Long"}


def test_oversize_chunked_request_is_413(base: str, http: requests.Session) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b" " * 50_000

    r = http.post(
        base + COLL + "/aggregate", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json() == {"message": "Request Too Long"}


def test_oversize_signed_write_is_413_before_auth(base: str, http: requests.Session) -> None:
    r = http.post(base + COLL + "/insert_one", data=b"x" * (REQUEST_BYTES + 1))
    assert r.status_code == 413  # the gateway size check comes before the signature check


# -- writes -----------------------------------------------------------------------------------
def test_insert_one_with_and_without_id(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    r = signed(http, "POST", base + COLL + "/insert_one", {"_id": "ins-1", "name": "ins"})
    assert r.status_code == 200
    assert r.json() == {"acknowledged": True, "insertedId": "ins-1"}
    stored = db.metadata_index.data_assets.find_one({"_id": "ins-1"})
    assert stored["last_modified"].endswith("Z")
    r = signed(http, "POST", base + COLL + "/insert_one", {"name": "no-id"})
    new_id = r.json()["insertedId"]
    assert uuid.UUID(new_id).version == 4
    r = signed(http, "POST", base + COLL + "/insert_one", {"_id": "ins-1", "name": "dup"})
    assert r.status_code == 400
    assert r.json()["error"] == "MongoServerError" and "E11000" in r.json()["detail"]


def test_insert_one_malformed_and_empty_body(base: str, http: requests.Session) -> None:
    r = signed(http, "POST", base + COLL + "/insert_one", raw=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"] == "BadRequest" and "Malformed JSON" in r.json()["detail"]
    r = signed(http, "POST", base + COLL + "/insert_one", raw=b"[1, 2]")
    assert r.status_code == 400 and "'body' must be a JSON object" in r.json()["detail"]


def test_write_route_rejects_query_parameters(base: str, http: requests.Session) -> None:
    r = signed(http, "POST", base + COLL + "/insert_one?x=1", {"name": "q"})
    assert r.status_code == 400
    assert "Unknown query parameter 'x'" in r.json()["detail"]


def test_update_one_upsert_string_dotted_set_and_stamp(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    url = base + COLL + "/update_one"
    record = {"_id": "up-1", "name": "up", "data_description": {"project_name": "A", "x": 1}}
    body = {"filter": {"_id": "up-1"}, "update": {"$set": record}, "upsert": "True"}
    r = signed(http, "POST", url, body)
    assert r.json() == {
        "acknowledged": True,
        "modifiedCount": 0,
        "upsertedId": "up-1",
        "upsertedCount": 1,
        "matchedCount": 0,
    }
    first = db.metadata_index.data_assets.find_one({"_id": "up-1"})["last_modified"]
    time.sleep(0.01)
    body = {
        "filter": {"_id": "up-1"},
        "update": {"$set": {"data_description.project_name": "B"}},
        "upsert": "True",
    }
    r = signed(http, "POST", url, body)
    assert r.json() == {
        "acknowledged": True,
        "modifiedCount": 1,
        "upsertedId": None,
        "upsertedCount": 0,
        "matchedCount": 1,
    }
    doc = db.metadata_index.data_assets.find_one({"_id": "up-1"})
    assert doc["data_description"] == {"project_name": "B", "x": 1}
    assert doc["last_modified"] > first


def test_update_one_v2_stamps_underscore_last_modified(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    body = {"filter": {"_id": "v2-up"}, "update": {"$set": {"name": "n"}}, "upsert": "True"}
    r = signed(http, "POST", base + COLL2 + "/update_one", body)
    assert r.status_code == 200
    doc = db.metadata_index_v2.data_assets.find_one({"_id": "v2-up"})
    assert "_last_modified" in doc and "last_modified" not in doc
    assert db.metadata_index.data_assets.find_one({"_id": "v2-up"}) is None


@pytest.mark.parametrize(
    ("body", "error", "needle"),
    [
        ({"filter": {"_id": "a"}}, "BadRequest", "missing required field(s) ['update']"),
        (
            {"filter": {"_id": "a"}, "update": {"name": 1}},
            "MongoInvalidArgumentError",
            "atomic operators",
        ),
        (
            {"filter": {"_id": "a"}, "update": {"$set": {}}, "upsert": "yes"},
            "BadRequest",
            "'upsert'",
        ),
        (
            {"filter": {"_id": "a"}, "update": {"$set": {}}, "hint": 1},
            "BadRequest",
            "unknown field(s) ['hint']",
        ),
    ],
)
def test_update_one_bad_bodies(
    base: str, http: requests.Session, body: dict, error: str, needle: str
) -> None:
    r = signed(http, "POST", base + COLL + "/update_one", body)
    assert r.status_code == 400
    assert r.json()["error"] == error and needle in r.json()["detail"]


def test_bulk_write_upserts_then_matches(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    url = base + COLL + "/bulk_write"
    ops = [
        {
            "UpdateOne": {
                "filter": {"_id": f"bw-{i}"},
                "update": {"$set": {"_id": f"bw-{i}", "name": f"bw{i}"}},
                "upsert": "True",
            }
        }
        for i in range(2)
    ]
    r = signed(http, "POST", url, ops)
    assert r.status_code == 200
    assert r.json() == {
        "ok": 1,
        "writeErrors": [],
        "insertedIds": [],
        "nInserted": 0,
        "nUpserted": 2,
        "nMatched": 0,
        "nModified": 0,
        "nRemoved": 0,
        "upserted": [{"index": 0, "_id": "bw-0"}, {"index": 1, "_id": "bw-1"}],
    }
    r = signed(http, "POST", url, ops)
    assert r.json()["nMatched"] == 2 and r.json()["nModified"] == 2
    assert db.metadata_index.data_assets.find_one({"_id": "bw-0"})["last_modified"]


def test_bulk_write_mixed_node_operations(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    url = base + "/v1/analysis/bulk_mixed/bulk_write"
    ops = [
        {"insertOne": {"document": {"_id": 1, "v": 1}}},
        {"InsertOne": {"document": {"_id": 2, "v": 2}}},
        {"replaceOne": {"filter": {"_id": 2}, "replacement": {"v": 20}}},
        {"updateMany": {"filter": {}, "update": {"$inc": {"v": 1}}}},
        {"deleteOne": {"filter": {"_id": 1}}},
    ]
    r = signed(http, "POST", url, ops)
    body = r.json()
    assert r.status_code == 200
    assert body["insertedIds"] == [{"index": 0, "_id": 1}, {"index": 1, "_id": 2}]
    assert (body["nInserted"], body["nMatched"], body["nRemoved"]) == (2, 3, 1)
    assert list(db.analysis.bulk_mixed.find()) == [{"_id": 2, "v": 21}]  # analysis: no stamp


def test_bulk_write_error_reports_index_and_stops(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    url = base + "/v1/analysis/bulk_err/bulk_write"
    ops = [
        {"insertOne": {"document": {"_id": "a"}}},
        {"insertOne": {"document": {"_id": "a"}}},
        {"insertOne": {"document": {"_id": "c"}}},
    ]
    r = signed(http, "POST", url, ops)
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "MongoBulkWriteError"
    assert [e["index"] for e in body["writeErrors"]] == [1]
    assert body["writeErrors"][0]["code"] == 11000
    assert body["nInserted"] == 1 and body["insertedIds"] == [{"index": 0, "_id": "a"}]
    assert db.analysis.bulk_err.count_documents({}) == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"UpdateOne": {}}, "JSON array"),
        ([], "Batch cannot be empty"),
        ([{"Upsert": {"filter": {}}}], "unknown operation 'Upsert'"),
        ([{"UpdateOne": {"filter": {"_id": 1}}}], "missing required field(s) ['update']"),
    ],
)
def test_bulk_write_bad_bodies(base: str, http: requests.Session, body, needle: str) -> None:
    r = signed(http, "POST", base + COLL + "/bulk_write", body)
    assert r.status_code == 400
    assert needle in r.json()["detail"]


def test_delete_one_and_many(base: str, http: requests.Session, db: pymongo.MongoClient) -> None:
    db.analysis.deletes.insert_many([{"_id": i} for i in range(5)])
    url = base + "/v1/analysis/deletes"
    r = signed(http, "DELETE", url + "/delete_one", {"filter": {"_id": 0}})
    assert r.json() == {"acknowledged": True, "deletedCount": 1}
    r = signed(http, "DELETE", url + "/delete_one", {"filter": {"_id": 0}})
    assert r.status_code == 200 and r.json() == {"acknowledged": True, "deletedCount": 0}
    r = signed(http, "DELETE", url + "/delete_many", {"filter": {"_id": {"$in": [1, 2, 9]}}})
    assert r.json() == {"acknowledged": True, "deletedCount": 2}
    assert sorted(d["_id"] for d in db.analysis.deletes.find()) == [3, 4]
    r = signed(http, "DELETE", url + "/delete_many", {"ids": [3]})
    assert r.status_code == 400 and "['filter']" in r.json()["detail"]


def test_analysis_and_schemas_round_trip(base: str, http: requests.Session, seeded) -> None:
    r = signed(
        http, "POST", base + "/v1/analysis/results/insert_one", {"_id": "an-1", "score": 0.5}
    )
    assert r.status_code == 200
    r = find(http, base, "/v1/analysis/results", limit=0, skip=0, filter={"_id": "an-1"})
    assert r.json() == [{"_id": "an-1", "score": 0.5}]
    r = find(http, base, "/v1/schemas/ecephys", limit=0, skip=0, sort={"_id": 1})
    assert [d["_id"] for d in r.json()] == ["1.1.0", "1.2.1"]


# -- admin routes -----------------------------------------------------------------------------
def _put_core(s3, prefix: str, files: dict[str, Any]) -> None:
    for name, content in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}.json", Body=orjson.dumps(content))


@pytest.fixture(scope="module")
def s3(moto_url: str):
    client = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return client


def test_register_and_deregister_asset(
    base: str, http: requests.Session, db: pymongo.MongoClient, s3
) -> None:
    name = "ecephys_700001_2025-03-01_10-11-12"
    _put_core(
        s3,
        name,
        {
            "data_description": {"name": name, "data_level": "raw", "project_name": "P"},
            "subject": {"subject_id": "700001"},
            "procedures": {"subject_id": "700001", "subject_procedures": []},
        },
    )
    s3.put_object(Bucket=BUCKET, Key=f"{name}/ecephys/data.bin", Body=b"\0")
    location = f"s3://{BUCKET}/{name}"
    r = signed(http, "POST", base + "/v1/assets/register", {"s3_location": location})
    assert r.status_code == 201
    assert r.json() == {
        "message": f"Processed {location} for CO and DocDB registration.",
        "registered_co": True,
        "registered_docdb": True,
    }
    rec = db.metadata_index.data_assets.find_one({"location": location})
    assert rec["name"] == name and rec["subject"] == {"subject_id": "700001"}
    assert rec["processing"] is None and rec["metadata_status"] == "Valid"
    assert len(rec["external_links"]["Code Ocean"]) == 1
    assert rec["created"] == rec["last_modified"]
    r = signed(http, "POST", base + "/v1/assets/register", {"s3_location": location})
    assert r.status_code == 409 and r.json()["error"] == "Conflict"

    r = signed(http, "DELETE", base + "/v1/assets/deregister", {"s3_location": location})
    assert r.status_code == 200
    assert r.json() == {
        "message": f"Processed {location} for CO and DocDB deregistration.",
        "deregistered_co": True,
        "deregistered_docdb": True,
    }
    assert db.metadata_index.data_assets.find_one({"location": location}) is None
    r = signed(http, "DELETE", base + "/v1/assets/deregister", {"s3_location": location})
    assert r.json()["deregistered_docdb"] is False


def test_register_v2_uses_other_identifiers(
    base: str, http: requests.Session, db: pymongo.MongoClient, s3
) -> None:
    name = "700002_2025-03-01T101112"
    _put_core(s3, name, {"data_description": {"name": name}, "subject": {"subject_id": "1"}})
    location = f"s3://{BUCKET}/{name}"
    r = signed(http, "POST", base + "/v2/assets/register", {"s3_location": location})
    assert r.status_code == 201
    rec = db.metadata_index_v2.data_assets.find_one({"location": location})
    assert "Code Ocean" in rec["other_identifiers"] and "_last_modified" in rec
    assert "external_links" not in rec and rec["model"] is None


def test_register_co_result(base: str, http: requests.Session, db: pymongo.MongoClient) -> None:
    co_id = str(uuid.uuid4())
    location = f"s3://codeocean-s3datasetsbucket-1u41qdg42ur9/{co_id}"
    body = {
        "s3_location": location,
        "name": "ecephys_1_sorted",
        "co_asset_id": co_id,
        "co_computation_id": str(uuid.uuid4()),
    }
    r = signed(http, "POST", base + "/v1/assets/register", body)
    assert r.status_code == 201
    assert r.json() == {"message": f"Inserted new DocDB record for result asset {location}."}
    rec = db.metadata_index.data_assets.find_one({"location": location})
    assert rec["external_links"] == {"Code Ocean": [co_id]} and rec["name"] == "ecephys_1_sorted"


def test_concurrent_registrations_of_one_location_land_once(
    base: str, http: requests.Session, db: pymongo.MongoClient, s3
) -> None:
    """Like a database unique index: of 12 simultaneous registrations exactly one lands.

    Each call reads the S3 core files between its existence check and its insert, so most of
    them pass the check together; only the unique index can stop the others.
    """
    name = "ecephys_700077_2025-03-07_10-11-12"
    _put_core(s3, name, {"data_description": {"name": name, "data_level": "raw"}})
    location = f"s3://{BUCKET}/{name}"
    start = threading.Barrier(12)

    def register() -> int:
        with requests.Session() as own:
            start.wait()
            return signed(own, "POST", base + "/v1/assets/register", {"s3_location": location})

    results: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: results.append(register())) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 11
    conflicts = {r.json()["detail"] for r in results if r.status_code == 409}
    assert conflicts == {f"{location} is already registered."}
    assert db.metadata_index.data_assets.count_documents({"location": location}) == 1
    indexes = db.metadata_index.data_assets.index_information().values()
    assert any(spec["key"] == [("location", 1)] and spec.get("unique") for spec in indexes)

    duplicate = {"_id": str(uuid.uuid4()), "name": "copy", "location": location}
    r = signed(http, "POST", base + COLL + "/insert_one", duplicate)
    assert r.status_code == 400
    assert r.json()["code"] == 11000 and "duplicate key" in r.json()["detail"]
    assert db.metadata_index.data_assets.count_documents({"location": location}) == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "'s3_location'"),
        ({"s3_location": "bucket/prefix"}, "s3://bucket/prefix"),
        ({"s3_location": f"s3://{BUCKET}/nothing-here"}, "No objects found"),
        ({"s3_location": "s3://no-such-bucket-x/p"}, "NoSuchBucket"),
        ({"s3_location": f"s3://{BUCKET}/x", "extra": 1}, "Unknown field(s) ['extra']"),
        ({"s3_location": f"s3://{BUCKET}/x", "name": "n"}, "needs field(s)"),
    ],
)
def test_register_bad_bodies(base: str, http: requests.Session, s3, body, needle: str) -> None:
    r = signed(http, "POST", base + "/v1/assets/register", body)
    assert r.status_code == 400
    assert r.json()["error"] == "BadRequest" and needle in r.json()["detail"]


def _evaluation(name: str = "probe drift") -> dict[str, Any]:
    return {
        "modality": {"name": "Extracellular electrophysiology", "abbreviation": "ecephys"},
        "stage": "Raw data",
        "name": name,
        "metrics": [
            {
                "name": "drift",
                "value": 1.5,
                "status_history": [
                    {"evaluator": "auto", "status": "Pass", "timestamp": "2025-01-01T00:00:00Z"}
                ],
            }
        ],
        "created": "2025-01-01T00:00:00Z",
    }


def test_add_qc_evaluation_v1_appends(
    base: str, http: requests.Session, db: pymongo.MongoClient, seeded
) -> None:
    rid = seeded[1]["_id"]
    url = base + "/v1/add_qc_evaluation"
    r = signed(http, "POST", url, {"qc_evaluation": [_evaluation("a")], "data_asset_id": rid})
    assert r.status_code == 200
    assert r.json() == {"acknowledged": True, "matchedCount": 1}
    r = signed(http, "POST", url, {"qc_evaluation": _evaluation("b"), "data_asset_id": rid})
    assert r.status_code == 200
    qc = db.metadata_index.data_assets.find_one({"_id": rid})["quality_control"]
    assert [e["name"] for e in qc["evaluations"]] == ["a", "b"]


def test_add_qc_evaluation_v2_appends_metrics(
    base: str, http: requests.Session, db: pymongo.MongoClient, seeded
) -> None:
    metric = {
        **_evaluation()["metrics"][0],
        "modality": {"abbreviation": "ecephys"},
        "stage": "Processing",
        "tags": {"probe": "probeA"},
    }
    r = signed(
        http,
        "POST",
        base + "/v2/add_qc_evaluation",
        {"qc_evaluation": [metric, metric], "data_asset_id": "v2-1"},
    )
    assert r.status_code == 200 and r.json()["matchedCount"] == 1
    doc = db.metadata_index_v2.data_assets.find_one({"_id": "v2-1"})
    assert len(doc["quality_control"]["metrics"]) == 2
    assert doc["quality_control"]["metrics"][0]["tags"] == {"probe": "probeA"}
    assert "_last_modified" in doc


def test_add_qc_evaluation_errors(base: str, http: requests.Session, seeded) -> None:
    url = base + "/v1/add_qc_evaluation"
    rid = seeded[1]["_id"]
    incomplete = {k: v for k, v in _evaluation().items() if k != "stage"}
    r = signed(http, "POST", url, {"qc_evaluation": [incomplete], "data_asset_id": rid})
    assert r.status_code == 400
    assert r.json() == {
        "detail": "Invalid QC evaluation submission. 'qc_evaluation' field missing required keys.",
        "error": "BadRequest",
    }
    r = signed(http, "POST", url, {"data_asset_id": rid})
    assert r.status_code == 400 and r.json()["error"] == "BadRequest"
    bad_status = _evaluation()
    bad_status["metrics"][0]["status_history"][0]["status"] = "OK"
    r = signed(http, "POST", url, {"qc_evaluation": [bad_status], "data_asset_id": rid})
    assert r.status_code == 400 and "'OK'" in r.json()["detail"]
    r = signed(http, "POST", url, {"qc_evaluation": [_evaluation()], "data_asset_id": "nope"})
    assert r.status_code == 404
    assert r.json()["error"] == "NotFound" and "nope" in r.json()["detail"]
    r = signed(http, "POST", url, {"qc_evaluation": [_evaluation()]})
    assert r.status_code == 400 and "'data_asset_id'" in r.json()["detail"]


def test_data_summary_is_deterministic(base: str, http: requests.Session, seeded) -> None:
    rid = seeded[2]["_id"]
    first = signed(http, "GET", base + f"/v1/data_summary/{rid}")
    second = signed(http, "GET", base + f"/v1/data_summary/{rid}")
    assert first.status_code == 200 and first.json() == second.json()
    body = first.json()
    assert seeded[2]["name"] in body["message"]
    assert body["parameters"]["docdb_id"] == rid
    assert body["parameters"]["bedrock_chat_model_kwargs"] == {"temperature": 0}
    r = signed(http, "GET", base + "/v1/data_summary/does-not-exist")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"


# -- faults through the real server -------------------------------------------------------------
def test_faults_runtime_config_and_statuses(base: str, http: requests.Session, seeded) -> None:
    cfg = {"rate": 1.0, "statuses": [429], "seed": 3, "retry_after": 2}
    r = http.put(base + "/__sandbox__/faults", json=cfg)
    assert r.status_code == 200 and r.json()["rate"] == 1.0
    assert http.get(base + "/__sandbox__/faults").json()["statuses"] == [429]
    r = find(http, base, limit=1, skip=0)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2" and r.json() == {"message": "Too Many Requests"}
    # Admin routes are never faulted.
    assert http.get(base + "/__sandbox__/health").status_code == 200
    stats = http.get(base + "/__sandbox__/stats").json()
    assert stats["faults"] == {"429": 1}
    http.put(base + "/__sandbox__/faults", json={})
    assert find(http, base, limit=1, skip=0).status_code == 200


def test_faults_drop_closes_connection(base: str, seeded) -> None:
    requests.put(base + "/__sandbox__/faults", json={"drop_rate": 1.0, "seed": 1})
    with pytest.raises(requests.ConnectionError):
        requests.get(base + COLL + "/find", params={"limit": "1", "skip": "0"}, timeout=5)
    requests.put(base + "/__sandbox__/faults", json={})


def test_faults_bad_config_is_rejected(base: str, http: requests.Session) -> None:
    r = http.put(base + "/__sandbox__/faults", json={"rate": 2})
    assert r.status_code == 400 and "rate" in r.json()["detail"]
    assert http.get(base + "/__sandbox__/faults").json() == {}


# -- cursor continuation between pages --------------------------------------------------------
def test_keyset_paging_by_id_returns_everything_in_order(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    before = http.get(base + "/__sandbox__/health").json()["find"]
    coll = db.analysis.keyset
    coll.insert_many([{"_id": f"k{i:04d}", "n": i, "even": i % 2 == 0} for i in range(250)])
    got, last = [], None
    while True:
        flt: dict[str, Any] = {"even": True}
        if last is not None:
            flt["_id"] = {"$gt": last}
        r = find(
            http,
            base,
            "/v1/analysis/keyset",
            limit=50,
            skip=0,
            filter=flt,
            sort={"_id": 1},
            projection={"n": 1},
        )
        page = r.json()
        if not page:
            break
        got.extend(page)
        last = page[-1]["_id"]
    assert [d["n"] for d in got] == list(range(0, 250, 2))
    after = http.get(base + "/__sandbox__/health").json()["find"]
    # One query opened the cursor; every later page continued it.
    assert after["queries"] - before["queries"] == 1
    assert after["continued"] - before["continued"] == 3  # 50 + 25 + the empty page


def test_interleaved_skip_paging_stays_correct(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    db.analysis.interleave.insert_many([{"_id": i, "odd": i % 2} for i in range(100)])
    path = "/v1/analysis/interleave"
    a, b = [], []
    for skip in range(0, 60, 20):
        a += find(http, base, path, limit=20, skip=skip, filter={"odd": 1}, sort={"_id": 1}).json()
        b += find(http, base, path, limit=20, skip=skip, sort={"_id": -1}).json()
    assert [d["_id"] for d in a] == list(range(1, 100, 2))[:60]
    assert [d["_id"] for d in b] == list(range(99, 39, -1))


def test_write_between_pages_is_seen_by_next_page(
    base: str, http: requests.Session, db: pymongo.MongoClient
) -> None:
    db.analysis.shifting.insert_many([{"_id": f"s{i:02d}"} for i in range(1, 20)])
    path = "/v1/analysis/shifting"
    first = find(http, base, path, limit=5, skip=0, sort={"_id": 1}).json()
    assert [d["_id"] for d in first] == [f"s{i:02d}" for i in range(1, 6)]
    r = signed(http, "POST", base + path + "/insert_one", {"_id": "s00"})
    assert r.status_code == 200
    second = find(http, base, path, limit=5, skip=5, sort={"_id": 1}).json()
    # A fresh query after the insert: everything shifted by one.
    assert [d["_id"] for d in second] == [f"s{i:02d}" for i in range(5, 10)]
