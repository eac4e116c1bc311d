"""The shared HTTP core: retries, timeouts, errors, JSON and bounded concurrency."""

from __future__ import annotations

import datetime as dt
import decimal
import gc
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import requests
import responses
import urllib3

from prefect_neurodata.clients.codec import PROMOTE_AFTER
from prefect_neurodata.clients.http import (
    HttpClient,
    RetryPolicy,
    ServiceError,
    TransportConfig,
    collection_paused,
    decode_json,
    dumps,
    imap_bounded,
    is_transient,
    loads,
    map_bounded,
    parse_retry_after,
    redact_url,
)

URL = "https://api.example.org/v1/things"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def http(sleeps: list[float]) -> HttpClient:
    return HttpClient(retry=RetryPolicy(max_retries=3, backoff_factor=0.1), sleep=sleeps.append)


@responses.activate
def test_get_retries_transient_statuses_then_succeeds(http: HttpClient, sleeps: list[float]):
    responses.get(URL, status=503)
    responses.get(URL, status=502)
    responses.get(URL, json={"ok": True})
    assert http.json(http.get(URL)) == {"ok": True}
    assert len(responses.calls) == 3
    assert len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2


@responses.activate
def test_retry_after_is_honoured(http: HttpClient, sleeps: list[float]):
    responses.get(URL, status=429, headers={"Retry-After": "7"})
    responses.get(URL, json=[])
    http.get(URL)
    assert sleeps == [7.0]


@responses.activate
def test_retries_exhausted_raise_service_error_with_context(http: HttpClient):
    responses.get(URL, status=504, json={"message": "Endpoint request timed out"})
    with pytest.raises(ServiceError) as info:
        http.get(URL, params={"filter": "{}"})
    err = info.value
    assert isinstance(err, requests.HTTPError)
    assert err.status_code == 504
    assert err.method == "GET"
    assert err.url.startswith(URL)
    assert err.server_message == "Endpoint request timed out"
    assert err.attempts == 4
    assert "Endpoint request timed out" in str(err)
    assert len(responses.calls) == 4


@responses.activate
def test_client_errors_are_not_retried(http: HttpClient, sleeps: list[float]):
    responses.get(URL, status=400, json={"detail": "bad filter", "error": "BadRequest"})
    with pytest.raises(ServiceError) as info:
        http.get(URL)
    assert info.value.server_message == "BadRequest: bad filter"
    assert not info.value.is_transient
    assert len(responses.calls) == 1 and sleeps == []


@responses.activate
def test_post_is_not_retried_on_gateway_errors(http: HttpClient):
    responses.post(URL, status=502)
    with pytest.raises(ServiceError):
        http.post(URL, json={"a": 1})
    assert len(responses.calls) == 1


@responses.activate
def test_post_is_retried_on_429_because_the_server_did_not_act(http: HttpClient):
    responses.post(URL, status=429)
    responses.post(URL, json={"id": 1})
    assert http.json(http.post(URL, json={"a": 1})) == {"id": 1}
    assert len(responses.calls) == 2


@responses.activate
def test_idempotent_post_is_retried_on_gateway_errors(http: HttpClient):
    responses.post(URL, status=503)
    responses.post(URL, json=[1])
    assert http.json(http.post(URL, json=[], idempotent=True)) == [1]


@responses.activate
def test_connection_errors_retried_for_reads_not_for_writes(http: HttpClient):
    responses.get(URL, body=requests.ConnectionError("reset by peer"))
    responses.get(URL, json=[])
    assert http.json(http.get(URL)) == []
    responses.post(URL, body=requests.ConnectionError("reset by peer"))
    with pytest.raises(requests.ConnectionError):
        http.post(URL, json={})
    assert [c.request.method for c in responses.calls] == ["GET", "GET", "POST"]


def test_refused_connection_is_retried_even_for_writes(sleeps: list[float]):
    http = HttpClient(retry=RetryPolicy(max_retries=2, backoff_factor=0), sleep=sleeps.append)
    with pytest.raises(requests.ConnectionError):
        http.post("http://127.0.0.1:9/never", json={}, timeout=1)
    assert len(sleeps) == 2


