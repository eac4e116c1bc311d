"""Seeded fault injection for every sandbox service (one generic ASGI middleware).

Wrap any ASGI app (FastAPI, Starlette, ...) with :class:`FaultMiddleware` and it gains:

* ``GET /__sandbox__/health`` -> ``{"status": "ok", "service": "<name>", ...}``
* ``GET /__sandbox__/faults`` -> the current fault configuration (``{}`` when off)
* ``PUT /__sandbox__/faults`` with the same JSON -> replaces it (``{}`` turns faults off); an
  invalid document gets a 400 naming the field and value and leaves the old configuration active.
* ``GET /__sandbox__/stats`` -> counters (requests seen, faults per status, drops, and
  ``in_flight_peak``: the most requests under way at once) since the last configuration change.

Configuration (JSON, from env ``NEURODATA_SANDBOX_FAULTS_<SERVICE>`` at start-up or the PUT):

``{"rate": 0.2, "statuses": [429, 500, 502, 503, 504], "latency_ms": 30, "drop_rate": 0.02,
"lost_rate": 0.05, "seed": 7, "retry_after": 1}``

* ``rate``: probability that a request is answered with one of ``statuses`` (chosen uniformly)
  instead of reaching the app. The app never sees a faulted request, so a faulted write did not
  happen (a client may retry it safely).
* ``drop_rate``: probability that the server closes the connection without any response.
* ``lost_rate``: probability that a request reaches the app and is carried out in full, but the
  client gets a 504 "Endpoint request timed out" instead of the app's answer: the write happened
  and its answer was lost, as when API Gateway gives up on a Lambda that goes on to finish. This
  is the failure that duplicates writes retried blindly; a client must reconcile, not resend.
* ``latency_ms``: added before the answer of every non-admin request (faulted ones too). The
  wait does not hold the server: delayed requests wait side by side, so N concurrent requests
  take about one latency, not N. ``{"latency_ms": 150}`` models the real services (API Gateway +
  Lambda, or a load balancer: ~100-200 ms before the first byte, and a server side that scales
  out), the profile ``make bench`` runs at besides 0 and 30 ms.
* ``seed``: seeds the RNG, so one sequence of requests gets the same faults on every run.
* ``retry_after``: seconds put in the ``Retry-After`` header of 429 (and 503) answers.

Routes under ``/__sandbox__/`` are never faulted nor delayed.

Example:
    >>> from starlette.applications import Starlette
    >>> app = FaultMiddleware(Starlette(), service="docdb", config={"rate": 0.1, "seed": 1})
    >>> app.config.rate
    0.1
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
ErrorBody = Callable[[int], tuple[bytes, str]]

ADMIN_PREFIX = "/__sandbox__/"
ENV_PREFIX = "NEURODATA_SANDBOX_FAULTS_"
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)

# API Gateway's default gateway-response bodies for these statuses (a Lambda error surfaces as a
# 502 "Internal server error"; an integration timeout as 504 "Endpoint request timed out").
GATEWAY_MESSAGES = {
    429: "Too Many Requests",
    500: "Internal server error",
    502: "Internal server error",
    503: "Service Unavailable",
    504: "Endpoint request timed out",
}

_KNOWN_KEYS = {"rate", "statuses", "latency_ms", "drop_rate", "lost_rate", "seed", "retry_after"}
LOST_ANSWER_STATUS = 504


class FaultConfigError(ValueError):
    """A fault configuration document is invalid (the message names the field and value)."""


@dataclass(frozen=True)
class FaultConfig:
    """Validated fault settings of one service. The default instance injects nothing."""

    rate: float = 0.0
    statuses: tuple[int, ...] = TRANSIENT_STATUSES
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    lost_rate: float = 0.0
    seed: int | None = None
    retry_after: int = 1
    _given: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def active(self) -> bool:
        """Whether this configuration changes any request at all."""
        return self.rate > 0 or self.drop_rate > 0 or self.lost_rate > 0 or self.latency_ms > 0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> FaultConfig:
        """Validate a JSON-like mapping; ``None`` or ``{}`` gives the inactive configuration.

        Raises:
            FaultConfigError: unknown key or out-of-range value (message names both).
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise FaultConfigError(f"fault config must be a JSON object, got {data!r}")
        unknown = sorted(set(data) - _KNOWN_KEYS)
        if unknown:
            raise FaultConfigError(
                f"unknown fault config key(s) {unknown}; allowed: {sorted(_KNOWN_KEYS)}"
            )
        kwargs: dict[str, Any] = {}
        for key in ("rate", "drop_rate", "lost_rate"):
            if key in data:
                kwargs[key] = _probability(key, data[key])
        if "latency_ms" in data:
            value = data["latency_ms"]
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise FaultConfigError(f"latency_ms must be a number >= 0, got {value!r}")
            kwargs["latency_ms"] = float(value)
        if "statuses" in data:
            statuses = data["statuses"]
            if (
                not isinstance(statuses, list | tuple)
                or not statuses
                or any(isinstance(s, bool) or s not in TRANSIENT_STATUSES for s in statuses)
            ):
                raise FaultConfigError(
                    f"statuses must be a non-empty list drawn from {list(TRANSIENT_STATUSES)},"
                    f" got {statuses!r}"
                )
            kwargs["statuses"] = tuple(int(s) for s in statuses)
        if "seed" in data:
            seed = data["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise FaultConfigError(f"seed must be an integer or null, got {seed!r}")
            kwargs["seed"] = seed
        if "retry_after" in data:
            value = data["retry_after"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FaultConfigError(f"retry_after must be an integer >= 0, got {value!r}")
            kwargs["retry_after"] = value
        return cls(**kwargs, _given=tuple(k for k in data if k in _KNOWN_KEYS))

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> FaultConfig:
        """Read ``NEURODATA_SANDBOX_FAULTS_<SERVICE>`` (unset or empty: no faults)."""
        env = os.environ if environ is None else environ
        name = ENV_PREFIX + service.upper()
        raw = env.get(name, "").strip()
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FaultConfigError(f"{name} is not valid JSON: {exc}") from None
        try:
            return cls.from_mapping(data)
        except FaultConfigError as exc:
            raise FaultConfigError(f"{name}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON; ``{}`` when nothing was configured."""
        if not self._given:
            return {}
        data = asdict(self)
        data.pop("_given")
        data["statuses"] = list(self.statuses)
        return data


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _probability(key: str, value: Any) -> float:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise FaultConfigError(f"{key} must be a number between 0 and 1, got {value!r}")
    return float(value)


def gateway_error_body(status: int) -> tuple[bytes, str]:
    """API Gateway style body ``{"message": ...}`` for an injected status."""
    message = GATEWAY_MESSAGES.get(status, "Internal server error")
    return json.dumps({"message": message}).encode(), "application/json"


class FaultMiddleware:
    """ASGI middleware injecting seeded faults in front of ``app`` and serving the admin routes.

    Mount it OUTSIDE the framework's own middleware (wrap the finished app) so that a dropped
    connection can reach the server's transport.

    Args:
        app: the ASGI application to protect.
        service: service name; selects env ``NEURODATA_SANDBOX_FAULTS_<SERVICE>``.
        config: explicit configuration (mapping or :class:`FaultConfig`); when ``None`` the
            environment variable is read.
        error_body: builds ``(body, content_type)`` for an injected status; defaults to API
            Gateway's ``{"message": ...}`` JSON (the CAVE stand-ins may pass their own).
        health: optional callable returning extra fields for ``/__sandbox__/health``; if it
            raises, health answers 503 with the error.

    Example:
        >>> from starlette.applications import Starlette
        >>> wrapped = FaultMiddleware(Starlette(), service="cave", config={})
        >>> wrapped.config.active
        False
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        config: Mapping[str, Any] | FaultConfig | None = None,
        error_body: ErrorBody | None = None,
        health: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self._error_body = error_body or gateway_error_body
        self._health = health
        self._lock = threading.Lock()
        if config is None:
            cfg = FaultConfig.from_env(service)
        elif isinstance(config, FaultConfig):
            cfg = config
        else:
            cfg = FaultConfig.from_mapping(config)
        self._apply(cfg)

    # -- configuration -------------------------------------------------------------------------
    @property
    def config(self) -> FaultConfig:
        """The active configuration."""
        return self._config

    def configure(self, config: Mapping[str, Any] | FaultConfig | None) -> FaultConfig:
        """Replace the configuration (resets the RNG and the counters)."""
        cfg = config if isinstance(config, FaultConfig) else FaultConfig.from_mapping(config)
        self._apply(cfg)
        return cfg

    def _apply(self, cfg: FaultConfig) -> None:
        with self._lock:
            self._config = cfg
            self._rng = random.Random(cfg.seed)
            self._stats: dict[str, Any] = {"requests": 0, "faults": {}, "drops": 0, "lost": 0}
            self._in_flight = 0
            self._in_flight_peak = 0

    def stats(self) -> dict[str, Any]:
        """Counters since the last configuration change."""
        with self._lock:
            return {
                "requests": self._stats["requests"],
                "faults": {str(k): v for k, v in sorted(self._stats["faults"].items())},
                "drops": self._stats["drops"],
                "lost": self._stats["lost"],
                "in_flight_peak": self._in_flight_peak,
            }

    def _decide(self) -> tuple[str, int | None]:
        """Draw the fate of one request: ("pass"|"drop"|"fault"|"lost", status)."""
        cfg = self._config
        with self._lock:
            self._stats["requests"] += 1
            if cfg.rate <= 0 and cfg.drop_rate <= 0 and cfg.lost_rate <= 0:
                return "pass", None
            # The same draws per request whatever the outcome, so the sequence for a given seed
            # does not depend on which branch earlier requests took. The lost-answer draw is only
            # made when that fault is on, so configurations without it keep their sequences.
            drop_draw = self._rng.random()
            fault_draw = self._rng.random()
            pick = self._rng.randrange(len(cfg.statuses))
            lost_draw = self._rng.random() if cfg.lost_rate > 0 else 1.0
            if drop_draw < cfg.drop_rate:
                self._stats["drops"] += 1
                return "drop", None
            if fault_draw < cfg.rate:
                status = cfg.statuses[pick]
                self._stats["faults"][status] = self._stats["faults"].get(status, 0) + 1
                return "fault", status
            if lost_draw < cfg.lost_rate:
                self._stats["lost"] += 1
                return "lost", LOST_ANSWER_STATUS
            return "pass", None

    # -- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith(ADMIN_PREFIX):
            await self._admin(scope, receive, send, path)
            return
        with self._lock:
            self._in_flight += 1
            self._in_flight_peak = max(self._in_flight_peak, self._in_flight)
        try:
            await self._serve(scope, receive, send)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _serve(self, scope: dict, receive: Callable, send: Callable) -> None:
        cfg = self._config
        if cfg.latency_ms > 0:
            await asyncio.sleep(cfg.latency_ms / 1000.0)
        fate, status = self._decide()
        if fate == "drop":
            _drop_connection(send)
            return
        if fate == "lost":
            await self.app(scope, receive, _discard)
        if status is not None:
            body, content_type = self._error_body(status)
            headers = [(b"content-type", content_type.encode()), (b"x-sandbox-fault", b"1")]
            if status in (429, 503):
                headers.append((b"retry-after", str(cfg.retry_after).encode()))
            await _send_response(send, status, body, headers)
            return
        await self.app(scope, receive, send)

    async def _admin(self, scope: dict, receive: Callable, send: Callable, path: str) -> None:
        method = scope["method"]
        if path == ADMIN_PREFIX + "health":
            if method != "GET":
                await _send_json(send, 405, {"message": "Method Not Allowed"})
                return
            payload: dict[str, Any] = {"status": "ok", "service": self.service}
            if self._health is not None:
                try:
                    # In a worker thread: a health callback may block (e.g. a database ping).
                    loop = asyncio.get_running_loop()
                    payload.update(await loop.run_in_executor(None, self._health))
                except Exception as exc:  # health must report, not crash
                    await _send_json(
                        send, 503, {"status": "error", "service": self.service, "error": str(exc)}
                    )
                    return
            await _send_json(send, 200, payload)
            return
        if path == ADMIN_PREFIX + "faults":
            if method == "GET":
                await _send_json(send, 200, self._config.to_dict())
                return
            if method == "PUT":
                raw = await _read_body(receive)
                try:
                    data = json.loads(raw or b"{}")
                    cfg = self.configure(data)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    await _send_json(send, 400, {"error": "BadRequest", "detail": str(exc)})
                    return
                except FaultConfigError as exc:
                    await _send_json(send, 400, {"error": "BadRequest", "detail": str(exc)})
                    return
                await _send_json(send, 200, cfg.to_dict())
                return
            await _send_json(send, 405, {"message": "Method Not Allowed"})
            return
        if path == ADMIN_PREFIX + "stats":
            if method != "GET":
                await _send_json(send, 405, {"message": "Method Not Allowed"})
                return
            await _send_json(send, 200, self.stats())
            return
        # Other /__sandbox__/ routes belong to the wrapped app (never faulted either).
        await self.app(scope, receive, send)


async def _discard(message: dict) -> None:
    """An ASGI ``send`` that throws the app's answer away (a lost answer)."""


def _drop_connection(send: Callable) -> None:
    """Close the client's socket without writing a response.

    uvicorn hands the app the bound ``send`` of its per-request cycle, which owns the transport;
    this is why the middleware must wrap the app from the outside.
    """
    cycle: Any = getattr(send, "__self__", None)  # uvicorn's RequestResponseCycle
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError(
            "cannot drop the connection: FaultMiddleware must be the outermost ASGI app under"
            " uvicorn"
        )
    # Keep uvicorn from answering "returned without starting response" with a 500.
    cycle.disconnected = True
    transport.close()


async def _read_body(receive: Callable) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_response(
    send: Callable, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Callable, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await _send_response(send, status, body, [(b"content-type", b"application/json")])
