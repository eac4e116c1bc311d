"""ASGI app of the CAVE stand-in: every CAVE service in one FastAPI app.

Factory for uvicorn: ``python -m uvicorn --factory prefect_neurodata.sandbox.cave.app:create_app``
(one port serving both the global and the local prefixes), or ``python -m
prefect_neurodata.sandbox.cave --global-port A --local-port B`` (two ports, one process, one
shared world; the datastack record then points local services at port B).

Routers: global services (auth, info, schema, state) and the local chunkedgraph and L2 cache
from this package's part A; annotation and materialization (``annotation.router``,
``materialization.router``) from part B when present. The app is wrapped in the sandbox's
``prefect_neurodata.sandbox.faults.FaultMiddleware`` (config
``NEURODATA_SANDBOX_FAULTS_CAVE``, runtime ``PUT /__sandbox__/faults``), which also serves
``GET /__sandbox__/health``.

Admin routes (never faulted):

* ``POST /__sandbox__/seed`` with ``{"synapses": 1000000, "seed": 1, "neurons": 150,
  "neuron_length": 400, "merges": 20, "splits": 10}`` (all optional; other keys are handed to
  part B's ``seed.seed_tables``) builds the chunkedgraph world with its edit history, creates
  the annotation tables (``seed.seed_tables(world, synapses=N, rng=rng, ...)``) and a first
  materialization version. Returns a summary.
* ``GET /__sandbox__/world``: names, sizes and timestamps of the seeded world.

Error shapes: :class:`~.errors.CaveHTTPError` as given; request validation errors become 400
``{"message": ...}`` naming the field; unknown paths 404 and wrong methods 405 in flask-restx's
``{"message": ...}`` shape; unhandled errors 500 ``{"code": 500, "message", "traceback"}``. Under
``/segmentation`` (PyChunkedGraph) errors use ``{"timestamp", "duration", "code", "message",
"traceback"}``.

Example:
    >>> app = create_app(CaveConfig(db_url="sqlite://"))
    >>> app.state.world.config.datastack
    'minnie_sandbox'
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import time
import traceback
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import SEED_WORLD_LIMITS, auth, chunkedgraph_api, info, l2cache, schemas, state
from .chunkedgraph_types import WorldParams
from .errors import CaveHTTPError, PCGError
from .world import CaveConfig, CaveWorld

_PCG_PREFIXES = ("/segmentation", "/meshing")
_NOT_FOUND = (
    "The requested URL was not found on the server. If you entered the URL manually please check "
    "your spelling and try again."
)
_SEED_KEYS = {
    "synapses": int,
    "seed": int,
    "neurons": int,
    "neuron_length": int,
    "merges": int,
    "splits": int,
    "base_timestamp": float,
}


def _is_pcg(request: Request) -> bool:
    return request.url.path.startswith(_PCG_PREFIXES)


def _pcg_body(request: Request, status: int, message: str, tb: list[str] | None = None) -> dict:
    started = getattr(request.state, "started", time.time())
    return {
        "timestamp": str(dt.datetime.now(dt.timezone.utc)),
        "duration": time.time() - started,
        "code": status,
        "message": message,
        "traceback": tb or [],
    }


def _error_response(request: Request, status: int, message: str) -> Response:
    if _is_pcg(request):
        return JSONResponse(_pcg_body(request, status, message), status_code=status)
    return JSONResponse({"message": message}, status_code=status)


async def _cave_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CaveHTTPError)
    if isinstance(exc, PCGError) or (exc.body == {"message": exc.message} and _is_pcg(request)):
        return JSONResponse(
            _pcg_body(request, exc.status_code, exc.message),
            status_code=exc.status_code,
            headers=exc.headers,
        )
    if exc.text is not None:
        return Response(
            exc.text,
            status_code=exc.status_code,
            headers=exc.headers,
            media_type="text/html; charset=utf-8",
        )
    return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        value = err.get("input")
        parts.append(f"{loc}: {err.get('msg')} (got {value!r})")
    return _error_response(request, 400, "; ".join(parts) or "Bad request")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = _NOT_FOUND
    elif exc.status_code == 405:
        message = "The method is not allowed for the requested URL."
    else:
        message = str(exc.detail)
    return _error_response(request, exc.status_code, message)


async def _unhandled(request: Request, exc: Exception) -> Response:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    if _is_pcg(request):
        return JSONResponse(_pcg_body(request, 500, str(exc), tb), status_code=500)
    return JSONResponse({"code": 500, "message": str(exc), "traceback": tb}, status_code=500)


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.{name}":
            return None
        raise


def _fault_error_body(status: int) -> tuple[bytes, str]:
    messages = {
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Temporarily Unavailable",
        504: "Gateway Timeout",
    }
    body = {"code": status, "message": messages.get(status, "Injected fault")}
    return orjson.dumps(body), "application/json"


def build_fastapi(world: CaveWorld) -> FastAPI:
    """The FastAPI app over ``world`` (without the fault middleware)."""
    app = FastAPI(
        title="neurodata CAVE sandbox",
        redirect_slashes=False,
        docs_url="/__sandbox__/docs",
        redoc_url=None,
        openapi_url="/__sandbox__/openapi.json",
    )
    app.state.world = world

    @app.middleware("http")
    async def _timing(request: Request, call_next: Any) -> Response:
        request.state.started = time.time()
        return await call_next(request)

    app.add_exception_handler(CaveHTTPError, _cave_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)

    for module in (auth, info, schemas, state, chunkedgraph_api, l2cache):
        app.include_router(module.router)
    for name in ("annotation", "materialization"):
        module = _optional_module(name)
        if module is not None and hasattr(module, "router"):
            app.include_router(module.router)

    @app.post("/__sandbox__/seed")
    def seed(request_body: dict[str, Any] | None = None) -> JSONResponse:
        return JSONResponse(seed_world(world, request_body or {}))

    @app.get("/__sandbox__/world")
    def world_summary() -> JSONResponse:
        return JSONResponse(describe_world(world))

    return app


def describe_world(world: CaveWorld) -> dict[str, Any]:
    """Names, sizes and timestamps of the world (for health and ``/__sandbox__/world``)."""
    cfg = world.config
    out: dict[str, Any] = {
        "datastack": cfg.datastack,
        "aligned_volume": cfg.aligned_volume,
        "pcg_table": cfg.pcg_table,
        "voxel_resolution": list(cfg.voxel_resolution),
        "seeded": world.chunkedgraph is not None,
        "global_url": cfg.global_url,
        "local_url": cfg.local_url,
    }
    cg = world.chunkedgraph
    if cg is not None:
        out.update(
            supervoxels=int(cg.n_supervoxels),
            roots=len(cg.roots),
            operations=len(cg.operations),
            n_layers=cg.n_layers,
            base_timestamp=cg.base_timestamp,
            latest_timestamp=cg.latest_timestamp,
        )
    return out


def seed_world(world: CaveWorld, body: dict[str, Any]) -> dict[str, Any]:
    """Build the chunkedgraph world and hand over to part B's table seeding (see module doc).

    Args:
        world: The world.
        body: Seed request: ``synapses``, ``seed``, ``neurons``, ``neuron_length``, ``merges``,
            ``splits``, ``base_timestamp`` (POSIX; default now - 30 days); any other key is passed
            to ``seed.seed_tables`` as a keyword if it accepts it, else 400 naming the key.

    Returns:
        A summary of what was built.
    """
    if not isinstance(body, dict):
        raise CaveHTTPError(400, "seed body must be a JSON object")
    values: dict[str, Any] = {}
    for key, kind in _SEED_KEYS.items():
        if key in body and body[key] is not None:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CaveHTTPError(400, f"seed field {key!r} must be a number, got {value!r}")
            if kind is int and (int(value) != value or value < 0):
                raise CaveHTTPError(400, f"seed field {key!r} must be an int >= 0, got {value!r}")
            values[key] = kind(value)
    for key, (low, high) in SEED_WORLD_LIMITS.items():
        if key in values and not low <= values[key] <= high:
            raise CaveHTTPError(
                400, f"seed field {key!r} must be in [{low}, {high}], got {values[key]!r}"
            )
    extra = {k: v for k, v in body.items() if k not in _SEED_KEYS}
    seed_mod = _optional_module("seed")
    seed_fn = getattr(seed_mod, "seed_tables", None) if seed_mod is not None else None
    if extra:
        accepted = set()
        if seed_fn is not None:
            sig = inspect.signature(seed_fn)
            if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
                accepted = set(extra)
            else:
                accepted = set(sig.parameters)
        unknown = sorted(set(extra) - accepted)
        if unknown:
            raise CaveHTTPError(400, f"unknown seed field {unknown[0]!r}")
    seed_value = values.get("seed", 1)
    defaults = WorldParams()
    params = WorldParams(
        seed=seed_value,
        n_neurons=values.get("neurons", defaults.n_neurons),
        neuron_length=values.get("neuron_length", defaults.neuron_length),
        n_merges=values.get("merges", defaults.n_merges),
        n_splits=values.get("splits", defaults.n_splits),
        base_timestamp=values.get("base_timestamp", float(int(time.time() - 30 * 86400))),
        history_span_s=20 * 86400.0,
    )
    started = time.time()
    summary: dict[str, Any] = {}
    with world.lock:
        cg = world.build_chunkedgraph(params)
        summary["chunkedgraph"] = {
            "supervoxels": int(cg.n_supervoxels),
            "roots": len(cg.roots),
            "operations": len(cg.operations),
            "n_layers": cg.n_layers,
            "base_timestamp": cg.base_timestamp,
            "latest_timestamp": cg.latest_timestamp,
        }
        world.seed_params = {**body, "world": params.to_dict()}
        world.set_meta("seed_request", world.seed_params)
        if seed_fn is not None:
            rng = np.random.default_rng(seed_value)
            result = seed_fn(world, synapses=values.get("synapses", 1_000_000), rng=rng, **extra)
            summary["tables"] = _jsonable(result)
            created_versions = isinstance(result, dict) and "versions" in result
            mat = _optional_module("materialization")
            if not created_versions and mat is not None and hasattr(mat, "materialize"):
                summary["version"] = mat.materialize(world)
    summary["seconds"] = round(time.time() - started, 3)
    return summary


def _jsonable(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str))


def create_app(config: CaveConfig | None = None, *, faults: bool = True) -> Any:
    """Build the CAVE stand-in (uvicorn ``--factory`` entry point).

    Args:
        config: Configuration; default :meth:`CaveConfig.from_env`.
        faults: Wrap in the fault-injection middleware (config from ``config.faults`` /
            ``NEURODATA_SANDBOX_FAULTS_CAVE``).

    Returns:
        The ASGI app; ``app.state.world`` is the :class:`CaveWorld`.
    """
    config = config or CaveConfig.from_env()
    world = CaveWorld(config)
    app = build_fastapi(world)
    if not faults:
        return app
    from ..faults import FaultMiddleware

    fault_config = orjson.loads(config.faults) if config.faults else None
    wrapped = FaultMiddleware(
        app,
        service="cave",
        config=fault_config,
        error_body=_fault_error_body,
        health=lambda: describe_world(world),
    )
    wrapped.state = app.state  # type: ignore[attr-defined]  # so callers reach the world
    wrapped.fastapi = app  # type: ignore[attr-defined]
    return wrapped
