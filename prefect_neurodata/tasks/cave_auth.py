"""CAVE access checks run before any write: datastack, token permissions, table permissions.

Example:
    ```python
    from prefect_neurodata.tasks.cave_auth import check_cave_access

    access = check_cave_access("neurodata-cave", "minnie65_public", "edit")
    ```
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from prefect import task

from prefect_neurodata.clients.http import ServiceError
from prefect_neurodata.tasks.cave_common import (
    LIVE_OPTIONS,
    Cave,
    CaveInputError,
    CavePermissionError,
    cave_client,
)


# ------------------------------------------------------------------------------ access checks
@task(name="check-cave-access", tags=["cave"], **LIVE_OPTIONS)
def check_cave_access(cave: Cave, datastack: str, permission: str = "view") -> dict[str, Any]:
    """Check that the datastack exists and the block's token holds ``permission`` on it.

    The task form of `cave_access` (same arguments, result and errors).
    """
    return cave_access(cave, datastack, permission)


def cave_access(cave: Cave, datastack: str, permission: str = "view") -> dict[str, Any]:
    """Check that the datastack exists and the block's token holds ``permission`` on it.

    A plain function, so a task that checks access among other set-up reads (the snapshot
    flow's `plan_snapshot`) pays no task run of its own.

    Args:
        cave: CAVE block or its name.
        datastack: Datastack to check.
        permission: ``"view"`` (reads) or ``"edit"`` (annotation writes).

    Returns:
        ``{"user_id", "user", "admin", "dataset", "permissions"}`` (no token).

    Raises:
        CaveInputError: The info service does not know the datastack.
        CavePermissionError: The token is invalid or lacks the permission (or the terms of
            service of the dataset are not accepted).
    """
    if permission not in ("view", "edit"):
        raise ValueError(f"permission must be 'view' or 'edit', got {permission!r}")
    try:
        with _token_refusal(cave, "was refused by the info service"):
            client = cave_client(cave, datastack)
    except ValueError as exc:
        raise CaveInputError(f"datastack {datastack!r}: {exc}") from None
    try:
        dataset = client.auth.get_table_dataset(datastack)
    except ServiceError as exc:
        if exc.status_code != 404:
            raise
        dataset = datastack
    with _token_refusal(cave, "is invalid or expired"):
        me = client.auth.get_user_cache()
    granted = sorted(me.get("permissions_v2", {}).get(dataset, []))
    admin = bool(me.get("admin"))
    if not admin and permission not in granted:
        tos = [t for t in me.get("missing_tos", []) if t.get("dataset_name") == dataset]
        hint = f"; accept the terms of service {tos[0].get('tos_name')!r} first" if tos else ""
        raise CavePermissionError(
            f"user {me.get('name')!r} (id {me.get('id')}) lacks the {permission!r} permission "
            f"on dataset {dataset!r} of datastack {datastack!r} (has: {granted or 'none'})"
            f"{hint}"
        )
    return {
        "user_id": me.get("id"),
        "user": me.get("name"),
        "admin": admin,
        "dataset": dataset,
        "permissions": granted,
    }


def _name(cave: Cave) -> str:
    return cave if isinstance(cave, str) else "<inline block>"


@contextlib.contextmanager
def _token_refusal(cave: Cave, refused: str) -> Iterator[None]:
    """Turn CAVE's 401/403 into a `CavePermissionError` naming the block (other errors pass)."""
    try:
        yield
    except ServiceError as exc:
        if exc.status_code not in (401, 403):
            raise
        raise CavePermissionError(
            f"the CAVE token of block {_name(cave)!r} {refused} "
            f"({exc.status_code}: {exc.server_message})"
        ) from None


def table_permission_problem(
    meta: Mapping[str, Any], access: Mapping[str, Any], action: str
) -> str | None:
    """Why the caller may not ``action`` (``read``/``write``) a table, or None.

    PRIVATE tables are the owner's only; GROUP tables are left to the server (group
    membership is not visible to clients).
    """
    if access.get("admin"):
        return None
    level = meta.get(f"{action}_permission") or ("PUBLIC" if action == "read" else "PRIVATE")
    owner = meta.get("user_id")
    if level == "PRIVATE" and str(owner) != str(access.get("user_id")):
        return (
            f"table {meta.get('table_name')!r} has {action}_permission PRIVATE (owner: user id "
            f"{owner}); user {access.get('user')!r} (id {access.get('user_id')}) cannot "
            f"{action} it"
        )
    return None
