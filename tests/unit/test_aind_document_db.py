"""DocDB REST clients: exact request shapes (URL, method, query, body, headers) with `responses`.

A small in-memory fake of the gateway (``FakeDocDB``) answers ``find``/``count_documents``/
``aggregate`` with a byte cap per page, so pagination is exercised against short pages.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import random
import re
import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import numpy as np
import pytest
import requests
import responses
from botocore.exceptions import NoCredentialsError

from prefect_neurodata.clients import http
from prefect_neurodata.clients.aind import _wire
from prefect_neurodata.clients.aind.document_db import (
    AnalysisDbClient,
    BulkWriteFailed,
    Client,
    MetadataDbClient,
    SchemaDbClient,
)
from prefect_neurodata.clients.aind.utils import (
    build_docdb_location_to_id_map,
    does_metadata_record_exist_in_docdb,
    fetch_records_by_filter_list,
    get_record_from_docdb,
    paginate_docdb,
)
from prefect_neurodata.sandbox.sigv4 import SigV4Verifier

HOST = "api.example.org"
BASE = f"https://{HOST}/v1/metadata_index/data_assets"
AKID, SECRET, REGION = "AKIDEXAMPLE", "secret-key-example", "us-west-2"
AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/\d{8}/us-west-2/execute-api/aws4_request, "
    r"SignedHeaders=content-type;host;x-amz-date, Signature=[0-9a-f]{64}$"
)


def boto_session(token: str | None = None) -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        aws_session_token=token,
        region_name=REGION,
    )


def make_client(cls: type = MetadataDbClient, **kwargs: Any) -> Any:
    kwargs.setdefault("retry", http.RetryPolicy(max_retries=3, backoff_factor=0.0))
    kwargs.setdefault("boto", boto_session())
    kwargs.setdefault("host", HOST)
    return cls(**kwargs)


def query(call: Any) -> dict[str, str]:
    """The query string of a recorded call as a flat dict (values JSON-decoded when JSON)."""
    pairs = parse_qs(urlsplit(call.request.url).query, keep_blank_values=True)
    return {key: values[0] for key, values in pairs.items()}


def query_keys(call: Any) -> list[str]:
    return [part.split("=")[0] for part in urlsplit(call.request.url).query.split("&") if part]


def verify_signature(request: requests.PreparedRequest) -> None:
    """Check the signature as API Gateway would (the sandbox's verifier uses botocore)."""
    parts = urlsplit(request.url)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = parts.netloc
    body = request.body or b""
    SigV4Verifier(AKID, SECRET, REGION).verify(
        request.method,
        parts.scheme,
        parts.path,
        parts.query.encode(),
        headers,
        body if isinstance(body, bytes) else body.encode(),
    )


# -- a small fake of the gateway's read side -------------------------------------------------


def _get(doc: dict, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _matches(doc: dict, flt: dict) -> bool:
    for key, cond in flt.items():
        if key == "$and":
            if not all(_matches(doc, sub) for sub in cond):
                return False
            continue
        value = _get(doc, key)
        if isinstance(cond, dict) and any(k.startswith("$") for k in cond):
            for op, arg in cond.items():
                ops = {
                    "$gt": lambda v, a: v is not None and v > a,
                    "$gte": lambda v, a: v is not None and v >= a,
                    "$lt": lambda v, a: v is not None and v < a,
                    "$lte": lambda v, a: v is not None and v <= a,
                    "$in": lambda v, a: v in a,
                }
                try:
                    ok = ops[op](value, arg)
                except TypeError:  # Mongo's type bracketing: no match across types
                    ok = False
                if not ok:
                    return False
        elif value != cond:
            return False
    return True


def _sort_key(value: Any) -> tuple[bool, Any]:
    return isinstance(value, str), value  # numbers sort before strings, as in BSON


def _project(doc: dict, projection: dict | None) -> dict:
    if not projection:
        return doc
    include = {k for k, v in projection.items() if v and k != "_id"}
    if include or set(projection) == {"_id"} and projection["_id"]:
        out = {k: doc[k] for k in include if k in doc}
        if projection.get("_id", 1):
            out = {"_id": doc["_id"], **out}
        return out
    return {k: v for k, v in doc.items() if projection.get(k, 1)}


def query_of(request: requests.PreparedRequest) -> dict[str, str]:
    """The query parameters of a request (first value each)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}


def record_finds() -> list[Any]:
    """The ``find`` calls made so far that read records (not only ids)."""
    return [
        c
        for c in responses.calls
        if "/find" in c.request.url and query(c).get("projection") != '{"_id":1}'
    ]


class FakeDocDB:
    """Answers find / count_documents / aggregate over ``docs`` with a page byte cap."""

    def __init__(self, docs: list[dict], page_bytes: int = 10**9, agg_bytes: int = 10**9):
        self.docs = docs
        self.page_bytes = page_bytes
        self.agg_bytes = agg_bytes
        self.find_params: list[dict[str, Any]] = []
        # Id reads (projection {"_id": 1}): a full read sends one along with its first page,
        # in any order with it, so they are kept apart from the record pages.
        self.id_reads: list[dict[str, Any]] = []

    def install(self, base: str = BASE) -> None:
        responses.add_callback("GET", f"{base}/find", callback=self.find)
        responses.add_callback("GET", f"{base}/count_documents", callback=self.count)
        responses.add_callback("POST", f"{base}/aggregate", callback=self.aggregate)

    def find(self, request: requests.PreparedRequest) -> tuple[int, dict, str]:
        params = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        flt = json.loads(params.get("filter", "{}"))
        projection = json.loads(params["projection"]) if "projection" in params else None
        sort = json.loads(params["sort"]) if "sort" in params else None
        limit, skip = int(params["limit"]), int(params["skip"])
        read = {"filter": flt, "sort": sort, "limit": limit, "skip": skip}
        if projection == {"_id": 1}:
            self.id_reads.append(read)
        else:
            self.find_params.append(read)
        docs = [d for d in self.docs if _matches(d, flt)]
        if sort:
            ((key, direction),) = sort.items()
            docs.sort(key=lambda d: _sort_key(_get(d, key)), reverse=direction < 0)
        docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        page, size = [], 2
        for doc in docs:
            part = json.dumps(_project(doc, projection))
            if page and size + len(part) + 1 > self.page_bytes:
                break
            page.append(part)
            size += len(part) + 1
        return 200, {}, "[" + ",".join(page) + "]"

    def count(self, request: requests.PreparedRequest) -> tuple[int, dict, str]:
        params = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        flt = json.loads(params.get("filter", "{}"))
        body = {
            "total_record_count": len(self.docs),
            "filtered_record_count": sum(_matches(d, flt) for d in self.docs),
        }
        return 200, {}, json.dumps(body)

    def aggregate(self, request: requests.PreparedRequest) -> tuple[int, dict, str]:
        pipeline = json.loads(request.body)
        docs = [d for d in self.docs if _matches(d, pipeline[0]["$match"])]
        if len(pipeline) > 1:
            docs = [_project(d, pipeline[1]["$project"]) for d in docs]
        body = json.dumps(docs)
        if len(body) > self.agg_bytes:
            return 413, {}, json.dumps({"message": "Response payload size exceeded"})
        return 200, {}, body


def make_docs(n: int, pad: int = 200) -> list[dict]:
    docs = [
        {
            "_id": str(uuid.UUID(int=(i * 7919) % (2**32) + 1)),
            "name": f"asset_{i:05d}",
            "location": f"s3://bucket/asset_{i:05d}",
            "blob": "x" * (pad + (i * 37) % pad),
        }
        for i in range(n)
    ]
    return docs


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.org", "https://api.example.org/v1/metadata_index/data_assets"),
        ("/api.example.org/", "https://api.example.org/v1/metadata_index/data_assets"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/metadata_index/data_assets"),
        ("https://example.com/stage/", "https://example.com/stage/v1/metadata_index/data_assets"),
        ("HTTP://h:1", "http://h:1/v1/metadata_index/data_assets"),
    ],
)
def test_host_scheme_handling(host: str, expected: str):
    assert MetadataDbClient(host=host)._base_url == expected


@pytest.mark.parametrize("host", ["", "ftp://x", "https://", "   "])
def test_bad_host_rejected(host: str):
    with pytest.raises(ValueError, match="host"):
        MetadataDbClient(host=host)


def test_defaults_of_the_seed_classes():
    m = MetadataDbClient(host=HOST)
    assert (m.database, m.collection, m.version) == ("metadata_index", "data_assets", "v1")
    s = SchemaDbClient(host=HOST, collection="core")
    assert (s.database, s.collection) == ("schemas", "core")
    a = AnalysisDbClient(host=HOST, collection="results", version="v2")
    assert a._base_url == f"https://{HOST}/v2/analysis/results"


def test_context_manager_closes_the_given_session():
    session = requests.Session()
    closed: list[bool] = []
    session.close = lambda: closed.append(True)  # type: ignore[method-assign]
    with MetadataDbClient(host=HOST, session=session) as client:
        assert client.session is session
    assert closed == [True]


def test_lazy_boto_session_is_created():
    client = MetadataDbClient(host=HOST)
    assert isinstance(client.boto, boto3.session.Session)


# -- reads ------------------------------------------------------------------------------------


@responses.activate
def test_count_records_query():
    responses.get(
        f"{BASE}/count_documents", json={"total_record_count": 5, "filtered_record_count": 2}
    )
    client = make_client()
    assert client._count_records({"subject.subject_id": "731015"}) == {
        "total_record_count": 5,
        "filtered_record_count": 2,
    }
    assert client._count_records()["total_record_count"] == 5
    first, second = responses.calls
    assert query(first) == {"filter": '{"subject.subject_id":"731015"}'}
    assert urlsplit(second.request.url).query == ""
    assert "Authorization" not in first.request.headers


@responses.activate
def test_find_records_query_params_in_order():
    responses.get(f"{BASE}/find", json=[{"_id": "a"}])
    client = make_client()
    when = dt.datetime(2025, 3, 17, 1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    rid = uuid.UUID("488bbe42-832b-4c37-8572-25eb87cc50e2")
    page = client._find_records(
        {"_id": rid, "last_modified": {"$gte": when}, "n": np.int64(3)},
        {"name": 1},
        {"created": -1},
        limit=5,
        skip=10,
    )
    assert page == [{"_id": "a"}]
    (call,) = responses.calls
    assert call.request.method == "GET"
    assert urlsplit(call.request.url).path == "/v1/metadata_index/data_assets/find"
    assert query_keys(call) == ["limit", "skip", "filter", "projection", "sort"]
    assert query(call) == {
        "limit": "5",
        "skip": "10",
        "filter": '{"_id":"488bbe42-832b-4c37-8572-25eb87cc50e2",'
        '"last_modified":{"$gte":"2025-03-17T00:02:03Z"},"n":3}',
        "projection": '{"name":1}',
        "sort": '{"created":-1}',
    }
    assert "Authorization" not in call.request.headers


@responses.activate
def test_unserialisable_filter_names_the_field_and_sends_nothing():
    client = make_client()
    with pytest.raises(TypeError, match=r"filter_query\.subject\.weight"):
        client.retrieve_docdb_records(filter_query={"subject": {"weight": object()}})
    assert len(responses.calls) == 0


@responses.activate
def test_retrieve_with_sort_uses_skip_limit_and_short_pages():
    pages = [[{"_id": i} for i in range(s, s + n)] for s, n in ((0, 2), (2, 4), (6, 1), (7, 3))]
    for page in [*pages, []]:
        responses.get(f"{BASE}/find", json=page)
    client = make_client()
    records = client.retrieve_docdb_records(filter_query={"a": 1}, sort={"created": -1})
    assert [r["_id"] for r in records] == list(range(10))
    skips = [int(query(c)["skip"]) for c in responses.calls]
    assert skips == [0, 2, 6, 7, 10]
    assert all(
        query(c)["limit"] == "0" and query(c)["sort"] == '{"created":-1}' for c in responses.calls
    )


@responses.activate
def test_retrieve_with_sort_and_limit_stops_without_extra_call():
    responses.get(f"{BASE}/find", json=[{"_id": 0}, {"_id": 1}])
    responses.get(f"{BASE}/find", json=[{"_id": 2}, {"_id": 3}, {"_id": 4}])
    client = make_client()
    records = client.retrieve_docdb_records(sort={"name": 1}, limit=5)
    assert [r["_id"] for r in records] == [0, 1, 2, 3, 4]
    assert [query(c)["limit"] for c in responses.calls] == ["5", "3"]
    assert [query(c)["skip"] for c in responses.calls] == ["0", "2"]


@responses.activate
def test_retrieve_without_sort_pages_by_keyset_with_short_pages():
    docs = make_docs(157)
    by_id = sorted(docs, key=lambda d: d["_id"])
    fake = FakeDocDB(docs, page_bytes=6_000)
    fake.install()
    records = make_client().retrieve_docdb_records()
    assert records == by_id
    assert len({r["_id"] for r in records}) == 157
    params = fake.find_params
    # Key-set pages (limit 0: the byte cap sizes them, so they are short), then the empty
    # key-set page, then one skip page (empty: every record was served).
    keyset, (empty, probe) = params[:-2], params[-2:]
    assert len(keyset) > 5
    assert keyset[0]["filter"] == {}
    assert all(p["sort"] == {"_id": 1} and p["limit"] == 0 and p["skip"] == 0 for p in params[:-1])
    assert empty["filter"] == {"_id": {"$gt": by_id[-1]["_id"]}}
    assert probe == {"filter": {}, "sort": {"_id": 1}, "limit": 0, "skip": 157}
    # Each key-set page starts after the last _id of the previous page's records.
    calls = record_finds()  # (an id read went along with the first page)
    assert fake.id_reads[0] == {"filter": {}, "sort": {"_id": 1}, "limit": 0, "skip": 0}
    for call, request in zip(calls[:-2], params[1:-1], strict=True):
        assert request["filter"] == {"_id": {"$gt": call.response.json()[-1]["_id"]}}
    assert query_keys(calls[0]) == ["limit", "skip", "filter", "sort"]


@responses.activate
def test_retrieve_without_sort_with_filter_and_projection_strips_id():
    docs = make_docs(60)
    fake = FakeDocDB(docs, page_bytes=600)
    fake.install()
    flt = {"name": {"$lt": "asset_00040"}}
    records = make_client().retrieve_docdb_records(
        filter_query=flt, projection={"_id": 0, "name": 1}
    )
    wanted = sorted((d for d in docs if d["name"] < "asset_00040"), key=lambda d: d["_id"])
    assert records == [{"name": d["name"]} for d in wanted]
    # _id kept on the wire for paging, stripped from the result.
    finds = record_finds()  # (an id read of the filter went along)
    assert {query(c)["projection"] for c in finds} == {'{"name":1}'}
    assert [r["filter"] for r in fake.id_reads] == [flt]
    params = fake.find_params
    assert params[0]["filter"] == flt
    assert len(params) > 3  # short pages at this cap
    for request in params[1:-1]:
        assert request["filter"] == {**flt, "_id": {"$gt": request["filter"]["_id"]["$gt"]}}
        assert list(request["filter"]) == ["name", "_id"]  # the caller's filter, then _id
    assert params[-2]["filter"]["_id"]["$gt"] == wanted[-1]["_id"]
    assert params[-1] == {"filter": flt, "sort": {"_id": 1}, "limit": 0, "skip": 40}


@responses.activate
def test_retrieve_without_sort_filter_on_id_is_anded():
    docs = make_docs(30)
    fake = FakeDocDB(docs, page_bytes=1_500)
    fake.install()
    by_id = sorted(d["_id"] for d in docs)
    flt = {"_id": {"$gt": by_id[9]}}
    records = make_client().retrieve_docdb_records(filter_query=flt)
    assert [r["_id"] for r in records] == by_id[10:]
    second = fake.find_params[1]["filter"]
    assert second == {"$and": [flt, {"_id": {"$gt": second["$and"][1]["_id"]["$gt"]}}]}


@responses.activate
def test_full_read_of_one_page_takes_one_round_trip():
    docs = make_docs(30)
    fake = FakeDocDB(docs)  # no cap: one page holds everything
    fake.install()
    flt = {"name": {"$lt": "asset_00020"}}
    records = make_client().retrieve_docdb_records(filter_query=flt, projection={"name": 1})
    assert [r["name"] for r in records] == sorted(d["name"] for d in docs)[:20]
    assert_one_round_trip(fake, flt)


def assert_one_round_trip(fake: FakeDocDB, flt: dict) -> None:
    """The page and the ids of the same filter, at once, and nothing else (issue 15: the ids,
    not a count, so that a page of any size is known to be the whole result)."""
    first = {"filter": flt, "sort": {"_id": 1}, "limit": 0, "skip": 0}
    assert fake.find_params == [first] and fake.id_reads == [first]
    assert len(responses.calls) == 2


@responses.activate
def test_full_read_of_one_large_page_takes_one_round_trip():
    # Issue 15: a page at or above parallel_page_bytes (it might have been cut by the cap) is
    # still the whole result when the uncut id read lists exactly its records: no second
    # round trip to confirm the end.
    docs = make_docs(30)
    fake = FakeDocDB(docs)  # no cap
    fake.install()
    client = make_client(max_workers=4)
    client.parallel_page_bytes = 5_000  # below the page (~10 KB), above its ids (~1.5 KB)
    flt = {"name": {"$gte": "asset_00002"}}
    records = client.retrieve_docdb_records(filter_query=flt)
    assert records == sorted(
        (d for d in docs if d["name"] >= "asset_00002"), key=lambda d: d["_id"]
    )
    assert len(record_finds()[0].response.content) >= client.parallel_page_bytes
    assert_one_round_trip(fake, flt)


@responses.activate
def test_full_read_whose_ids_changed_meanwhile_reads_on():
    # A record deleted and another inserted between the id read and the page: the id list no
    # longer matches the page, so nothing is trusted; every record present throughout still
    # comes exactly once, in _id order.
    docs = make_docs(40)
    fake = FakeDocDB(list(docs), page_bytes=3_000)
    gone, late = sorted(d["_id"] for d in docs)[5], "ffffffff-late"

    def find(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        if query_of(request).get("projection") == '{"_id":1}' and not fake.id_reads:
            fake.docs[:] = [d for d in fake.docs if d["_id"] != gone]
            fake.docs.append({"_id": late, "name": "inserted meanwhile"})
        return fake.find(request)

    responses.add_callback("GET", f"{BASE}/find", callback=find)
    client = make_client(max_workers=4)
    client.parallel_page_bytes = 2_000
    ids = [r["_id"] for r in client.retrieve_docdb_records()]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert set(ids) >= {d["_id"] for d in docs} - {gone}


@responses.activate
def test_full_read_whose_id_read_fails_confirms_the_end_with_pages():
    docs = make_docs(12)
    fake = FakeDocDB(docs)

    def find(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        if query_of(request).get("projection") == '{"_id":1}':
            return 400, {}, json.dumps({"error": "BadRequest"})
        return fake.find(request)

    responses.add_callback("GET", f"{BASE}/find", callback=find)
    records = make_client().retrieve_docdb_records()
    assert records == sorted(docs, key=lambda d: d["_id"])
    assert [p["skip"] for p in fake.find_params] == [0, 0, 12]  # page, empty page, skip page


@responses.activate
def test_full_read_overlaps_id_ranges_after_a_large_first_page():
    docs = make_docs(300)
    by_id = sorted(docs, key=lambda d: d["_id"])
    fake = FakeDocDB(docs, page_bytes=6_000)
    fake.install()
    client = make_client(max_workers=4)
    client.parallel_page_bytes = 5_000  # the first page (~6 KB) counts as cut by the cap
    records = client.retrieve_docdb_records()
    assert records == by_id  # every record once, in _id order
    finds = [c for c in responses.calls if "/find" in c.request.url]
    calls = [(query(c), c.response.json()) for c in finds]
    first = next((q, page) for q, page in calls if "projection" not in q)
    per_page = len(first[1])
    assert first[0] == {"limit": "0", "skip": "0", "filter": "{}", "sort": '{"_id":1}'}
    id_reads = [(json.loads(q["filter"]), page) for q, page in calls if "projection" in q]
    assert all(q["projection"] == '{"_id":1}' for q, _ in calls if "projection" in q)
    # The ids of the whole read came along with the first page (cut by the cap at more ids
    # than the page holds: the ids after the page were known at once); then the ids after
    # the last one listed, and so on.
    assert id_reads[0][0] == {}
    assert [r["_id"] for r in id_reads[0][1][:per_page]] == [r["_id"] for r in first[1]]
    assert id_reads[1][0] == {"_id": {"$gt": id_reads[0][1][-1]["_id"]}}
    assert len(id_reads) > 2  # the cap cut the id pages too: read on after each
    filters = [json.loads(q["filter"]) for q, _ in calls[1:] if "projection" not in q]
    bounds = [f["_id"] for f in filters if "$gte" in f.get("_id", {})]
    assert len(bounds) > 4  # (requests in flight at once arrive in any order)
    # Consecutive ranges tile the ids after the first page without gap or overlap.
    position = {d["_id"]: i for i, d in enumerate(by_id)}
    spans = sorted((position[b["$gte"]], position[b["$lte"]]) for b in bounds)
    assert spans[0][0] == per_page and spans[-1][1] == len(by_id) - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:], strict=False))
    # The last id page was not cut: the ranges covered every id, no page confirms the end.
    assert all(p["skip"] == 0 for p in fake.find_params)

    # The same read as a stream, with a filter and a projection dropping _id.
    fake.find_params.clear()
    flt = {"name": {"$gte": "asset_00050"}}
    pages = list(client.iter_docdb_pages(flt, {"_id": 0, "name": 1}))
    wanted = [{"name": d["name"]} for d in by_id if d["name"] >= "asset_00050"]
    assert [r for page in pages for r in page] == wanted
    assert all(list(p["filter"]) == ["name", "_id"] for p in fake.find_params[1:-1])


@responses.activate
def test_full_read_range_whose_last_record_vanished_reads_to_an_empty_page():
    docs = make_docs(60, pad=1_000)  # ~5 records a page, every id in one id page
    by_id = sorted(docs, key=lambda d: d["_id"])
    fake = FakeDocDB(list(docs), page_bytes=6_000)
    gone = by_id[-1]["_id"]

    def find(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        answer = fake.find(request)
        if len(fake.find_params) == 2:  # deleted once the ids were read
            fake.docs[:] = [d for d in fake.docs if d["_id"] != gone]
        return answer

    responses.add_callback("GET", f"{BASE}/find", callback=find)
    client = make_client(max_workers=3)
    client.parallel_page_bytes = 5_000
    records = client.retrieve_docdb_records()
    assert records == by_id[:-1]
    last_range = [p for p in fake.find_params if p["filter"].get("_id", {}).get("$lte") == gone]
    assert len(last_range) >= 2 and "$gt" in last_range[-1]["filter"]["_id"]


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda c: c.retrieve_docdb_records(), id="full read"),
        pytest.param(lambda c: c.retrieve_docdb_records(sort={"name": 1}), id="sorted"),
        pytest.param(lambda c: c.retrieve_docdb_records(limit=7), id="limit"),
        pytest.param(
            lambda c: c.fetch_records_by_filter_list(
                "name", [f"asset_{i:05d}" for i in range(40)], chunk_size=10
            ),
            id="filter list",
        ),
    ],
)
@responses.activate
def test_reads_decode_with_the_cyclic_collector_paused(read: Any) -> None:
    # Issue 15 item 1: collections during a bulk read re-examined every record decoded so
    # far (4-5 of 6-7 CPU seconds for 15,000 records) and can free nothing (JSON is acyclic).
    fake = FakeDocDB(make_docs(40), page_bytes=3_000)
    enabled_while_answering: list[bool] = []
    for method, op, answer in (
        ("GET", "find", fake.find),
        ("POST", "aggregate", fake.aggregate),
    ):

        def callback(request: requests.PreparedRequest, answer: Any = answer) -> Any:
            enabled_while_answering.append(gc.isenabled())
            return answer(request)

        responses.add_callback(method, f"{BASE}/{op}", callback=callback)
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        records = read(make_client(max_workers=4))
        assert gc.isenabled()  # back on afterwards
    finally:
        if not was_enabled:
            gc.disable()
    assert records and enabled_while_answering and not any(enabled_while_answering)


@responses.activate
def test_retrieve_without_sort_limit_reads_like_the_official_client():
    # Issue 11 item 6: a limit without sort returns what the official client returns, the
    # server's natural order: unsorted skip/limit pages, no request after the limit arrived.
    docs = make_docs(60)
    random.Random(3).shuffle(docs)  # natural (insertion) order is not the _id order
    fake = FakeDocDB(docs, page_bytes=2_000)
    fake.install()
    client = make_client()
    limited = client.retrieve_docdb_records(limit=25)
    assert limited == docs[:25]
    limits = [p["limit"] for p in fake.find_params]
    assert limits[0] == 25 and len(limits) > 2
    # Each request asks for the records still missing; none after the 25th arrived.
    received = 0
    for request, call in zip(fake.find_params, responses.calls, strict=True):
        assert request == {"filter": {}, "sort": None, "limit": 25 - received, "skip": received}
        received += len(call.response.json())
    assert received == 25

    fake.find_params.clear()
    few = client.retrieve_docdb_records(limit=5)
    assert few == docs[:5]
    assert fake.find_params == [{"filter": {}, "sort": None, "limit": 5, "skip": 0}]


@responses.activate
def test_retrieve_returns_mixed_id_types():
    docs = [{"_id": i, "v": i} for i in range(5)] + [{"_id": f"s{i}", "v": i} for i in range(5)]
    fake = FakeDocDB(docs, page_bytes=40)
    fake.install()
    client = make_client(ids_per_request=3)  # deprecated, still accepted
    records = client.retrieve_docdb_records()
    assert [r["_id"] for r in records] == [0, 1, 2, 3, 4, "s0", "s1", "s2", "s3", "s4"]
    # $gt 4 matches no string: one skip page brings the first strings, key set resumes there.
    skips = [(p["skip"], p["filter"]) for p in fake.find_params if p["skip"]]
    assert skips[0][0] == 5 and skips[0][1] == {}
    assert skips[-1][0] == 10
    assert fake.find_params[-2]["filter"] == {"_id": {"$gt": "s4"}}

    fake.find_params.clear()
    limited = client.retrieve_docdb_records(limit=7)
    assert [r["_id"] for r in limited] == [0, 1, 2, 3, 4, "s0", "s1"]
    # Skip/limit (as the official client): each page asks only for the records still missing.
    assert all(p["limit"] == 7 - p["skip"] for p in fake.find_params)


@responses.activate
def test_retrieve_without_sort_ids_that_do_not_round_trip():
    # Like ObjectIds rendered as strings: a key set on the string matches nothing, so every
    # page after the first comes from a skip page; still every record exactly once.
    docs = make_docs(12)
    fake = FakeDocDB(docs, page_bytes=1_000)

    def find(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        status, headers, body = fake.find(request)
        if "%24gt" in request.url:
            body = "[]"
        return status, headers, body

    responses.add_callback("GET", f"{BASE}/find", callback=find)
    records = make_client().retrieve_docdb_records()
    assert records == sorted(docs, key=lambda d: d["_id"])
    skips = [p["skip"] for p in fake.find_params if p["skip"]]
    assert skips == sorted(set(skips)) and skips[-1] == 12


@responses.activate
def test_retrieve_without_sort_drops_records_a_skip_page_repeats():
    # An insert before the last _id read shifts the final skip page onto a served record.
    docs = make_docs(20)
    by_id = sorted(docs, key=lambda d: d["_id"])
    fake = FakeDocDB(list(docs), page_bytes=1_500)

    def find(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        answer = fake.find(request)
        if len(fake.find_params) == 1 and len(fake.docs) == len(docs):  # once
            fake.docs.append({"_id": "0", "name": "inserted meanwhile"})
        return answer

    responses.add_callback("GET", f"{BASE}/find", callback=find)
    records = make_client().retrieve_docdb_records()
    assert records == sorted(docs, key=lambda d: d["_id"])
    assert fake.find_params[-1]["skip"] == 20
    assert responses.calls[-1].response.json() == [by_id[-1]]  # repeated, and dropped


@responses.activate
def test_paginate_docdb_keyset_short_pages():
    docs = make_docs(40)
    fake = FakeDocDB(docs, page_bytes=3_000)
    fake.install()
    client = make_client()
    pages = list(paginate_docdb(client, page_size=15, filter_query=None, projection=None))
    flat = [r for page in pages for r in page]
    assert flat == sorted(docs, key=lambda d: d["_id"])
    assert all(0 < len(page) <= 15 for page in pages)
    assert any(len(page) < 15 for page in pages[:-1])  # short pages from the byte cap
    assert all(p["skip"] == 0 and p["limit"] == 15 for p in fake.find_params[:-1])
    assert fake.find_params[0]["filter"] == {}
    assert fake.find_params[1]["filter"] == {"_id": {"$gt": pages[0][-1]["_id"]}}
    # The final empty key-set page, then the skip page that confirms the end.
    assert len(fake.find_params) == len(pages) + 2
    assert fake.find_params[-1] == {"filter": {}, "sort": {"_id": 1}, "limit": 15, "skip": 40}
    assert query(responses.calls[0])["projection"] == "{}"


@responses.activate
def test_iter_docdb_pages_page_size_is_the_public_seam_of_paginate_docdb():
    docs = make_docs(12)
    fake = FakeDocDB(docs)
    fake.install()
    client = make_client()
    pages = list(client.iter_docdb_pages(page_size=5))
    assert [len(page) for page in pages] == [5, 5, 2]
    assert [r for page in pages for r in page] == sorted(docs, key=lambda d: d["_id"])
    assert all(p["limit"] == 5 for p in fake.find_params)
    with pytest.raises(ValueError, match="page_size=-1"):
        next(client.iter_docdb_pages(page_size=-1))
    with pytest.raises(ValueError, match="sort=.*name"):
        next(client.iter_docdb_pages(sort={"name": 1}, page_size=5))


@responses.activate
def test_record_helpers():
    docs = make_docs(5)
    FakeDocDB(docs).install()
    client = make_client()
    assert get_record_from_docdb(client, docs[2]["_id"]) == docs[2]
    assert get_record_from_docdb(client, "missing") is None
    assert does_metadata_record_exist_in_docdb(client, "bucket", "/asset_00003/")
    assert not does_metadata_record_exist_in_docdb(client, "bucket", "nope")
    call = responses.calls[2]
    assert query(call) == {
        "limit": "1",
        "skip": "0",
        "filter": '{"location":"s3://bucket/asset_00003"}',
        "projection": '{"_id":1}',
    }  # the official helper's request exactly (limit without sort: no sort sent)


@responses.activate
def test_aggregate_body_and_unsigned():
    responses.post(f"{BASE}/aggregate", json=[{"n": 3}])
    client = make_client()
    assert client.aggregate_docdb_records([{"$match": {"a": 1}}, {"$count": "n"}]) == [{"n": 3}]
    (call,) = responses.calls
    assert call.request.body == b'[{"$match":{"a":1}},{"$count":"n"}]'
    assert call.request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in call.request.headers


@responses.activate
def test_aggregate_retried_on_transient_error_as_read():
    responses.post(f"{BASE}/aggregate", status=502)
    responses.post(f"{BASE}/aggregate", json=[])
    assert make_client().aggregate_docdb_records([]) == []
    assert len(responses.calls) == 2


@responses.activate
def test_fetch_records_by_filter_list_single_chunk_shape():
    docs = make_docs(6)
    FakeDocDB(docs).install()
    client = make_client()
    names = [docs[4]["name"], docs[1]["name"], "absent"]
    records = client.fetch_records_by_filter_list("name", names, projection={"name": 1})
    assert sorted(r["name"] for r in records) == sorted(names[:2])
    (call,) = responses.calls
    assert json.loads(call.request.body) == [
        {"$match": {"name": {"$in": names}}},
        {"$project": {"name": 1}},
    ]
    responses.calls.reset()
    fetch_records_by_filter_list(client, "name", names[:1])
    assert json.loads(responses.calls[0].request.body) == [{"$match": {"name": {"$in": names[:1]}}}]


@responses.activate
def test_fetch_records_by_filter_list_chunks_dedupes_and_splits_on_413():
    docs = make_docs(50, pad=100)
    fake = FakeDocDB(docs, agg_bytes=2_500)
    fake.install()
    client = make_client(max_workers=4)
    names = [d["name"] for d in docs] + [docs[0]["name"]]
    records = client.fetch_records_by_filter_list("name", names, chunk_size=20)
    assert sorted(r["_id"] for r in records) == sorted(d["_id"] for d in docs)
    statuses = [c.response.status_code for c in responses.calls]
    assert 413 in statuses and statuses.count(200) > 3
    # Chunks keep the order of the values: the first chunk's records come first.
    first_chunk = {d["name"] for d in docs[:20]}
    assert {r["name"] for r in records[:20]} == first_chunk


@responses.activate
def test_fetch_records_by_filter_list_values_distinct_as_on_the_wire():
    responses.post(f"{BASE}/aggregate", json=[])
    client = make_client()
    client.fetch_records_by_filter_list("name", ["b", "a", "b", "c", "a"])
    client.fetch_records_by_filter_list("n", [1, 1.0, True, "1", 1, uuid.UUID(int=1)])
    client.fetch_records_by_filter_list("name", [str(uuid.UUID(int=1)), uuid.UUID(int=1)])
    sent = [json.loads(c.request.body)[0]["$match"] for c in responses.calls]
    assert sent == [
        {"name": {"$in": ["b", "a", "c"]}},
        {"n": {"$in": [1, 1.0, True, "1", str(uuid.UUID(int=1))]}},
        {"name": {"$in": [str(uuid.UUID(int=1))]}},
    ]
    with pytest.raises(TypeError, match=r"filter_values\[1\]"):
        client.fetch_records_by_filter_list("name", ["ok", "bad \ud800"])
    assert len(responses.calls) == 3


@responses.activate
def test_fetch_records_by_filter_list_drops_records_repeated_across_chunks():
    def aggregate(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        values = json.loads(request.body)[0]["$match"]["k"]["$in"]
        return 200, {}, json.dumps([{"_id": "same"}, {"_id": 7}, {"_id": {"v": values[0]}}])

    responses.add_callback("POST", f"{BASE}/aggregate", callback=aggregate)
    records = make_client().fetch_records_by_filter_list("k", ["x", "y"], chunk_size=1)
    assert records == [{"_id": "same"}, {"_id": 7}, {"_id": {"v": "x"}}, {"_id": {"v": "y"}}]


@responses.activate
def test_build_location_map():
    docs = make_docs(4)
    FakeDocDB(docs).install()
    client = make_client()
    mapping = build_docdb_location_to_id_map(client, "bucket", ["asset_00001/", "asset_00003", "x"])
    assert mapping == {
        "s3://bucket/asset_00001": docs[1]["_id"],
        "s3://bucket/asset_00003": docs[3]["_id"],
    }
    body = json.loads(responses.calls[0].request.body)
    assert body[1] == {"$project": {"_id": 1, "location": 1}}


@responses.activate
def test_schema_client_uses_legacy_collection_url():
    url = f"https://{HOST}/v1/schemas/core"
    responses.get(url, json=[{"_id": "1.0.0"}])
    client = make_client(SchemaDbClient, collection="core")
    assert client.retrieve_schema_records(schema_version="1.0.0") == [{"_id": "1.0.0"}]
    assert query(responses.calls[0]) == {"limit": "0", "skip": "0", "filter": '{"_id":"1.0.0"}'}


@responses.activate
def test_empty_body_raises_json_decode_error():
    responses.get(f"{BASE}/find", body=b"")
    with pytest.raises(requests.JSONDecodeError):
        make_client()._find_records()


@responses.activate
def test_http_errors_carry_server_message():
    responses.get(
        f"{BASE}/find", status=400, json={"error": "MongoServerError", "detail": "bad $op"}
    )
    with pytest.raises(requests.HTTPError) as info:
        make_client().retrieve_docdb_records(filter_query={"$bad": 1})
    assert isinstance(info.value, http.ServiceError)
    assert info.value.status_code == 400
    assert info.value.server_message == "MongoServerError: bad $op"
    assert "MongoServerError: bad $op" in str(info.value)


# -- writes -----------------------------------------------------------------------------------


def assert_signed(request: requests.PreparedRequest) -> None:
    assert AUTH_RE.match(request.headers["Authorization"]), request.headers["Authorization"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", request.headers["X-Amz-Date"])
    assert request.headers["Content-Type"] == "application/json"
    assert "X-Amz-Security-Token" not in request.headers
    verify_signature(request)


@responses.activate
def test_insert_one_signed_and_sanitised():
    responses.post(f"{BASE}/insert_one", json={"acknowledged": True, "insertedId": "x"})
    client = make_client()
    rid = uuid.UUID("488bbe42-832b-4c37-8572-25eb87cc50e2")
    record = {
        "_id": rid,
        "created": dt.datetime(2000, 10, 10, 10, 10, 10, tzinfo=dt.timezone.utc),
        "naive": dt.datetime(2024, 5, 13, 22, 1, 56, 35469),
        "day": dt.date(2020, 1, 2),
        "arr": np.arange(3),
        "f": np.float32(1.5),
        "nan": float("nan"),
    }
    response = client.insert_one_docdb_record(record)
    assert response.json() == {"acknowledged": True, "insertedId": "x"}
    (call,) = responses.calls
    assert call.request.method == "POST"
    assert call.request.body == (
        b'{"_id":"488bbe42-832b-4c37-8572-25eb87cc50e2","created":"2000-10-10T10:10:10Z",'
        b'"naive":"2024-05-13T22:01:56.035469","day":"2020-01-02","arr":[0,1,2],"f":1.5,'
        b'"nan":null}'
    )
    assert_signed(call.request)


@responses.activate
def test_session_token_is_signed():
    responses.post(f"{BASE}/update_one", json={"acknowledged": True})
    client = make_client(boto=boto_session(token="TOKEN123"))
    client.upsert_one_docdb_record({"_id": "a", "x": 1})
    headers = responses.calls[0].request.headers
    assert headers["X-Amz-Security-Token"] == "TOKEN123"
    assert (
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"
        in (headers["Authorization"])
    )


@responses.activate
def test_upsert_one_body():
    responses.post(f"{BASE}/update_one", json={"acknowledged": True, "matchedCount": 1})
    client = make_client()
    rid = uuid.UUID(int=5)
    client.upsert_one_docdb_record({"_id": rid, "data_description.project_name": "p"})
    (call,) = responses.calls
    assert json.loads(call.request.body) == {
        "filter": {"_id": str(rid)},
        "update": {"$set": {"_id": str(rid), "data_description.project_name": "p"}},
        "upsert": "True",
    }
    assert_signed(call.request)
    with pytest.raises(ValueError, match="does not have an _id"):
        client.upsert_one_docdb_record({"x": 1})
    assert len(responses.calls) == 1


@responses.activate
def test_retried_write_is_resigned_with_a_new_date(monkeypatch: pytest.MonkeyPatch):
    import botocore.auth

    clock = iter(dt.datetime(2026, 11, 22, 3, 0, s, tzinfo=dt.timezone.utc) for s in range(60))
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: next(clock))
    responses.post(f"{BASE}/update_one", status=503)
    responses.post(f"{BASE}/update_one", status=429)
    responses.post(f"{BASE}/update_one", json={"acknowledged": True})
    client = make_client()
    client.upsert_one_docdb_record({"_id": "a", "x": 1})
    dates = [c.request.headers["X-Amz-Date"] for c in responses.calls]
    signatures = [c.request.headers["Authorization"] for c in responses.calls]
    assert len(dates) == 3 and len(set(dates)) == 3 and len(set(signatures)) == 3
    assert dates[0] == "20261122T030000Z"


@responses.activate
def test_insert_without_id_is_not_retried_after_a_gateway_error():
    responses.post(f"{BASE}/insert_one", status=502)
    with pytest.raises(http.ServiceError) as info:
        make_client().insert_one_docdb_record({"name": "no id"})
    assert info.value.status_code == 502
    assert len(responses.calls) == 1


class _FakeBoto:
    def __init__(self, credentials: Any, region: str | None) -> None:
        self._credentials, self.region_name = credentials, region

    def get_credentials(self) -> Any:
        return self._credentials


def test_signing_without_credentials_or_region_fails_before_sending():
    with responses.RequestsMock() as mock:
        with pytest.raises(NoCredentialsError):
            make_client(boto=_FakeBoto(None, REGION)).upsert_one_docdb_record({"_id": "a"})
        creds = boto_session().get_credentials()
        with pytest.raises(ValueError, match="no AWS region"):
            make_client(boto=_FakeBoto(creds, None)).upsert_one_docdb_record({"_id": "a"})
        assert len(mock.calls) == 0


@responses.activate
def test_delete_one_and_many():
    responses.delete(f"{BASE}/delete_one", json={"acknowledged": True, "deletedCount": 1})
    responses.delete(f"{BASE}/delete_many", json={"acknowledged": True, "deletedCount": 2})
    client = make_client()
    assert client.delete_one_record("a").json()["deletedCount"] == 1
    assert client.delete_many_records(["a", uuid.UUID(int=1)]).json()["deletedCount"] == 2
    one, many = responses.calls
    assert one.request.method == many.request.method == "DELETE"
    assert one.request.body == b'{"filter":{"_id":"a"}}'
    assert json.loads(many.request.body) == {
        "filter": {"_id": {"$in": ["a", "00000000-0000-0000-0000-000000000001"]}}
    }
    assert_signed(one.request)
    assert_signed(many.request)


@responses.activate
def test_delete_raises_on_error_status():
    responses.delete(
        f"{BASE}/delete_one", status=403, json={"message": "Missing Authentication Token"}
    )
    with pytest.raises(http.ServiceError, match="Missing Authentication Token"):
        make_client().delete_one_record("a")


def _record_of_size(index: int, metric: int) -> dict:
    """A record whose chunking size (JSON length + 49) is exactly ``metric``."""
    record = {"_id": f"id{index}", "pad": ""}
    base = len(_wire.encode(record)) + 49
    record["pad"] = "x" * (metric - base)
    assert len(_wire.encode(record)) + 49 == metric
    return record


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, "x", None, True, {"b": 2.5}], "c": (1.0, 2.0)},
        {"a": [1, {"b": float("nan")}]},
        {"a": (1.0, float("inf"))},
        {"a": {"b": np.float32("-inf")}},
        {"trace": np.array([0.0, np.nan])},
        {"trace": np.array([0.0, 1.0])},
        {"ok": np.int64(3), "when": dt.datetime(2024, 1, 1), "id": uuid.UUID(int=1)},
        [float("-inf")],
        float("nan"),
        "nan",
    ],
)
def test_holds_non_finite_agrees_with_first_non_finite(value: Any) -> None:
    assert _wire.holds_non_finite(value) == (_wire.first_non_finite(value) is not None)


@responses.activate
def test_upsert_list_chunking_matches_the_reference_example():
    responses.post(f"{BASE}/bulk_write", json={"ok": 1, "writeErrors": []})
    client = make_client(max_workers=1)
    records = [
        _record_of_size(i, size) for i, size in enumerate((1073, 2073, 3073, 4073, 5073, 6073))
    ]
    responses_ = client.upsert_list_of_docdb_records(records, max_payload_size=5000)
    assert len(responses_) == 5
    bodies = [json.loads(c.request.body) for c in responses.calls]
    assert [[op["UpdateOne"]["filter"]["_id"] for op in body] for body in bodies] == [
        ["id0", "id1"],
        ["id2"],
        ["id3"],
        ["id4"],
        ["id5"],
    ]
    op = bodies[0][0]
    assert op == {
        "UpdateOne": {
            "filter": {"_id": "id0"},
            "update": {"$set": records[0]},
            "upsert": "True",
        }
    }
    for call in responses.calls:
        assert_signed(call.request)


@responses.activate
def test_upsert_list_default_single_chunk_and_empty_list():
    responses.post(f"{BASE}/bulk_write", json={"ok": 1, "writeErrors": []})
    client = make_client()
    assert client.upsert_list_of_docdb_records([]) == []
    assert len(responses.calls) == 0
    records = [{"_id": uuid.UUID(int=i), "v": i} for i in range(100)]
    assert len(client.upsert_list_of_docdb_records(records)) == 1
    body = json.loads(responses.calls[0].request.body)
    assert [op["UpdateOne"]["filter"]["_id"] for op in body] == [str(r["_id"]) for r in records]


def test_upsert_list_validation_before_any_request():
    client = make_client()
    with responses.RequestsMock() as mock:
        with pytest.raises(ValueError, match=r"records\[1\], records\[3\]"):
            client.upsert_list_of_docdb_records([{"_id": 1}, {"x": 1}, {"_id": 2}, {"_id": None}])
        with pytest.raises(TypeError, match=r"records\[1\]\.subject\.weight"):
            client.upsert_list_of_docdb_records(
                [{"_id": 1}, {"_id": 2, "subject": {"weight": object()}}]
            )
        big = {"_id": "big", "blob": "x" * (_wire.GATEWAY_REQUEST_LIMIT + 1)}
        with pytest.raises(ValueError, match=r"records\[1\] \(_id='big'\).*request limit"):
            client.upsert_list_of_docdb_records([{"_id": 1}, big])
        with pytest.raises(ValueError, match="request limit"):
            client.insert_one_docdb_record(big)
        assert len(mock.calls) == 0


@responses.activate
def test_upsert_list_failed_chunk_names_ids_after_other_chunks_finish():
    def bulk(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        ids = [op["UpdateOne"]["filter"]["_id"] for op in json.loads(request.body)]
        if "id2" in ids:
            return 400, {}, json.dumps({"error": "MongoServerError", "detail": "boom"})
        if "id4" in ids:  # ordered bulk write: ops before index 1 landed
            body = {"error": "MongoBulkWriteError", "detail": "dup", "writeErrors": [{"index": 1}]}
            return 400, {}, json.dumps(body)
        return 200, {}, json.dumps({"ok": 1, "writeErrors": []})

    responses.add_callback("POST", f"{BASE}/bulk_write", callback=bulk)
    client = make_client(max_workers=2)
    records = [_record_of_size(i, 2000) for i in range(8)]
    with pytest.raises(BulkWriteFailed) as info:
        client.upsert_list_of_docdb_records(records, max_payload_size=4000)
    # chunks: [0,1] [2,3] [4,5] [6,7]; [2,3] failed entirely, [4,5] failed from index 1.
    assert info.value.failed_ids == ["id2", "id3", "id5"]
    assert len(info.value.responses) == 2
    assert len(responses.calls) == 4  # every chunk was attempted
    assert "3 of 8 records did not land" in str(info.value)
    assert isinstance(info.value, requests.HTTPError)


@responses.activate
def test_upsert_list_bodies_are_built_per_request_at_most_max_workers_in_flight():
    import threading
    import time

    in_flight, peak, lock = [0], [0], threading.Lock()

    def bulk(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return 200, {}, json.dumps({"ok": 1, "writeErrors": []})

    responses.add_callback("POST", f"{BASE}/bulk_write", callback=bulk)
    client = make_client(max_workers=2)
    records = [_record_of_size(i, 2000) for i in range(12)]
    answers = client.upsert_list_of_docdb_records(records, max_payload_size=4000)
    assert len(answers) == 6 and 1 <= peak[0] <= 2
    bodies = sorted(call.request.body for call in responses.calls)
    expected = sorted(
        b"["
        + b",".join(
            b'{"UpdateOne":{"filter":{"_id":"id%d"},"update":{"$set":%s},"upsert":"True"}}'
            % (i, _wire.encode(records[i]))
            for i in pair
        )
        + b"]"
        for pair in ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11))
    )
    assert bodies == expected  # byte for byte the official client's operations


@responses.activate
def test_upsert_list_retries_transient_chunk_failures():
    responses.post(f"{BASE}/bulk_write", status=504)
    responses.post(f"{BASE}/bulk_write", json={"ok": 1, "writeErrors": []})
    client = make_client()
    assert len(client.upsert_list_of_docdb_records([{"_id": 1}])) == 1
    assert len(responses.calls) == 2


# -- admin routes ---------------------------------------------------------------------------


@responses.activate
def test_register_asset_and_co_result():
    url = f"https://{HOST}/v2/assets/register"
    responses.post(url, status=201, json={"message": "Processed", "registered_co": True})
    client = make_client(version="v2")
    assert client.register_asset("s3://aind-open-data/ecephys_1_2023-01-01_00-00-00/") == {
        "message": "Processed",
        "registered_co": True,
    }
    client.register_co_result("s3://co-bucket/abc", "result name", "abc", "comp-1")
    first, second = responses.calls
    assert (
        first.request.body == b'{"s3_location":"s3://aind-open-data/ecephys_1_2023-01-01_00-00-00"}'
    )
    assert json.loads(second.request.body) == {
        "s3_location": "s3://co-bucket/abc",
        "name": "result name",
        "co_asset_id": "abc",
        "co_computation_id": "comp-1",
    }
    assert_signed(first.request)
    assert_signed(second.request)


@responses.activate
def test_register_is_not_retried_after_a_gateway_error_but_is_after_429():
    url = f"https://{HOST}/v1/assets/register"
    responses.post(url, status=429)
    responses.post(url, status=201, json={"message": "ok"})
    assert make_client().register_asset("s3://bucket/prefix")["message"] == "ok"
    responses.post(url, status=504)
    responses.calls.reset()
    with pytest.raises(http.ServiceError):
        make_client().register_asset("s3://bucket/prefix")
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("bucket/prefix", "must start with 's3://'"),
        ("s3://bucket", "prefix"),
        ("s3://bucket/", "prefix"),
        ("s3:///prefix", "bucket name is empty"),
        ("s3://b/prefix", "not a valid bucket name"),
        ("s3://bucket//a", "empty path segment"),
        ("s3://bucket/a b", "whitespace"),
        ("https://bucket.s3.amazonaws.com/p", "must start with 's3://'"),
        ("s3://bucket/p?x=1", "'?' or '#'"),
    ],
)
def test_malformed_s3_locations_rejected_before_sending(location: str, reason: str):
    client = make_client()
    with responses.RequestsMock() as mock:
        for call in (
            lambda: client.register_asset(location),
            lambda: client.deregister_asset(location),
            lambda: client.register_co_result(location, "n", "a", "c"),
        ):
            with pytest.raises(ValueError) as info:
                call()
            assert repr(location) in str(info.value) and reason in str(info.value)
        assert len(mock.calls) == 0


@responses.activate
def test_deregister_qc_and_summary():
    responses.delete(f"https://{HOST}/v1/assets/deregister", json={"deregistered_docdb": True})
    responses.post(f"https://{HOST}/v1/add_qc_evaluation", json={"acknowledged": True})
    responses.get(f"https://{HOST}/v1/data_summary/abc-123", json={"summary": "s"})
    client = make_client()
    assert client.deregister_asset("s3://bucket/p")["deregistered_docdb"]
    qc = {
        "qc_evaluation": [{"name": "e", "created": dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)}]
    }
    assert client.add_qc_evaluation("abc-123", qc) == {"acknowledged": True}
    assert client.generate_data_summary("abc-123") == {"summary": "s"}
    dereg, qc_call, summary = responses.calls
    assert dereg.request.method == "DELETE"
    assert json.loads(dereg.request.body) == {"s3_location": "s3://bucket/p"}
    assert json.loads(qc_call.request.body) == {
        "qc_evaluation": [{"name": "e", "created": "2025-01-01T00:00:00Z"}],
        "data_asset_id": "abc-123",
    }
    assert summary.request.method == "GET" and not summary.request.body
    for call in responses.calls:
        assert_signed(call.request)


@responses.activate
def test_qc_not_found_raises_http_error():
    responses.post(
        f"https://{HOST}/v1/add_qc_evaluation",
        status=404,
        json={"error": "NotFound", "detail": "no record abc"},
    )
    with pytest.raises(requests.HTTPError, match="no record abc"):
        make_client().add_qc_evaluation("abc", {"qc_evaluation": []})


def test_client_repr_has_no_credentials():
    client = make_client(boto=boto_session(token="TOKEN123"))
    assert SECRET not in repr(client) and "TOKEN123" not in repr(client)
    assert SECRET not in repr(client._auth())


def test_base_client_has_crud_but_not_admin_methods():
    client = make_client(Client, database="d", collection="c")
    assert hasattr(client, "upsert_list_of_docdb_records")
    assert not hasattr(client, "register_asset")


@responses.activate
def test_500_is_retried_for_reads_and_upserts_but_not_for_registration():
    responses.get(f"{BASE}/count_documents", status=500)
    responses.get(f"{BASE}/count_documents", json={"total_record_count": 1})
    client = make_client(retry=None)  # the client's default policy
    assert client._count_records()["total_record_count"] == 1
    responses.post(f"https://{HOST}/v1/assets/register", status=500, json={"message": "boom"})
    with pytest.raises(http.ServiceError, match="boom"):
        client.register_asset("s3://bucket/prefix")
    assert [c.request.url.rsplit("/", 1)[-1] for c in responses.calls] == [
        "count_documents",
        "count_documents",
        "register",
    ]


def test_default_retry_policy_includes_500():
    assert 500 in MetadataDbClient(host=HOST).retry.statuses


def test_a_read_only_client_does_not_import_botocore() -> None:
    # Issue 15: reads are unsigned; botocore (~15 ms) is imported on the first signed request.
    code = (
        "import sys\n"
        "from prefect_neurodata.clients.aind.document_db import MetadataDbClient\n"
        "MetadataDbClient(host='http://127.0.0.1:1')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def _find_answers(stored: list[dict]) -> None:
    responses.get(f"{BASE}/find", json=stored)


DUPLICATE_ID = {
    "error": "MongoServerError",
    "detail": 'E11000 duplicate key error index: _id_ dup key: { _id: "a" }',
    "code": 11000,
}


@responses.activate
def test_insert_with_id_whose_answer_was_lost_is_reported_as_done():
    responses.post(f"{BASE}/insert_one", status=504, json={"message": "Endpoint request timed out"})
    responses.post(f"{BASE}/insert_one", status=400, json=DUPLICATE_ID)
    _find_answers([{"_id": "a", "v": 1, "last_modified": "2025-01-01T00:00:00Z"}])
    answer = make_client().insert_one_docdb_record({"_id": "a", "v": 1})
    assert answer.status_code == 200
    assert answer.json() == {"acknowledged": True, "insertedId": "a"}
    assert [c.request.method for c in responses.calls] == ["POST", "POST", "GET"]
    assert query(responses.calls[2]) == {"limit": "1", "skip": "0", "filter": '{"_id":"a"}'}


@responses.activate
def test_insert_with_id_over_a_different_record_still_raises_the_duplicate():
    responses.post(f"{BASE}/insert_one", status=504, json={"message": "Endpoint request timed out"})
    responses.post(f"{BASE}/insert_one", status=400, json=DUPLICATE_ID)
    _find_answers([{"_id": "a", "v": 2}])
    with pytest.raises(http.ServiceError, match="E11000") as info:
        make_client().insert_one_docdb_record({"_id": "a", "v": 1})
    assert info.value.status_code == 400


@responses.activate
def test_insert_with_id_refused_at_once_is_not_read_back():
    responses.post(f"{BASE}/insert_one", status=400, json=DUPLICATE_ID)
    with pytest.raises(http.ServiceError, match="E11000"):
        make_client().insert_one_docdb_record({"_id": "a", "v": 1})
    assert len(responses.calls) == 1  # a first-attempt duplicate is a real one
