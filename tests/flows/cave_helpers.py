"""Shared pieces of the CAVE flow tests: saved blocks pointed at the sandbox, faults, limits.

The session sandbox holds a CAVE datastack seeded with a few thousand synapses and a few small
tables, with one expired and two valid materialization versions. Tests write into their own
temporary directories, buckets and (uniquely named) annotation tables, so they do not disturb
each other or the seeded data.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import requests

from prefect_neurodata.blocks import CaveCredentials

FAULTS_20 = {
    "rate": 0.2,
    "statuses": [429, 500, 502, 503, 504],
    "latency_ms": 2,
    "drop_rate": 0.0,
    "seed": 7,
    "retry_after": 0,
}


def cave_block(env: dict[str, str], token_key: str = "NEURODATA_CAVE_TOKEN") -> CaveCredentials:
    """A CAVE block for the sandbox with one of its tokens."""
    return CaveCredentials(
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        datastack_name=env["NEURODATA_CAVE_DATASTACK"],
        token=env[token_key],
        max_retries=5,
        timeout=60,
    )


def table_name(prefix: str) -> str:
    """A unique annotation table name."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def cave_faults(sandbox: Any, **config: Any) -> Iterator[None]:
    """Inject faults into the CAVE stand-in for the block; always turned off afterwards."""
    sandbox.faults("cave", **config)
    try:
        yield
    finally:
        sandbox.faults("cave")


@contextlib.contextmanager
def query_limit(sandbox: Any, limit: int) -> Iterator[None]:
    """Lower the materialization row limit (so partitioning is exercised); restored after."""
    env = sandbox.env
    headers = {"Authorization": f"Bearer {env['NEURODATA_CAVE_ADMIN_TOKEN']}"}
    urls = dict.fromkeys([env["NEURODATA_CAVE_LOCAL_URL"], env["NEURODATA_CAVE_GLOBAL_URL"]])

    def put(value: int | None) -> None:
        for url in urls:
            response = requests.put(
                f"{url}/__sandbox__/query_limit", json={"limit": value}, headers=headers, timeout=10
            )
            assert response.status_code == 200, response.text

    put(limit)
    try:
        yield
    finally:
        put(None)


def client_for(env: dict[str, str]) -> Any:
    """A plain CAVEclient on the sandbox (user token), to check results independently."""
    return cave_block(env).get_client()


def versions(env: dict[str, str]) -> tuple[list[int], list[int]]:
    """(valid versions, every version) of the sandbox datastack."""
    materialize = client_for(env).materialize
    return materialize.get_versions(), materialize.get_versions(expired=True)
