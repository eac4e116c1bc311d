"""The DocDB stand-in's ``_id``-list path gives exactly what the MongoDB path gives.

Two stand-ins run over the same SecantusDB: ``fast`` answers ``_id``-range and unfiltered reads
from its cached sorted ``_id`` list, ``ref`` (``store.use_id_lists = False``) sends every query
to MongoDB. The same requests must return the same bodies, order and page boundaries. Records
have uneven sizes and pages a small byte cap, so pages are cut short at varied places.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
import requests
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from secantus import SecantusDBServer

from prefect_neurodata.sandbox.docdb.app import create_app
from prefect_neurodata.sandbox.docdb.config import DocDBConfig
from prefect_neurodata.sandbox.docdb.id_index import IdList as _IdList
from prefect_neurodata.sandbox.docdb.id_index import id_bounds as _id_bounds
from prefect_neurodata.sandbox.docdb.id_index import id_direction as _id_direction

pytestmark = pytest.mark.integration

KEY_ID = "AKIAIDINDEXTEST"
SECRET = "id-index-secret"
REGION = "us-west-2"
PAGE_BYTES = 30_000
N_RECORDS = 60
COLL = "/v1/metadata_index/data_assets"


class _Server:
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
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def mongo() -> Iterator[SecantusDBServer]:
    srv = SecantusDBServer(host="127.0.0.1", port=0, storage_path=":memory:")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def db(mongo: SecantusDBServer) -> Iterator[pymongo.MongoClient]:
    client = pymongo.MongoClient(mongo.uri, directConnection=True)
    yield client
    client.close()


def _config(mongo: SecantusDBServer) -> DocDBConfig:
    return DocDBConfig(
        mongo_uri=mongo.uri,
        aws_region=REGION,
        access_key_id=KEY_ID,
        secret_access_key=SECRET,
        page_bytes=PAGE_BYTES,
    )


@pytest.fixture(scope="module")
def fast_app(mongo: SecantusDBServer):
    return create_app(_config(mongo))


@pytest.fixture(scope="module")
def fast(fast_app) -> Iterator[str]:
    with _Server(fast_app) as url:
        yield url


@pytest.fixture(scope="module")
def ref(mongo: SecantusDBServer) -> Iterator[str]:
    app = create_app(_config(mongo))
    app.app.state.docdb.store.use_id_lists = False
    with _Server(app) as url:
        yield url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def records(db: pymongo.MongoClient) -> list[dict[str, Any]]:
    rng = random.Random(7)
    recs = [
        {
            "_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "name": f"rec-{i:03d}",
            "n": i,
            "pad": "p" * rng.randint(500, 9_000),
        }
        for i in range(N_RECORDS)
    ]
    # Inserted out of _id order: MongoDB's natural order is not the _id order.
    db.metadata_index.data_assets.insert_many(recs)
    return recs


def find(http: requests.Session, base: str, path: str = COLL, **params: Any) -> requests.Response:
    query = {
        k: (json.dumps(v) if k in ("filter", "projection", "sort") else str(v))
        for k, v in params.items()
    }
    return http.get(base + path + "/find", params=query)


def stats(http: requests.Session, base: str) -> dict[str, int]:
    return http.get(base + "/__sandbox__/health").json()["find"]


def signed(http: requests.Session, method: str, url: str, body: Any) -> requests.Response:
    data = json.dumps(body).encode()
    request = AWSRequest(
        method=method, url=url, data=data, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(KEY_ID, SECRET), "execute-api", REGION).add_auth(request)
    return http.request(method, url, data=data, headers=dict(request.headers.items()))


def skip_loop(
    http: requests.Session, base: str, limit: int, path: str = COLL, **params: Any
) -> list[list[dict]]:
    """The official client's loop: skip += len(page) until an empty page."""
    pages: list[list[dict]] = []
    skip = 0
    while True:
        r = find(http, base, path, limit=limit, skip=skip, **params)
        assert r.status_code == 200, r.text
        assert len(r.content) <= PAGE_BYTES
        page = r.json()
        if not page:
            return pages
        pages.append(page)
        skip += len(page)


def keyset_loop(
    http: requests.Session, base: str, limit: int, direction: int = 1
) -> list[list[dict]]:
    pages: list[list[dict]] = []
    while True:
        op = "$gt" if direction == 1 else "$lt"
        flt = {"$and": [{}, {"_id": {op: pages[-1][-1]["_id"]}}]} if pages else {}
        r = find(http, base, limit=limit, skip=0, filter=flt, sort={"_id": direction})
        assert r.status_code == 200, r.text
        page = r.json()
        if not page:
            return pages
        pages.append(page)


