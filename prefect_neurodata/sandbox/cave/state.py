"""JSON state service of the CAVE stand-in (NeuroglancerJsonServer v1, reference §1.8, §6.1).

States are stored verbatim (the posted bytes, so ints-as-strings survive exactly) in the table
``cave_ngl_states`` under 16-digit ids. ``POST /nglstate/api/v1/post`` answers with a JSON string
URL ``"{global}/nglstate/api/v1/{id}"``; property documents live in a separate namespace.

Example:
    >>> import sqlalchemy as sa
    >>> store = StateStore(sa.create_engine("sqlite://"), sa.MetaData(), create=True)
    >>> sid = store.put(b'{"a": "1"}')
    >>> store.get(sid)
    b'{"a": "1"}'
"""

from __future__ import annotations

import secrets
import time
import zlib

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from .auth import User, current_user
from .errors import CaveHTTPError

STATE_SERVER_VERSION = "0.4.0"
_ID_LOW = 1_000_000_000_000_000
_ID_HIGH = 9_999_999_999_999_999


class StateStore:
    """Persistent store of neuroglancer states and segment-property documents.

    Args:
        engine: SQLAlchemy engine.
        metadata: Metadata to register the table on (the world creates it).
        create: Create the table now (for standalone use).
    """

    def __init__(self, engine: sa.Engine, metadata: sa.MetaData, create: bool = False) -> None:
        self.engine = engine
        self.table = sa.Table(
            "cave_ngl_states",
            metadata,
            sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("kind", sa.String(16), primary_key=True),
            sa.Column("data", sa.LargeBinary, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
        )
        if create:
            metadata.create_all(engine)

    def put(self, data: bytes, state_id: int | None = None, kind: str = "state") -> int:
        """Store ``data`` (overwriting ``state_id`` if given); returns the id."""
        sid = (
            int(state_id)
            if state_id is not None
            else secrets.randbelow(_ID_HIGH - _ID_LOW) + _ID_LOW
        )
        with self.engine.begin() as conn:
            conn.execute(
                self.table.delete().where(self.table.c.id == sid, self.table.c.kind == kind)
            )
            conn.execute(
                self.table.insert().values(id=sid, kind=kind, data=data, created=time.time())
            )
        return sid

    def get(self, state_id: int, kind: str = "state") -> bytes | None:
        """Stored bytes or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(self.table.c.data).where(
                    self.table.c.id == int(state_id), self.table.c.kind == kind
                )
            ).first()
        return None if row is None else bytes(row[0])


router = APIRouter()
_BASE = "/nglstate/api/v1"


def _parse_json(body: bytes) -> None:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CaveHTTPError(400, f"Request body is not valid JSON: {exc}") from exc


def _store(request: Request) -> StateStore:
    return request.app.state.world.states


async def _save(request: Request, state_id: int | None = None, kind: str = "state") -> JSONResponse:
    """Store the request body (a JSON document) and answer with its URL."""
    body = await request.body()
    _parse_json(body)
    sid = _store(request).put(body, state_id, kind=kind)
    return _url(request, sid, prop=kind == "property")


def _url(request: Request, sid: int, prop: bool = False) -> JSONResponse:
    base = request.app.state.world.global_url(request) + _BASE
    return JSONResponse(f"{base}/property/{sid}" if prop else f"{base}/{sid}")


def _require_admin(user: User) -> None:
    if not user.admin:
        raise CaveHTTPError(403, text="Requires superadmin privilege.")


@router.get(_BASE + "/version")
def state_version() -> str:
    """Server version (>= 0.4.0 enables the property endpoints in the client)."""
    return STATE_SERVER_VERSION


@router.post(_BASE + "/post")
async def upload_state(request: Request, user: User = Depends(current_user)) -> JSONResponse:
    """Store a state; answers with its URL as a JSON string."""
    return await _save(request)


@router.post(_BASE + "/post/{state_id}")
async def upload_state_with_id(
    state_id: int, request: Request, user: User = Depends(current_user)
) -> JSONResponse:
    """Store a state under a chosen id (superadmin only)."""
    _require_admin(user)
    return await _save(request, state_id)


@router.post(_BASE + "/property/post")
async def upload_properties(request: Request, user: User = Depends(current_user)) -> JSONResponse:
    """Store a segment-properties document."""
    return await _save(request, kind="property")


@router.post(_BASE + "/property/post/{state_id}")
async def upload_properties_with_id(
    state_id: int, request: Request, user: User = Depends(current_user)
) -> JSONResponse:
    """Store a segment-properties document under a chosen id (superadmin only)."""
    _require_admin(user)
    return await _save(request, state_id, kind="property")


def _fetch(request: Request, state_id: int, kind: str) -> bytes:
    data = _store(request).get(state_id, kind)
    if data is None:
        raise CaveHTTPError(404, f"No state found with id {state_id}")
    return data


@router.get(_BASE + "/property/{state_id}/info")
def get_properties(state_id: int, request: Request, user: User = Depends(current_user)) -> Response:
    """A segment-properties document."""
    return Response(_fetch(request, state_id, "property"), media_type="application/json")


@router.get(_BASE + "/property/raw/{state_id}")
def get_properties_raw(
    state_id: int, request: Request, user: User = Depends(current_user)
) -> Response:
    """A segment-properties document, zlib-compressed."""
    data = zlib.compress(_fetch(request, state_id, "property"))
    return Response(data, media_type="application/octet-stream")


@router.get(_BASE + "/raw/{state_id}")
def get_state_raw(state_id: int, request: Request, user: User = Depends(current_user)) -> Response:
    """A state, zlib-compressed."""
    return Response(
        zlib.compress(_fetch(request, state_id, "state")), media_type="application/octet-stream"
    )


@router.get(_BASE + "/{state_id}")
def get_state(state_id: int, request: Request, user: User = Depends(current_user)) -> Response:
    """A state exactly as posted."""
    return Response(_fetch(request, state_id, "state"), media_type="application/json")
