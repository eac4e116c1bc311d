"""A real CAVE stand-in server for integration tests (uvicorn on 127.0.0.1 in a thread).

The server runs in this process so tests can compare answers with the world's chunkedgraph
model; every request still goes over HTTP to uvicorn.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import requests
import uvicorn

from prefect_neurodata.sandbox.cave.app import create_app
from prefect_neurodata.sandbox.cave.world import CaveConfig

DATASTACK = "minnie_sandbox"
SMALL_WORLD = {"synapses": 5000, "neurons": 30, "neuron_length": 100, "merges": 4, "splits": 2}
QUERY_PARAMS = {
    "return_pyarrow": "True",
    "arrow_format": "True",
    "split_positions": "True",
    "direct_sql_pandas": "True",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class CaveServer:
    """A running stand-in: ``url``, the ``config`` (tokens) and the in-process ``world``."""

    url: str
    config: CaveConfig
    world: Any

    def headers(self, role: str = "user", **extra: str) -> dict[str, str]:
        token = getattr(self.config, f"{role}_token")
        return {"Authorization": f"Bearer {token}", **extra}

    def get(self, path: str, role: str = "user", **kwargs: Any) -> requests.Response:
        headers = {**self.headers(role), **kwargs.pop("headers", {})}
        return requests.get(self.url + path, headers=headers, timeout=60, **kwargs)

    def post(self, path: str, role: str = "user", **kwargs: Any) -> requests.Response:
        headers = {**self.headers(role), **kwargs.pop("headers", {})}
        return requests.post(self.url + path, headers=headers, timeout=120, **kwargs)

    def put(self, path: str, role: str = "user", **kwargs: Any) -> requests.Response:
        headers = {**self.headers(role), **kwargs.pop("headers", {})}
        return requests.put(self.url + path, headers=headers, timeout=60, **kwargs)

    def delete(self, path: str, role: str = "user", **kwargs: Any) -> requests.Response:
        headers = {**self.headers(role), **kwargs.pop("headers", {})}
        return requests.delete(self.url + path, headers=headers, timeout=60, **kwargs)

    def query(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        role: str = "user",
        accept: str = "zstd",
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """POST a materialization query the way the 8.x client sends it."""
        return self.post(
            path,
            role,
            params={**QUERY_PARAMS, **(params or {})},
            json=body or {},
            headers={"Accept-Encoding": accept, "Content-Type": "application/json"},
        )


def arrow_frame(response: requests.Response) -> pd.DataFrame:
    """Decode a ``data.arrow`` body the way the client does."""
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"] == "data.arrow"
    return pa.ipc.open_stream(response.content).read_pandas()


@contextlib.contextmanager
def running_server(
    db_url: str, workdir: Path, seed: dict[str, Any] | None = None
) -> Iterator[CaveServer]:
    """Start the CAVE app on a free port, seed it, and stop it afterwards."""
    config = CaveConfig(db_url=db_url, workdir=workdir)
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"CAVE stand-in did not start on port {port}")
        time.sleep(0.02)
    cave = CaveServer(f"http://127.0.0.1:{port}", config, app.state.world)
    try:
        if seed is not None:
            r = cave.post("/__sandbox__/seed", "admin", json=seed)
            assert r.status_code == 200, r.text
        yield cave
    finally:
        server.should_exit = True
        thread.join(timeout=30)