# -- pure parts ------------------------------------------------------------------------------
def test_id_bounds_accepts_only_id_ranges() -> None:
    assert _id_bounds({}) == []
    assert _id_bounds({"_id": {"$gt": "a", "$lte": "z"}}) == [("$gt", "a"), ("$lte", "z")]
    assert _id_bounds({"$and": [{}, {"_id": {"$gte": 3}}], "_id": {"$lt": 9}}) == [
        ("$gte", 3),
        ("$lt", 9),
    ]
    for other in (
        {"_id": "a"},
        {"_id": {}},
        {"_id": {"$in": ["a"]}},
        {"_id": {"$gt": "a"}, "name": "x"},
        {"$and": []},
        {"$and": [{"name": "x"}]},
        {"$or": [{"_id": {"$gt": "a"}}]},
    ):
        assert _id_bounds(other) is None, other
    assert _id_direction(None) == 1 and _id_direction([("_id", -1)]) == -1
    assert _id_direction([("_id", True)]) is None
    assert _id_direction([("name", 1)]) is None
    assert _id_direction([("_id", 1), ("name", 1)]) is None


def test_id_list_span_and_kinds() -> None:
    ids = _IdList(["c", "a", "e", "b", "d"])
    assert ids.ids == ["a", "b", "c", "d", "e"] and ids.count == 5
    assert ids.span([("$gt", "b"), ("$lte", "d")]) == (2, 4)
    assert ids.span([("$gte", "b"), ("$lt", "b")]) == (1, 1)
    assert ids.span([("$gt", 3)]) is None  # cross-type bound: MongoDB decides
    mixed = _IdList([1, "a"])
    assert mixed.ids is None and mixed.count == 2 and mixed.span([]) is None
    assert _IdList([True, False]).ids is None  # booleans are not numbers to MongoDB
    assert _IdList([2, 1.5, 3]).ids == [1.5, 2, 3]


# -- same answers as MongoDB -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("limit", "params"),
    [
        (0, {}),
        (7, {"sort": {"_id": 1}}),
        (0, {"sort": {"_id": -1}}),
        (5, {"sort": {"_id": -1}, "projection": {"name": 1}}),
        (0, {"filter": {"$and": [{}]}, "projection": {"pad": 0}}),
        (0, {"projection": {"_id": 1}}),  # answered from the id list alone
        (9, {"sort": {"_id": -1}, "projection": {"_id": 1}}),
    ],
)
def test_skip_loops_match_mongo(
    http: requests.Session, fast: str, ref: str, records: list[dict], limit: int, params: dict
) -> None:
    before = stats(http, fast)
    got = skip_loop(http, fast, limit, **params)
    # MongoDB's natural order is insertion order; the stand-in's is _id order.
    ref_params = {"sort": {"_id": 1}, **params}
    want = skip_loop(http, ref, limit, **ref_params)
    assert [len(p) for p in got] == [len(p) for p in want]
    assert got == want
    ids = [d["_id"] for page in got for d in page]
    assert sorted(ids) == sorted(r["_id"] for r in records)  # every record exactly once
    if "projection" not in params:
        assert len(got) >= 3  # the byte cap cut pages short
        assert any(len(p) < (limit or N_RECORDS) for p in got[:-1])
    after = stats(http, fast)
    assert after["indexed"] - before["indexed"] == len(got) + 1
    if len(got) > 1 and params.get("projection") != {"_id": 1}:  # pages were read ahead
        assert after["read_ahead"] > before["read_ahead"]


@pytest.mark.parametrize(("limit", "direction"), [(0, 1), (9, 1), (4, -1), (0, -1)])
def test_keyset_loops_match_mongo(
    http: requests.Session, fast: str, ref: str, records: list[dict], limit: int, direction: int
) -> None:
    got = keyset_loop(http, fast, limit, direction)
    want = keyset_loop(http, ref, limit, direction)
    assert got == want
    ids = [d["_id"] for page in got for d in page]
    assert ids == sorted((r["_id"] for r in records), reverse=direction == -1)