class CountingAuth(requests.auth.AuthBase):
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.calls += 1
        request.headers["X-Attempt"] = str(self.calls)
        return request


@responses.activate
def test_auth_runs_again_on_every_attempt(http: HttpClient):
    responses.put(URL, status=503)
    responses.put(URL, json={})
    auth = CountingAuth()
    http.put(URL, json={}, auth=auth)
    assert auth.calls == 2
    assert [c.request.headers["X-Attempt"] for c in responses.calls] == ["1", "2"]


@responses.activate
def test_json_body_and_default_timeout_are_sent():
    seen = {}

    def capture(request):
        seen["body"] = request.body
        seen["type"] = request.headers["Content-Type"]
        return (200, {}, "{}")

    responses.add_callback(responses.POST, URL, callback=capture)
    session = requests.Session()
    sent_timeouts = []
    original_send = session.send

    def send(prepared, **kwargs):
        sent_timeouts.append(kwargs["timeout"])
        return original_send(prepared, **kwargs)

    session.send = send  # type: ignore[method-assign]
    HttpClient(session, timeout=(3, 30)).post(URL, json={"x": np.int64(2)})
    assert loads(seen["body"]) == {"x": 2}
    assert seen["type"] == "application/json"
    assert sent_timeouts == [(3, 30)]


def test_redact_url_masks_credentials():
    url = "https://user:pw@host/p?middle_auth_token=abc&limit=3&X-Amz-Signature=s"
    redacted = redact_url(url)
    assert "abc" not in redacted and "pw" not in redacted and "=s" not in redacted
    assert "limit=3" in redacted and redacted.startswith("https://host/p?")


@responses.activate
def test_service_error_message_never_contains_query_token(http: HttpClient):
    responses.get(URL, status=403, json={"error": "forbidden"})
    with pytest.raises(ServiceError) as info:
        http.get(URL, params={"middle_auth_token": "sekrit"})
    assert "sekrit" not in str(info.value) and "sekrit" not in info.value.url


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)).strftime(
        "%a, %d %b %Y %H:%M:%S GMT"
    )
    assert 20 < parse_retry_after(future) <= 30


def test_retry_policy_validation_and_backoff_growth():
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    policy = RetryPolicy(backoff_factor=1, jitter=0, backoff_max=10)
    assert [policy.backoff(i) for i in range(5)] == [1, 2, 4, 8, 10]
    assert policy.delay(0, "2.5") == 2.5


def test_is_transient_classification():
    assert is_transient(requests.ConnectionError())
    assert is_transient(requests.ReadTimeout())
    assert not is_transient(ValueError("bad input"))
    err = ServiceError(status_code=404, method="GET", url=URL, server_message="nope")
    assert not is_transient(err)
    assert is_transient(ServiceError(status_code=503, method="GET", url=URL, server_message=""))


def test_dumps_handles_scientific_types():
    value = {
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "day": dt.date(2024, 1, 2),
        "n": np.int64(7),
        "f": np.float32(1.5),
        "arr": np.arange(3, dtype=np.uint64),
        "series": pd.Series([1, 2]),
        "ts": pd.Timestamp("2024-01-02T03:04:05Z"),
        "dec": decimal.Decimal("1.25"),
        "tags": {"a"},
        "big": np.uint64(2**64 - 1),
        "na": pd.NA,
    }
    assert loads(dumps(value)) == {
        "id": "12345678-1234-5678-1234-567812345678",
        "when": "2024-01-02T03:04:05+00:00",
        "day": "2024-01-02",
        "n": 7,
        "f": 1.5,
        "arr": [0, 1, 2],
        "series": [1, 2],
        "ts": "2024-01-02T03:04:05+00:00",
        "dec": 1.25,
        "tags": ["a"],
        "big": 2**64 - 1,
        "na": None,
    }


def test_dumps_names_the_unserialisable_field():
    records = [{"a": 1}, {"subject": {"weight": object()}}]
    with pytest.raises(TypeError, match=r"records\[1\]\.subject\.weight.*object"):
        dumps(records, what="records")


