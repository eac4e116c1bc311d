"""The DocDB record generator: determinism, shapes and size distribution (no servers)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
import pytest

from prefect_neurodata.sandbox.seed import _asset_objects, indexer_json
from prefect_neurodata.sandbox.seed.records import RecordGenerator, core_files, sample_sizes

ANCHOR = datetime(2026, 11, 22, tzinfo=timezone.utc)


def test_same_seed_same_records_other_seed_other_records() -> None:
    a = RecordGenerator(7, anchor=ANCHOR).generate(50, version="v1")
    b = RecordGenerator(7, anchor=ANCHOR).generate(50, version="v1")
    c = RecordGenerator(8, anchor=ANCHOR).generate(50, version="v1")
    assert orjson.dumps(a) == orjson.dumps(b)
    assert [r["_id"] for r in a] != [r["_id"] for r in c]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_records_are_5kb_to_over_100kb_with_a_small_tail(version: str) -> None:
    recs = RecordGenerator(1, anchor=ANCHOR).generate(400, version=version)
    sizes = sorted(len(orjson.dumps(r)) for r in recs)
    assert sizes[0] >= 5_000
    assert sizes[-1] > 100_000
    assert 6_000 <= sizes[len(sizes) // 2] <= 20_000
    assert sum(s > 30_000 for s in sizes) < 0.15 * len(sizes)


def test_v1_and_v2_shapes() -> None:
    gen = RecordGenerator(2, bucket="my-bucket", anchor=ANCHOR)
    v1 = gen.generate(60, version="v1", force_bucket=True)
    v2 = gen.generate(60, version="v2", force_bucket=True)
    for r in v1:
        assert uuid.UUID(r["_id"]).version == 4
        assert r["location"] == f"s3://my-bucket/{r['name']}"
        assert {"created", "last_modified", "metadata_status", "external_links"} <= set(r)
        assert r["last_modified"] >= r["created"][:19]
    for r in v2:
        assert {"_last_modified", "other_identifiers"} <= set(r)
        assert "external_links" not in r and "metadata_status" not in r
        if r["data_description"]["data_level"] == "derived":
            assert r["name"].startswith(r["data_description"]["source_data"][0] + "_")
    assert {r["data_description"]["data_level"] for r in v1} == {"raw", "derived"}
    for r in RecordGenerator(5, anchor=ANCHOR).generate(300, version="v2"):
        if r["location"].startswith("s3://codeocean-"):
            assert r["data_description"]["data_level"] == "derived"
        else:
            assert r["location"].endswith("/" + r["name"])
    # A few legacy external_links shapes exist in larger v1 sets.
    big = RecordGenerator(3, anchor=ANCHOR).generate(400, version="v1")
    assert any(isinstance(r["external_links"], list) for r in big)
    # Recent modifications exist for 14-day lookback syncs.
    recent = [r for r in big if r["last_modified"][:10] >= "2026-11-08"]
    assert 0 < len(recent) < len(big) // 2


def test_asset_files_are_indexer_formatted_core_json() -> None:
    rec = RecordGenerator(4, anchor=ANCHOR).generate(1, version="v1", force_bucket=True)[0]
    objects = _asset_objects(rec, "v1", registered=True)
    for stem, body in core_files(rec, "v1").items():
        assert objects[f"{stem}.json"] == indexer_json(body)
    assert orjson.loads(objects["metadata.nd.json"])["_id"] == rec["_id"]
    assert b'\n   "' in objects["data_description.json"]  # indent=3 like the indexer
    unregistered = _asset_objects(rec, "v1", registered=False)
    assert "metadata.nd.json" not in unregistered


def test_bad_arguments() -> None:
    gen = RecordGenerator(0)
    with pytest.raises(ValueError, match="version"):
        gen.generate(1, version="v3")
    with pytest.raises(ValueError, match="n must be"):
        gen.generate(-1)


def test_size_sampler_has_big_records_for_small_sets() -> None:
    import numpy as np

    sizes = sample_sizes(20, np.random.default_rng(0))
    assert sizes.max() > 100_000