def test_ranges_and_counts_match_mongo(
    http: requests.Session, fast: str, ref: str, records: list[dict]
) -> None:
    ordered = sorted(r["_id"] for r in records)
    a, b, c = ordered[10], ordered[25], ordered[40]
    filters = [
        {"_id": {"$gt": a}},
        {"_id": {"$gte": a, "$lt": c}},
        {"_id": {"$gt": a, "$lte": b}},
        {"$and": [{"_id": {"$gte": a}}, {"_id": {"$lte": c}}, {}]},
        {"$and": [{"_id": {"$gt": c}}, {"_id": {"$lt": a}}]},  # empty range
        {"_id": {"$lt": "0"}},  # before every uuid
        {"_id": {"$gt": 5}},  # number vs string ids: no match in MongoDB either
    ]
    for flt in filters:
        for sort in ({"_id": 1}, {"_id": -1}):
            for skip, limit in ((0, 0), (3, 4), (2, 0), (50, 5)):
                args = {"filter": flt, "sort": sort, "skip": skip, "limit": limit}
                got, want = find(http, fast, **args), find(http, ref, **args)
                assert got.status_code == want.status_code == 200
                assert got.json() == want.json(), args
        query = {"filter": json.dumps(flt)}
        got = http.get(fast + COLL + "/count_documents", params=query).json()
        want = http.get(ref + COLL + "/count_documents", params=query).json()
        assert got == want, flt
    whole = http.get(fast + COLL + "/count_documents").json()
    assert whole == {"total_record_count": N_RECORDS, "filtered_record_count": N_RECORDS}


def test_other_queries_use_mongo(
    http: requests.Session, fast: str, ref: str, records: list[dict]
) -> None:
    before = stats(http, fast)
    for args in (
        {"filter": {"name": {"$in": ["rec-001", "rec-002"]}}, "sort": {"_id": 1}},
        {"filter": {"_id": {"$gt": "8"}, "n": {"$lt": 30}}, "sort": {"_id": 1}},
        {"filter": {}, "sort": {"name": -1}, "limit": 3},
        {"filter": {"_id": {"$gt": "4"}}, "projection": {"_id": 0, "name": 1}, "limit": 3},
    ):
        got, want = find(http, fast, **args), find(http, ref, **args)
        assert got.status_code == 200 and got.json() == want.json() and got.json()
    after = stats(http, fast)
    assert after["indexed"] == before["indexed"]
    assert after["queries"] - before["queries"] == 4


def test_write_between_pages_is_seen(
    http: requests.Session, fast: str, db: pymongo.MongoClient
) -> None:
    path = "/v1/analysis/writes"
    db.analysis.writes.insert_many([{"_id": f"w{i:02d}", "i": i} for i in range(1, 20)])
    first = find(http, fast, path, limit=5, skip=0, sort={"_id": 1}).json()
    assert [d["_id"] for d in first] == [f"w{i:02d}" for i in range(1, 6)]
    r = signed(http, "POST", fast + path + "/insert_one", {"_id": "w00", "i": 0})
    assert r.status_code == 200
    second = find(http, fast, path, limit=5, skip=5, sort={"_id": 1}).json()
    assert [d["_id"] for d in second] == [f"w{i:02d}" for i in range(5, 10)]
    r = signed(http, "DELETE", fast + path + "/delete_many", {"filter": {"i": {"$lt": 3}}})
    assert r.json()["deletedCount"] == 3
    third = find(http, fast, path, limit=0, skip=0, filter={"_id": {"$gt": "w05"}}).json()
    assert [d["_id"] for d in third] == [f"w{i:02d}" for i in range(6, 20)]
    count = http.get(fast + path + "/count_documents").json()
    assert count == {"total_record_count": 17, "filtered_record_count": 17}


def test_direct_mongo_writes_are_seen(
    http: requests.Session, fast: str, fast_app, db: pymongo.MongoClient
) -> None:
    path = "/v1/analysis/direct"
    db.analysis.direct.insert_many([{"_id": i} for i in range(10)])
    assert [d["_id"] for d in find(http, fast, path, limit=0, skip=0).json()] == list(range(10))
    # A deletion straight to MongoDB is noticed by the next fetch of that id.
    db.analysis.direct.delete_one({"_id": 4})
    got = find(http, fast, path, limit=0, skip=0, sort={"_id": -1}).json()
    assert [d["_id"] for d in got] == [9, 8, 7, 6, 5, 3, 2, 1, 0]
    # An insertion straight to MongoDB moves the server's write counters: seen at once.
    db.analysis.direct.insert_one({"_id": 42})
    got = find(http, fast, path, limit=2, skip=0, sort={"_id": -1}).json()
    assert [d["_id"] for d in got] == [42, 9]
    # Without the counters, once the list expired and was re-read in the background.
    store = fast_app.app.state.docdb.store
    probe, store._ids.probe, store._ids.ttl = store._ids.probe, None, 0.2
    try:
        db.analysis.direct.insert_one({"_id": 43})
        deadline = time.monotonic() + 20
        while True:
            got = find(http, fast, path, limit=2, skip=0, sort={"_id": -1}).json()
            if [d["_id"] for d in got] == [43, 42] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [d["_id"] for d in got] == [43, 42]
    finally:
        store._ids.probe, store._ids.ttl = probe, store.ID_LIST_TTL