def test_decode_json_raises_requests_error_on_empty_body():
    response = requests.Response()
    response._content = b""
    response.request = requests.Request("GET", URL).prepare()
    with pytest.raises(requests.JSONDecodeError, match="GET"):
        decode_json(response)


def test_imap_bounded_keeps_order_and_bounds_concurrency():
    active = 0
    peak = 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.01 * (i % 3))
        with lock:
            active -= 1
        return i * i

    assert list(imap_bounded(work, range(20), max_workers=3)) == [i * i for i in range(20)]
    assert 1 < peak <= 3
    assert map_bounded(work, [2, 1], max_workers=1) == [4, 1]


def test_imap_bounded_propagates_first_error():
    def work(i: int) -> int:
        if i == 2:
            raise RuntimeError("partition 2 failed")
        return i

    with pytest.raises(RuntimeError, match="partition 2"):
        map_bounded(work, range(6), max_workers=2)


# ------------------------------------------------------------------ TLS failures and transport
@pytest.fixture
def plain_tcp_server() -> Iterator[int]:
    """A local server that answers every connection with plain HTTP, so a TLS handshake
    against it fails with a real `requests.exceptions.SSLError`."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    server.close()


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_tls_failure_raises_the_ssl_error_itself(plain_tcp_server: int, method: str) -> None:
    sleeps: list[float] = []
    http = HttpClient(retry=RetryPolicy(max_retries=2), sleep=sleeps.append, timeout=(2, 2))
    with pytest.raises(requests.exceptions.SSLError):
        http.request(method, f"https://127.0.0.1:{plain_tcp_server}/x", json={"a": 1})
    # The handshake may have reached the server: a POST is not resent, a GET is.
    assert len(sleeps) == (0 if method == "POST" else 2)


def test_transport_config_builds_sessions_and_clients() -> None:
    config = TransportConfig(timeout=(1, 2), pool_maxsize=3, pool_block=True, verify=False)
    http = config.http_client(base_headers={"X-Test": "1"})
    adapter = http.session.get_adapter("https://x.test")
    assert adapter._pool_maxsize == 3 and adapter._pool_block is True
    assert adapter.max_retries.total == 0
    assert http.session.verify is False
    assert http.timeout == (1, 2) and http.base_headers == {"X-Test": "1"}
    derived = config.with_overrides(max_retries=1, timeout=(5, 6))
    assert derived.retry.max_retries == 1 and derived.timeout == (5, 6)
    assert derived.pool_maxsize == 3 and config.retry.max_retries == RetryPolicy().max_retries
    assert config.with_overrides() is config


@pytest.mark.parametrize(
    ("field", "value"), [("pool_maxsize", 0), ("timeout", (1, -1)), ("timeout", 0)]
)
def test_transport_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TransportConfig(**{field: value})


def _custom_session() -> requests.Session:
    session = requests.Session()
    session.headers["X-Custom"] = "yes"
    return session


def test_transport_config_session_factory_is_used() -> None:
    session = TransportConfig(session_factory=_custom_session).new_session({"A": "b"})
    assert session.headers["X-Custom"] == "yes" and session.headers["A"] == "b"


# -- collection_paused (issue 15 item 1: CPU of bulk decoding) ---------------------------------


@pytest.fixture
def collector_on() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.enable()
    yield
    if not was_enabled:
        gc.disable()


def test_collection_paused_switches_the_collector_off_and_back_on(collector_on: None) -> None:
    with collection_paused():
        assert not gc.isenabled()
        with collection_paused():  # nested: still off
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # nothing left in the permanent generation


def test_collection_paused_restores_the_collector_after_an_error(collector_on: None) -> None:
    with pytest.raises(RuntimeError), collection_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_collection_paused_leaves_a_disabled_collector_disabled(collector_on: None) -> None:
    gc.disable()
    with collection_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_collection_paused_promotes_what_it_built_to_the_oldest_generation(
    collector_on: None,
) -> None:
    # The decoded result is long-lived: a young collection after the read does not walk it
    # (without the promotion it would be young, and that collection would move it to gen 1).
    with collection_paused():
        result = loads(dumps([{"a": [i]} for i in range(PROMOTE_AFTER)]))
    gc.collect(0)
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert id(result) in oldest and id(result[-1]) in oldest


def test_collection_paused_leaves_a_small_read_young(collector_on: None) -> None:
    # A program making many small reads keeps its young collections: nothing is promoted.
    gc.collect()
    with collection_paused():
        result = loads(dumps([[i] for i in range(500)]))
    assert gc.get_count()[0] >= 500  # still counted as young (a promotion resets the count)
    gc.collect(0)
    assert id(result) in {id(o) for o in gc.get_objects(generation=1)}


def test_collection_paused_keeps_a_process_freeze(collector_on: None) -> None:
    kept = [[1], [2]]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collection_paused():
            # A big read: without the check of the process's own freeze, the promotion on
            # resume (freeze + unfreeze) would release every frozen object, leaving ~0.
            read = loads(dumps([{"a": [i]} for i in range(PROMOTE_AFTER)]))
        # Other threads of this process may free a few frozen objects meanwhile (the count
        # fell by 43 in one CI run), so allow a little slack; an unfreeze would drop it to ~0.
        assert frozen > 10_000
        assert gc.get_freeze_count() > frozen - 5_000
        assert read
    finally:
        gc.unfreeze()
    assert kept


def test_collection_paused_overlapping_threads_resume_after_the_last(collector_on: None) -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with collection_paused():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with collection_paused():
            second_in.set()
            first_out.wait(5)
            seen["after the first ended"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"after the first ended": False}
    assert gc.isenabled()


# -- reading bodies (issue 15 item 1: CPU per record of bulk reads) ----------------------------


class _BodyServer:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 answering every request with ``body``; the
    first ``truncate`` answers announce the whole body but stop after 10 bytes and close."""

    def __init__(self, body: bytes, truncate: int = 0) -> None:
        self.body, self.truncate = body, truncate
        self.connections = 0
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.server.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/pages"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.connections += 1
            with conn, conn.makefile("rb") as reader:
                while self._answer(conn, reader):
                    pass

    def _answer(self, conn: socket.socket, reader: Any) -> bool:
        if not reader.readline():
            return False
        while reader.readline() not in (b"\r\n", b""):
            pass
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n\r\n".encode()
        if self.truncate:
            self.truncate -= 1
            conn.sendall(head + self.body[:10])
            return False
        conn.sendall(head + self.body)
        return True

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.server.close()


