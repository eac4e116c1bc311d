"""Pure parts of the DocDB stand-in: configuration and page encoding under the byte cap."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from bson import ObjectId

from prefect_neurodata.sandbox.docdb.config import DocDBConfig
from prefect_neurodata.sandbox.docdb.pages import PageTooLarge, dumps, encode_capped


def test_config_from_env_and_secret_hidden() -> None:
    cfg = DocDBConfig.from_env(
        {
            "NEURODATA_SANDBOX_MONGO_URI": "mongodb://127.0.0.1:1/",
            "NEURODATA_SANDBOX_SECRET_ACCESS_KEY": "very-secret",
            "NEURODATA_SANDBOX_PAGE_BYTES": "1000",
        }
    )
    assert cfg.mongo_uri == "mongodb://127.0.0.1:1/" and cfg.page_bytes == 1000
    assert cfg.aws_region == "us-west-2" and cfg.request_bytes == 10 * 1024 * 1024
    assert "very-secret" not in repr(cfg)
    with pytest.raises(ValueError, match="NEURODATA_SANDBOX_PAGE_BYTES must be > 0, got '0'"):
        DocDBConfig.from_env({"NEURODATA_SANDBOX_PAGE_BYTES": "0"})
    with pytest.raises(ValueError, match="NEURODATA_SANDBOX_REQUEST_BYTES must be an integer"):
        DocDBConfig.from_env({"NEURODATA_SANDBOX_REQUEST_BYTES": "ten"})


def test_encode_capped_exact_size_and_short_page() -> None:
    docs = [{"_id": i, "pad": "x" * 100} for i in range(10)]
    one = len(orjson.dumps(docs[0]))
    cap = 2 + 3 * one + 2  # room for exactly three documents and two commas
    body, count = encode_capped(iter(docs), cap, short_pages=True)
    assert count == 3 and len(body) == cap and orjson.loads(body) == docs[:3]
    body, count = encode_capped(iter(docs), cap - 1, short_pages=True)
    assert count == 2
    with pytest.raises(PageTooLarge):
        encode_capped(iter(docs), cap, short_pages=False)
    with pytest.raises(PageTooLarge):
        encode_capped(iter(docs), one, short_pages=True)
    assert encode_capped(iter([]), 10, short_pages=True) == (b"[]", 0)


def test_dumps_bson_types_like_node() -> None:
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    naive = dt.datetime(2024, 5, 13, 22, 1, 56)
    assert orjson.loads(dumps({"_id": oid, "t": naive})) == {
        "_id": "65a1b2c3d4e5f60718293a4b",
        "t": "2024-05-13T22:01:56Z",
    }