def test_caps_and_413_on_the_id_path(
    http: requests.Session, fast: str, ref: str, db: pymongo.MongoClient
) -> None:
    path = "/v1/analysis/capped"
    db.analysis.capped.insert_many(
        [{"_id": i, "blob": "y" * 9_000} for i in range(6)]
        + [{"_id": 6, "blob": "z" * (PAGE_BYTES + 1)}]
    )
    got = skip_loop(http, fast, 0, path, filter={"_id": {"$lt": 6}})
    assert [[d["_id"] for d in p] for p in got] == [[0, 1, 2], [3, 4, 5]]
    for base in (fast, ref):
        r = find(http, base, path, limit=1, skip=0, filter={"_id": {"$gte": 6}})
        assert r.status_code == 413 and "payload size" in r.json()["message"]
        r = find(http, base, path, limit=0, skip=6, sort={"_id": 1}, projection={"blob": 0})
        assert r.json() == [{"_id": 6}]
        # The bare GET must fit whole.
        r = http.get(base + path, params={"filter": json.dumps({"_id": {"$lt": 4}})})
        assert r.status_code == 413
        r = http.get(base + path, params={"filter": json.dumps({"_id": {"$lt": 2}})})
        assert r.status_code == 200 and [d["_id"] for d in r.json()] == [0, 1]


def test_mixed_id_types_fall_back_to_mongo(
    http: requests.Session, fast: str, ref: str, db: pymongo.MongoClient
) -> None:
    path = "/v1/analysis/mixed"
    db.analysis.mixed.insert_many([{"_id": "b"}, {"_id": 2}, {"_id": "a"}, {"_id": 1.5}])
    before = stats(http, fast)["indexed"]
    for sort in ({"_id": 1}, {"_id": -1}):
        got = find(http, fast, path, limit=0, skip=0, sort=sort).json()
        assert got == find(http, ref, path, limit=0, skip=0, sort=sort).json()
    assert [d["_id"] for d in got] == ["b", "a", 2, 1.5]  # strings after numbers in BSON
    assert stats(http, fast)["indexed"] == before
    count = http.get(fast + path + "/count_documents").json()
    assert count == {"total_record_count": 4, "filtered_record_count": 4}


# -- whole documents kept in memory ----------------------------------------------------------
def test_whole_document_cache_gives_the_same_answers(
    http: requests.Session, fast: str, ref: str, db: pymongo.MongoClient
) -> None:
    """Cold (from MongoDB) and warm (from the cache) reads give the reference's bytes."""
    path = "/v1/analysis/cached"
    rng = random.Random(11)
    docs = [
        {
            "_id": f"c{i:03d}",
            "i": i,
            "nested": {"k": [i, str(i)]},
            "pad": "q" * rng.randint(100, 8_000),
        }
        for i in range(40)
    ]
    rng.shuffle(docs)
    db.analysis.cached.insert_many(docs)
    queries: list[dict[str, Any]] = [
        {"limit": 0, "skip": 0},
        {"limit": 7, "skip": 3, "sort": {"_id": -1}},
        {"limit": 0, "skip": 0, "filter": {"_id": {"$gt": "c010", "$lte": "c030"}}},
        {"limit": 5, "skip": 0, "filter": {"$and": [{}, {"_id": {"$gte": "c020"}}]}},
        {"limit": 0, "skip": 39},
        {"limit": 0, "skip": 0, "projection": {"pad": 0}},  # projected: not from the cache
    ]
    for round_ in ("cold", "warm", "warm again"):
        before = stats(http, fast)["cached_docs"]
        for args in queries:
            ref_args = {"sort": {"_id": 1}, **args}
            got, want = find(http, fast, path, **args), find(http, ref, path, **ref_args)
            assert got.status_code == want.status_code == 200
            assert got.content == want.content, (round_, args)
            assert len(got.content) <= PAGE_BYTES
        loops = skip_loop(http, fast, 0, path), skip_loop(http, ref, 0, path, sort={"_id": 1})
        assert loops[0] == loops[1] and len(loops[0]) >= 3  # cut short by the byte cap
        served = stats(http, fast)["cached_docs"] - before
        if round_ != "cold":
            assert served >= len(docs)  # every whole document came from memory
    # The bare GET must still fit whole, warm as cold.
    for base in (fast, ref):
        assert http.get(base + path).status_code == 413


