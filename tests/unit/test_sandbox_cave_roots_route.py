"""The CAVE stand-in's roots routes serve concurrent lookups concurrently (in-process ASGI).

A real chunkedgraph answers bulk lookups from many load-balanced workers; the stand-in runs
each lookup in a worker thread so one big lookup does not hold the others on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from prefect_neurodata.sandbox.cave.app import build_fastapi
from prefect_neurodata.sandbox.cave.chunkedgraph import ChunkedGraph
from prefect_neurodata.sandbox.cave.world import CaveConfig, CaveWorld
from tests.unit.test_sandbox_cave_chunkedgraph import PARAMS  # the small test world

CFG = CaveConfig(db_url="sqlite://")
ROUTE = f"/segmentation/api/v1/table/{CFG.pcg_table}"
AUTH = {"Authorization": f"Bearer {CFG.viewer_token}"}


@pytest.fixture(scope="module")
def world() -> CaveWorld:
    world = CaveWorld(CFG)
    world.chunkedgraph = ChunkedGraph.build(PARAMS, table_id=CFG.pcg_table)
    return world


async def _post_all(world: CaveWorld, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=build_fastapi(world))
    async with httpx.AsyncClient(transport=transport, base_url="http://cave") as client:
        return list(await asyncio.gather(*(client.post(**r) for r in requests)))


def test_roots_routes_serve_lookups_at_the_same_time(world: CaveWorld, monkeypatch) -> None:
    model = world.chunkedgraph
    assert model is not None
    svs = model.sv_ids[::7]
    expected = model.get_roots(svs)
    # Every lookup waits until all three are under way: on the event loop the first one would
    # block the others and the barrier would break (a 500), in worker threads they meet.
    barrier = threading.Barrier(3, timeout=5)
    lookup = ChunkedGraph.get_roots

    def meet_then_lookup(self: ChunkedGraph, *args: Any, **kwargs: Any) -> np.ndarray:
        barrier.wait()
        return lookup(self, *args, **kwargs)

    monkeypatch.setattr(ChunkedGraph, "get_roots", meet_then_lookup)
    binary = {"headers": {**AUTH, "Content-Type": "application/octet-stream"}}
    body = orjson.dumps({"node_ids": [int(v) for v in svs]})
    answers = asyncio.run(
        _post_all(
            world,
            [
                {"url": ROUTE + "/roots_binary", "content": svs.astype("<u8").tobytes(), **binary},
                {"url": ROUTE + "/roots", "content": body, "headers": AUTH},
                {"url": ROUTE + "/roots", "content": body, "headers": AUTH,
                 "params": {"as_binary": "true"}},
            ],
        )
    )  # fmt: skip
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text[:200] for r in answers]
    assert np.frombuffer(answers[0].content, dtype="<u8").tolist() == expected.tolist()
    assert answers[1].json() == {"root_ids": [int(v) for v in expected]}
    assert np.frombuffer(answers[2].content, dtype="<u8").tolist() == expected.tolist()


def test_roots_route_errors_unchanged_off_the_event_loop(world: CaveWorld) -> None:
    svs = world.chunkedgraph.sv_ids[:3]  # type: ignore[union-attr]
    unknown = np.array([int(svs[0]), 12345], dtype="<u8")
    bad_length, strict, bad_key = asyncio.run(
        _post_all(
            world,
            [
                {"url": ROUTE + "/roots_binary", "content": b"123", "headers": AUTH},
                {"url": ROUTE + "/roots_binary", "content": unknown.tobytes(), "headers": AUTH,
                 "params": {"fail_to_zero": "false"}},
                {"url": ROUTE + "/roots", "content": b'{"ids": [1]}', "headers": AUTH},
            ],
        )
    )  # fmt: skip
    assert bad_length.status_code == 400
    assert "body must be little-endian uint64 (got 3 bytes)" in bad_length.json()["message"]
    assert strict.status_code == 400
    assert "Node 12345 does not exist" in strict.json()["message"]
    assert bad_key.status_code == 400
    assert "node_ids" in bad_key.json()["message"]


def test_in_memory_world_gives_each_thread_its_own_transaction() -> None:
    """With ``sqlite://`` one thread's rollback does not undo another thread's open writes."""
    world = CaveWorld(CaveConfig(db_url="sqlite://"))
    scratch = sa.Table("scratch", sa.MetaData(), sa.Column("n", sa.Integer))
    scratch.create(world.engine)
    inserted, rolled_back = threading.Event(), threading.Event()

    def other_thread_rolls_back() -> None:
        inserted.wait(10)
        with world.engine.connect() as conn:
            conn.execute(sa.select(scratch)).all()
            conn.rollback()
        rolled_back.set()

    thread = threading.Thread(target=other_thread_rolls_back)
    thread.start()
    with world.engine.connect() as conn:
        conn.execute(scratch.insert().values(n=1))
        inserted.set()
        assert rolled_back.wait(10), "the other thread could not use the database"
        conn.commit()
    thread.join(10)
    with world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(scratch)).scalar() == 1
