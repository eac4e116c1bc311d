"""Requests and permissions of the CAVE stand-in's annotation and materialization routes.

The world behind a request, JSON bodies and answers, table metadata, the table owner notice,
and the table-level permission rules (PUBLIC / GROUP / PRIVATE on top of the service-level
view/edit check of part A's auth emulation). The annotation routes
(`prefect_neurodata.sandbox.cave.annotation`) and the materialization routes share them.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from prefect_neurodata.sandbox.cave import store
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError, parse_json_body


def json_response(
    value: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON response encoded with orjson (non-string keys allowed)."""
    return Response(
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON (400 naming the problem otherwise).

    Parsed in a worker thread: a 10,000-annotation body takes tens of milliseconds to decode,
    time in which the event loop could not answer any other request.
    """
    return await run_in_threadpool(parse_json_body, await request.body())


def world_of(request: Request) -> Any:
    """The request's :class:`CaveWorld`, with this module's tables created."""
    world = request.app.state.world
    store.ensure_schema(world.engine)
    return world


def check_aligned_volume(world: Any, aligned_volume: str) -> None:
    """404 unless ``aligned_volume`` is the world's aligned volume."""
    if aligned_volume != world.config.aligned_volume:
        raise CaveHTTPError(404, f"aligned volume {aligned_volume} not found")


def get_meta(conn: sa.Connection, world: Any, table_name: str) -> dict[str, Any]:
    """Metadata row of a live (not deleted) table, else 404."""
    meta = store.table_meta_row(conn, world.config.aligned_volume, table_name)
    if meta is None:
        raise CaveHTTPError(404, f"table {table_name} not found in {world.config.aligned_volume}")
    return meta


def notice_headers(meta: dict[str, Any]) -> dict[str, str]:
    """``Warning: Table Owner Notice: ...`` when the table has a notice."""
    if meta.get("notice_text"):
        return {"Warning": f"Table Owner Notice: {meta['notice_text']}"}
    return {}


def owner_check(user: Any, meta: dict[str, Any], action: str) -> None:
    """401 unless the caller owns the table (or is a superadmin)."""
    if _is_admin(user) or str(meta["user_id"]) == str(user_id_of(user)):
        return
    raise CaveHTTPError(
        401, f"Unauthorized: only the owner of table {meta['table_name']} can {action}"
    )


def _permitted(world: Any, user: Any, meta: dict[str, Any], permission: str) -> bool:
    """The table-level rule (PUBLIC / GROUP / PRIVATE) for one of its permission columns."""
    perm = meta[permission]
    if perm == "PUBLIC" or _is_admin(user) or str(meta["user_id"]) == str(user_id_of(user)):
        return True
    return perm == "GROUP" and _shares_group(world, user, meta["user_id"])


def _allowed_who(meta: dict[str, Any], permission: str) -> str:
    return "members of the owner's groups" if meta[permission] == "GROUP" else "owner"


def read_check(world: Any, user: Any, meta: dict[str, Any]) -> None:
    """Table-level read permission (PUBLIC / GROUP / PRIVATE); 401 when refused."""
    if not _permitted(world, user, meta, "read_permission"):
        raise CaveHTTPError(
            401,
            f"Unauthorized: The table {meta['table_name']} can only be read by "
            + _allowed_who(meta, "read_permission"),
        )


def write_check(world: Any, user: Any, meta: dict[str, Any]) -> None:
    """Table-level write permission (PUBLIC / GROUP / PRIVATE); 401 when refused."""
    if not _permitted(world, user, meta, "write_permission"):
        raise CaveHTTPError(
            401,
            "Unauthorized: The table can only be written to by "
            + _allowed_who(meta, "write_permission"),
        )


def readable_meta(world: Any, user: Any, table_name: str) -> dict[str, Any]:
    """Metadata of a live table the caller may read (404 / 401 otherwise)."""
    with world.engine.connect() as conn:
        meta = get_meta(conn, world, table_name)
    read_check(world, user, meta)
    return meta


def writable_meta(world: Any, user: Any, table_name: str) -> dict[str, Any]:
    """Metadata of a live table the caller may write (404 / 401 otherwise)."""
    with world.engine.connect() as conn:
        meta = get_meta(conn, world, table_name)
    write_check(world, user, meta)
    return meta


# User objects come from part A's auth dependencies; read them defensively so that a dict or an
# object both work.
def _attr(user: Any, name: str, default: Any = None) -> Any:
    if isinstance(user, dict):
        return user.get(name, default)
    return getattr(user, name, default)


def user_id_of(user: Any) -> Any:
    """The caller's user id (``None`` when the auth emulation gave no user)."""
    return _attr(user, "id")


def _is_admin(user: Any) -> bool:
    return bool(_attr(user, "admin", False))


def _shares_group(world: Any, user: Any, owner_id: Any) -> bool:
    mine = set(_attr(user, "groups", []) or [])
    owner = _owner_groups(world, owner_id)
    return bool(mine & owner)


def _owner_groups(world: Any, owner_id: Any) -> set[str]:
    registry = world.auth
    for name in ("user_by_id", "get_user", "user"):
        fn = getattr(registry, name, None)
        if callable(fn):
            try:
                owner = fn(int(owner_id))
            except (KeyError, ValueError, TypeError):
                return set()
            return set(_attr(owner, "groups", []) or []) if owner is not None else set()
    return set()


def check_request(request: Request, level: str) -> Any:
    """Authenticate the caller and check ``level`` on the request's auth dataset (part A's
    middle_auth emulation: 400/401/302/403 with the reference's bodies)."""
    from prefect_neurodata.sandbox.cave import auth as auth_mod

    user = auth_mod.authenticate(request)
    auth_mod.check_permission(request, user, auth_mod.resolve_dataset(request), level)
    return user