def test_whole_document_cache_sees_every_write(
    http: requests.Session, fast: str, db: pymongo.MongoClient
) -> None:
    path = "/v1/analysis/cachewrites"
    db.analysis.cachewrites.insert_many([{"_id": f"d{i}", "v": 0} for i in range(5)])

    def values() -> list[Any]:
        return [d["v"] for d in find(http, fast, path, limit=0, skip=0).json()]

    assert values() == [0] * 5
    assert values() == [0] * 5  # now from memory
    body = {"filter": {"_id": "d1"}, "update": {"$set": {"v": 1}}}
    assert signed(http, "POST", fast + path + "/update_one", body).status_code == 200
    assert values() == [0, 1, 0, 0, 0]
    # Straight to MongoDB (as the seeder writes): the write counters move, the cache is dropped.
    db.analysis.cachewrites.update_one({"_id": "d3"}, {"$set": {"v": 3}})
    assert values() == [0, 1, 0, 3, 0]
    db.analysis.cachewrites.delete_one({"_id": "d0"})
    assert values() == [1, 0, 3, 0]


def test_whole_document_cache_budget(mongo: SecantusDBServer, db: pymongo.MongoClient) -> None:
    """Over its budget the cache stops growing and reads go on from MongoDB, unchanged."""
    from prefect_neurodata.sandbox.docdb.store import Store

    db.analysis.budget.insert_many([{"_id": i, "pad": "b" * 1_000} for i in range(20)])
    store = Store(mongo.uri, doc_cache_bytes=5_000)
    try:
        coll = store.collection("v1", "analysis", "budget")
        kwargs: dict[str, Any] = {"filter": {}, "projection": None, "sort": None, "skip": 0}
        first, n = store.find_page(coll, limit=0, cap=1_000_000, short_pages=True, **kwargs)
        id_list = store._ids.get(coll)
        assert n == 20 and 0 < id_list.docs_bytes <= 5_000 and len(id_list.docs) < 20
        second, _ = store.find_page(coll, limit=0, cap=1_000_000, short_pages=True, **kwargs)
        assert second == first
    finally:
        store.close()


def test_answers_of_mongo_queries_are_kept_until_a_write(
    http: requests.Session, fast: str, ref: str, db: pymongo.MongoClient
) -> None:
    """A filter MongoDB evaluates is answered again from memory, the same, until any write."""
    path = "/v1/analysis/answers"
    db.analysis.answers.insert_many(
        [{"_id": f"a{i:02d}", "kind": i % 3, "pad": "r" * (i * 300)} for i in range(30)]
    )
    queries: list[dict[str, Any]] = [
        {"limit": 0, "skip": 0, "filter": {"kind": 1}},
        {
            "limit": 0,
            "skip": 0,
            "filter": {"kind": 1},
            "sort": {"_id": 1},
            "projection": {"kind": 1},
        },
        {"limit": 3, "skip": 2, "filter": {"kind": {"$in": [0, 2]}}, "sort": {"pad": -1}},
    ]
    count = {"filter": json.dumps({"kind": 2})}

    def answers(base: str) -> list[Any]:
        got = [find(http, base, path, **q).content for q in queries]
        return [*got, http.get(base + path + "/count_documents", params=count).json()]

    first = answers(fast)
    before = stats(http, fast)["answered"]
    assert answers(fast) == first == answers(ref)
    assert stats(http, fast)["answered"] - before == len(queries) + 1  # all from memory
    # Cut pages of a filtered read: the same pages, warm as cold (skip loop of the official).
    loop = skip_loop(http, fast, 0, path, filter={"kind": {"$gte": 0}})
    assert loop == skip_loop(http, fast, 0, path, filter={"kind": {"$gte": 0}}) and len(loop) > 1
    # A write through the API, then one straight to MongoDB: both are seen at once.
    body = {"filter": {"_id": "a01"}, "update": {"$set": {"kind": 2}}}
    assert signed(http, "POST", fast + path + "/update_one", body).status_code == 200
    after_api = answers(fast)
    assert after_api != first and after_api == answers(ref)
    db.analysis.answers.update_one({"_id": "a04"}, {"$set": {"kind": 0}})
    after_direct = answers(fast)
    assert after_direct != after_api and after_direct == answers(ref)