def test_a_body_is_read_in_one_piece_and_the_connection_reused() -> None:
    body = dumps([{"_id": f"{i:08d}", "blob": "x" * 300} for i in range(10_000)])  # ~3.4 MB
    server = _BodyServer(body)
    reads: list[int | None] = []
    original = urllib3.response.HTTPResponse.read

    def counting_read(self: Any, amt: int | None = None, *args: Any, **kwargs: Any) -> bytes:
        reads.append(amt)
        return original(self, amt, *args, **kwargs)

    try:
        http = HttpClient(timeout=(2, 10))
        with mock.patch.object(urllib3.response.HTTPResponse, "read", counting_read):
            first = http.request("GET", server.url)
        assert first.content == body and decode_json(first)[-1]["_id"] == "00009999"
        # requests' own unstreamed read takes 10 KB at a time: ~340 reads for this body.
        assert len(reads) <= 2
        second = http.request("GET", server.url)
        assert second.content == body
        assert server.connections == 1  # the first connection went back to the pool
        streamed = http.request("GET", server.url, stream=True)
        assert streamed.raw.read() == body  # stream=True still leaves the body to the caller
    finally:
        server.close()


def test_a_body_cut_short_is_read_again() -> None:
    body = dumps({"records": list(range(5_000))})
    server = _BodyServer(body, truncate=1)
    sleeps: list[float] = []
    try:
        http = HttpClient(retry=RetryPolicy(max_retries=2), sleep=sleeps.append, timeout=(2, 5))
        assert decode_json(http.request("GET", server.url)) == {"records": list(range(5_000))}
        assert len(sleeps) == 1 and server.connections == 2
        http.close()  # (the server answers one connection at a time)
        server.truncate = 1
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            HttpClient(retry=RetryPolicy(max_retries=0), timeout=(2, 5)).request("GET", server.url)
    finally:
        server.close()
