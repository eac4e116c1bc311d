"""Fault-injection middleware: configuration, seeded decisions, and behaviour on a real server."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from prefect_neurodata.sandbox.faults import (
    TRANSIENT_STATUSES,
    FaultConfig,
    FaultConfigError,
    FaultMiddleware,
)


# -- configuration ---------------------------------------------------------------------------
def test_default_config_is_inactive_and_serialises_to_empty() -> None:
    cfg = FaultConfig.from_mapping({})
    assert not cfg.active
    assert cfg.to_dict() == {}
    assert FaultConfig.from_mapping(None) == FaultConfig()


def test_config_round_trip() -> None:
    data = {
        "rate": 0.2,
        "statuses": [429, 503],
        "latency_ms": 30,
        "drop_rate": 0.02,
        "lost_rate": 0.05,
        "seed": 7,
        "retry_after": 1,
    }
    cfg = FaultConfig.from_mapping(data)
    assert cfg.active and cfg.statuses == (429, 503)
    assert cfg.to_dict() == {**data, "latency_ms": 30.0}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"rate": 1.5}, "rate must be a number between 0 and 1, got 1.5"),
        ({"rate": "0.1"}, "rate must be a number between 0 and 1, got '0.1'"),
        ({"drop_rate": -0.1}, "drop_rate must be a number between 0 and 1, got -0.1"),
        ({"lost_rate": 2}, "lost_rate must be a number between 0 and 1, got 2"),
        ({"statuses": [404]}, "statuses must be a non-empty list"),
        ({"statuses": []}, "statuses must be a non-empty list"),
        ({"latency_ms": -1}, "latency_ms must be a number >= 0, got -1"),
        ({"seed": "x"}, "seed must be an integer or null, got 'x'"),
        ({"retry_after": 1.5}, "retry_after must be an integer >= 0, got 1.5"),
        ({"rates": 0.1}, "unknown fault config key(s) ['rates']"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_config_names_field_and_value(data: Any, needle: str) -> None:
    with pytest.raises(FaultConfigError) as info:
        FaultConfig.from_mapping(data)
    assert needle in str(info.value)


def test_from_env_reads_service_variable() -> None:
    env = {"NEURODATA_SANDBOX_FAULTS_CAVE": '{"rate": 0.5, "seed": 1}'}
    assert FaultConfig.from_env("cave", env).rate == 0.5
    assert FaultConfig.from_env("docdb", env) == FaultConfig()
    with pytest.raises(FaultConfigError, match="NEURODATA_SANDBOX_FAULTS_DOCDB is not valid JSON"):
        FaultConfig.from_env("docdb", {"NEURODATA_SANDBOX_FAULTS_DOCDB": "{rate"})
    with pytest.raises(FaultConfigError, match="NEURODATA_SANDBOX_FAULTS_DOCDB: rate"):
        FaultConfig.from_env("docdb", {"NEURODATA_SANDBOX_FAULTS_DOCDB": '{"rate": 3}'})


def test_middleware_reads_env_when_no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURODATA_SANDBOX_FAULTS_DOCDB", '{"rate": 0.25, "seed": 9}')
    mw = FaultMiddleware(Starlette(), service="docdb")
    assert mw.config.rate == 0.25 and mw.config.seed == 9


# -- seeded decisions -------------------------------------------------------------------------
def _fates(config: dict, n: int) -> list[tuple[str, int | None]]:
    mw = FaultMiddleware(Starlette(), service="x", config=config)
    return [mw._decide() for _ in range(n)]


def test_same_seed_same_sequence_and_reset_on_configure() -> None:
    cfg = {"rate": 0.3, "drop_rate": 0.05, "seed": 11}
    first = _fates(cfg, 500)
    assert first == _fates(cfg, 500)
    assert first != _fates({**cfg, "seed": 12}, 500)
    mw = FaultMiddleware(Starlette(), service="x", config=cfg)
    head = [mw._decide() for _ in range(50)]
    mw.configure(cfg)  # a new configuration restarts the seeded sequence
    assert [mw._decide() for _ in range(50)] == head


def test_seeded_rate_gives_configured_statuses_in_proportion() -> None:
    n = 5_000
    fates = _fates({"rate": 0.2, "seed": 7}, n)
    statuses = Counter(status for fate, status in fates if fate == "fault")
    assert set(statuses) == set(TRANSIENT_STATUSES)
    assert 0.17 < sum(statuses.values()) / n < 0.23
    assert all(fate != "drop" for fate, _ in fates)
    only = Counter(
        s for f, s in _fates({"rate": 0.5, "statuses": [502, 504], "seed": 1}, 1000) if f == "fault"
    )
    assert set(only) == {502, 504}


def test_drop_rate_proportion() -> None:
    fates = _fates({"drop_rate": 0.1, "seed": 5}, 4_000)
    drops = sum(1 for fate, _ in fates if fate == "drop")
    assert 300 < drops < 500


def test_lost_rate_proportion_leaves_other_sequences_unchanged() -> None:
    fates = _fates({"lost_rate": 0.1, "seed": 5}, 4_000)
    lost = [status for fate, status in fates if fate == "lost"]
    assert 300 < len(lost) < 500 and set(lost) == {504}
    # Switched off, the lost-answer fault draws nothing: existing seeds keep their sequences.
    plain = {"rate": 0.3, "drop_rate": 0.05, "seed": 11}
    assert _fates({**plain, "lost_rate": 0.0}, 500) == _fates(plain, 500)


# -- on a real uvicorn server -----------------------------------------------------------------
class _Server:
    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, FaultMiddleware, Counter]]:
    seen: Counter = Counter()

    async def echo(request: Request) -> JSONResponse:
        seen[request.url.path] += 1
        return JSONResponse({"ok": True, "body": (await request.body()).decode()})

    inner = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"])])
    app = FaultMiddleware(inner, service="unit", config={}, health=lambda: {"extra": 1})
    with _Server(app) as url:
        yield url, app, seen


@pytest.fixture(autouse=True)
def _reset(served: tuple[str, FaultMiddleware, Counter]) -> Iterator[None]:
    yield
    served[1].configure({})


def test_health_and_admin_routes(served) -> None:
    url, _, _ = served
    r = requests.get(url + "/__sandbox__/health")
    assert r.json() == {"status": "ok", "service": "unit", "extra": 1}
    assert requests.get(url + "/__sandbox__/faults").json() == {}
    assert requests.post(url + "/__sandbox__/faults").status_code == 405


def test_put_get_faults_and_statuses_with_retry_after(served) -> None:
    url, _, seen = served
    before = seen["/echo"]
    r = requests.put(
        url + "/__sandbox__/faults", json={"rate": 1.0, "statuses": [429], "retry_after": 3}
    )
    assert r.status_code == 200 and r.json()["statuses"] == [429]
    assert requests.get(url + "/__sandbox__/faults").json()["rate"] == 1.0
    r = requests.post(url + "/echo", data=b"payload")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"
    assert r.json() == {"message": "Too Many Requests"}
    assert seen["/echo"] == before  # a faulted request never reaches the app
    for status, message in [
        (500, "Internal server error"),
        (502, "Internal server error"),
        (503, "Service Unavailable"),
        (504, "Endpoint request timed out"),
    ]:
        requests.put(url + "/__sandbox__/faults", json={"rate": 1.0, "statuses": [status]})
        r = requests.get(url + "/echo")
        assert (r.status_code, r.json()) == (status, {"message": message})
    # Admin routes are never faulted, even at rate 1.
    assert requests.get(url + "/__sandbox__/health").status_code == 200
    requests.put(url + "/__sandbox__/faults", json={})
    assert requests.get(url + "/echo").status_code == 200


def test_seeded_rate_over_http(served) -> None:
    url, _, _ = served
    requests.put(url + "/__sandbox__/faults", json={"rate": 0.3, "seed": 42})
    with requests.Session() as s:
        codes = [s.get(url + "/echo").status_code for _ in range(200)]
    requests.put(url + "/__sandbox__/faults", json={"rate": 0.3, "seed": 42})
    with requests.Session() as s:
        again = [s.get(url + "/echo").status_code for _ in range(200)]
    assert codes == again
    faults = [c for c in codes if c != 200]
    assert set(faults) <= set(TRANSIENT_STATUSES) and 30 < len(faults) < 90
    stats = requests.get(url + "/__sandbox__/stats").json()
    assert stats["requests"] == 200
    assert sum(stats["faults"].values()) == len(faults)


def test_latency_added_to_requests_not_admin(served) -> None:
    url, _, _ = served
    requests.put(url + "/__sandbox__/faults", json={"latency_ms": 400})
    with requests.Session() as s:
        s.get(url + "/__sandbox__/health")  # warm the connection
        start = time.perf_counter()
        assert s.get(url + "/echo").status_code == 200
        slow = time.perf_counter() - start
        start = time.perf_counter()
        s.get(url + "/__sandbox__/health")
        fast = time.perf_counter() - start
    assert slow >= 0.4
    assert fast < 0.3


def test_drop_closes_connection_without_response(served) -> None:
    url, _, seen = served
    before = seen["/echo"]
    requests.put(url + "/__sandbox__/faults", json={"drop_rate": 1.0, "seed": 1})
    with pytest.raises(requests.ConnectionError):
        requests.post(url + "/echo", data=b"x", timeout=5)
    assert seen["/echo"] == before
    assert requests.get(url + "/__sandbox__/stats").json()["drops"] == 1
    requests.put(url + "/__sandbox__/faults", json={})
    assert requests.get(url + "/echo", timeout=5).status_code == 200


def test_lost_answer_runs_the_request_then_answers_504(served) -> None:
    url, _, seen = served
    before = seen["/echo"]
    requests.put(url + "/__sandbox__/faults", json={"lost_rate": 1.0, "seed": 1})
    r = requests.post(url + "/echo", data=b"written", timeout=5)
    assert (r.status_code, r.json()) == (504, {"message": "Endpoint request timed out"})
    assert r.headers["x-sandbox-fault"] == "1"
    assert seen["/echo"] == before + 1  # the app carried the request out; only its answer is lost
    stats = requests.get(url + "/__sandbox__/stats").json()
    assert (stats["lost"], stats["faults"], stats["drops"]) == (1, {}, 0)


def test_invalid_put_keeps_previous_config(served) -> None:
    url, _, _ = served
    requests.put(url + "/__sandbox__/faults", json={"rate": 0.1, "seed": 2})
    r = requests.put(url + "/__sandbox__/faults", json={"rate": 0.1, "statuses": [418]})
    assert r.status_code == 400
    assert r.json()["error"] == "BadRequest" and "418" in r.json()["detail"]
    r = requests.put(url + "/__sandbox__/faults", data=b"{oops")
    assert r.status_code == 400
    assert requests.get(url + "/__sandbox__/faults").json()["seed"] == 2


def test_custom_error_body_for_other_services() -> None:
    def cave_body(status: int) -> tuple[bytes, str]:
        return f"error {status}".encode(), "text/plain"

    app = FaultMiddleware(
        Starlette(), service="cave", config={"rate": 1.0, "statuses": [502]}, error_body=cave_body
    )
    with _Server(app) as url:
        r = requests.get(url + "/anything")
    assert r.status_code == 502
    assert r.text == "error 502" and r.headers["content-type"] == "text/plain"


def test_delayed_requests_wait_side_by_side(served) -> None:
    """The latency profile of the real services: a delay does not serialise other requests."""
    url, app, _ = served
    requests.put(url + "/__sandbox__/faults", json={"latency_ms": 1500})
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.get(url + "/echo").status_code, range(8)))
    assert answers == [200] * 8
    stats = requests.get(url + "/__sandbox__/stats").json()
    assert stats["requests"] == 8
    # All eight were under way at once (a serialising server would show 1).
    assert stats["in_flight_peak"] == 8
    assert app.stats()["in_flight_peak"] == 8
