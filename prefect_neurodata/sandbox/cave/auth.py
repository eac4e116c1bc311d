"""Auth emulation of the CAVE stand-in (middle_auth + middle_auth_client, reference §1.1, §2.2).

Users (tokens from :class:`~.world.CaveConfig`):

=====  ==========  ===========================================================
id     name        rights on the dataset ``minnie_sandbox``
=====  ==========  ===========================================================
1      admin       superadmin (view, edit, admin everywhere)
2      user        view + edit
3      viewer      view only (refused with 403 on writes)
4      noperm      nothing (403 ``missing_permission``)
5      tos         view + edit once the terms of service are accepted (403 ``missing_tos``)
=====  ==========  ===========================================================

Route dependencies for FastAPI (part B uses these):

* ``user: User = Depends(require("view"))`` / ``require("edit")`` / ``require("admin")``: the
  dataset is resolved from the path parameter ``datastack_name``, ``aligned_volume_name`` or
  ``table_id`` (first present), else the default dataset. ``require("admin")`` means superadmin.
* ``user: User = Depends(current_user)``: any valid token.

Token lookup: ``Authorization: Bearer <t>`` > ``?middle_auth_token=`` > ``middle_auth_token``
cookie. Errors are raised as :class:`~.errors.CaveHTTPError` with the exact bodies and
``WWW-Authenticate`` headers of the reference.

Example:
    >>> from .world import CaveConfig
    >>> reg = AuthRegistry(CaveConfig())
    >>> reg.user_for_token(CaveConfig().viewer_token).has("minnie_sandbox", "edit")
    False
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from .errors import CaveHTTPError, parse_int_list

if TYPE_CHECKING:
    from .world import CaveConfig

LEVELS = ("view", "edit", "admin")
_PERM_INT = {"view": 1, "edit": 2, "admin": 2}
_DATASET_PARAMS = (
    "datastack_name",
    "aligned_volume_name",
    "table_id",
    "datastack",
    "aligned_volume",
)
_CREATED = "2026-01-01T00:00:00"


@dataclass
class User:
    """A user of the stand-in.

    Attributes:
        id: User id.
        name: Display name.
        email: Email.
        token: API token (32 hex).
        admin: Superadmin flag.
        groups: Group names.
        permissions: ``{dataset: {"view", "edit", ...}}``.
        missing_tos: ``{dataset: tos_id}`` for datasets whose ToS the user has not accepted.
    """

    id: int
    name: str
    email: str
    token: str
    admin: bool = False
    groups: list[str] = field(default_factory=list)
    permissions: dict[str, set[str]] = field(default_factory=dict)
    missing_tos: dict[str, int] = field(default_factory=dict)
    service_account: bool = False
    pi: str = "Sandbox PI"
    affiliations: list[str] = field(default_factory=lambda: ["Neurodata Sandbox"])

    def has(self, dataset: str, level: str) -> bool:
        """Whether the user holds ``level`` (view/edit/admin) on ``dataset``."""
        if self.admin:
            return True
        if level == "admin":
            return False
        return level in self.permissions.get(dataset, set())

    def cache_blob(self) -> dict[str, Any]:
        """The ``/auth/api/v1/user/cache`` body for this user."""
        perms_v2 = {d: sorted(p) for d, p in self.permissions.items()}
        return {
            "id": self.id,
            "parent_id": None,
            "service_account": self.service_account,
            "name": self.name,
            "email": self.email,
            "admin": self.admin,
            "pi": self.pi,
            "affiliations": self.affiliations,
            "groups": list(self.groups),
            "permissions": {
                d: max((_PERM_INT[x] for x in p), default=0) for d, p in self.permissions.items()
            },
            "permissions_v2": perms_v2,
            "permissions_v2_ignore_tos": perms_v2,
            "missing_tos": [
                {"dataset_name": d, "tos_id": t, "tos_name": f"{d} terms of service"}
                for d, t in self.missing_tos.items()
            ],
        }

    def public_record(self, private: bool = False) -> dict[str, Any]:
        """The ``/auth/api/v1/user`` record; ``private`` adds email/admin fields."""
        rec: dict[str, Any] = {
            "id": self.id,
            "service_account": self.service_account,
            "name": self.name,
            "created": _CREATED,
            "pi": self.pi,
            "affiliations": self.affiliations,
        }
        if private:
            rec.update(
                email=self.email,
                admin=self.admin,
                admin_datasets=[d for d, p in self.permissions.items() if "admin" in p],
                gdpr_consent=True,
            )
        return rec


class AuthRegistry:
    """Users, tokens, groups and the resource-to-dataset map.

    Args:
        config: The stand-in config (tokens, names).
    """

    def __init__(self, config: CaveConfig) -> None:
        ds = config.auth_dataset
        self.config = config
        self.default_dataset = ds
        full = {ds: {"view", "edit"}}
        self.users: list[User] = [
            User(
                1,
                "admin",
                "admin@sandbox.local",
                config.admin_token,
                admin=True,
                groups=["sandbox", "admins"],
                permissions={ds: {"view", "edit", "admin"}},
            ),
            User(
                2,
                "user",
                "user@sandbox.local",
                config.user_token,
                groups=["sandbox"],
                permissions=dict(full),
            ),
            User(
                3,
                "viewer",
                "viewer@sandbox.local",
                config.viewer_token,
                groups=["viewers"],
                permissions={ds: {"view"}},
            ),
            User(4, "noperm", "noperm@sandbox.local", config.noperm_token, groups=[]),
            User(
                5,
                "tos",
                "tos@sandbox.local",
                config.tos_token,
                groups=["sandbox"],
                missing_tos={ds: 1},
            ),
        ]
        self.auth_disabled_user = User(
            0, "AUTH_DISABLED", "", "", admin=True, permissions={ds: {"view", "edit", "admin"}}
        )
        self._by_token = {u.token: u for u in self.users}
        self._by_id = {u.id: u for u in self.users}
        self.groups: dict[int, tuple[str, list[int]]] = {
            1: ("sandbox", [1, 2, 5]),
            2: ("admins", [1]),
            3: ("viewers", [3]),
        }
        self.resources: dict[tuple[str, str], str] = {
            ("datastack", config.datastack): ds,
            ("aligned_volume", config.aligned_volume): ds,
            ("table", config.pcg_table): ds,
        }

    def user_for_token(self, token: str | None) -> User | None:
        """The user owning ``token``, or ``None``."""
        return self._by_token.get(token or "")

    def user_by_id(self, user_id: int) -> User | None:
        """User by id, or ``None``."""
        return self._by_id.get(int(user_id))

    def dataset_for(self, resource: str, namespace: str | None = None) -> str | None:
        """Auth dataset of a datastack / aligned volume / PCG table name (any namespace if None)."""
        for (ns, name), dataset in self.resources.items():
            if name == resource and (namespace is None or ns == namespace):
                return dataset
        return None

    def group_members(self, group_id: int) -> list[User] | None:
        """Members of a group, ``None`` for an unknown group."""
        grp = self.groups.get(int(group_id))
        if grp is None:
            return None
        return [self._by_id[i] for i in grp[1]]

    def tokens_of(self, user: User) -> list[dict[str, Any]]:
        """The ``/user/token`` listing for a user."""
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        return [
            {
                "id": user.id,
                "user_id": user.id,
                "token": user.token,
                "description": "sandbox token",
                "created": _CREATED,
                "updated": _CREATED,
                "last_used": now,
            }
        ]


# ------------------------------------------------------------------------------ helpers
def _auth_base(request: Request) -> str:
    world = request.app.state.world
    return world.global_url(request) + "/auth"


def extract_token(request: Request) -> str | None:
    """Token from the ``Authorization`` header, ``middle_auth_token`` query or cookie.

    Raises:
        CaveHTTPError: 400 ``bad_auth_header`` when the header is not ``Bearer <token>``.
    """
    header = request.headers.get("authorization")
    if header is not None:
        if not header.startswith("Bearer "):
            raise CaveHTTPError(
                400,
                body={
                    "error": "bad_auth_header",
                    "message": "Unauthorized - Authorization header must be 'Bearer <token>'",
                },
                headers={
                    "WWW-Authenticate": f'Bearer realm="{_auth_base(request)}/api/v1/authorize", '
                    'error="invalid_request", '
                    "error_description=\"Header must begin with 'Bearer'\""
                },
            )
        return header[len("Bearer ") :].strip()
    token = request.query_params.get("middle_auth_token")
    if token:
        return token
    return request.cookies.get("middle_auth_token") or None


def authenticate(request: Request) -> User:
    """Resolve the caller; raises the reference's 400/401/302 errors."""
    world = request.app.state.world
    if world.config.auth_disabled:
        request.state.user = world.auth.auth_disabled_user
        return world.auth.auth_disabled_user
    token = extract_token(request)
    realm = f'Bearer realm="{_auth_base(request)}/api/v1/authorize"'
    if not token:
        programmatic = (
            "authorization" in request.headers
            or "x-requested-with" in request.headers
            or "origin" in request.headers
        )
        if programmatic:
            raise CaveHTTPError(
                401,
                body={"error": "no_token", "message": "Unauthorized - No Token Provided"},
                headers={"WWW-Authenticate": realm},
            )
        target = urllib.parse.quote(str(request.url), safe="")
        raise CaveHTTPError(
            302,
            text="Redirecting...",
            headers={"Location": f"{_auth_base(request)}/api/v1/authorize?redirect={target}"},
        )
    user = request.app.state.world.auth.user_for_token(token)
    if user is None:
        raise CaveHTTPError(
            401,
            body={
                "error": "invalid_token",
                "message": "Unauthorized - Token is Invalid or Expired",
            },
            headers={"WWW-Authenticate": realm + ', error="invalid_token"'},
        )
    request.state.user = user
    return user


async def current_user(request: Request) -> User:
    """FastAPI dependency: any authenticated user."""
    return authenticate(request)


def check_permission(request: Request, user: User, dataset: str, level: str) -> None:
    """Raise the reference's 403 unless ``user`` holds ``level`` on ``dataset``."""
    if level == "admin":
        if not user.admin:
            raise CaveHTTPError(403, text="Requires superadmin privilege.")
        return
    if user.has(dataset, level):
        return
    tos_id = user.missing_tos.get(dataset)
    if tos_id is not None:
        raise CaveHTTPError(
            403,
            body={
                "error": "missing_tos",
                "message": "Need to accept Terms of Service to access resource.",
                "data": {
                    "tos_id": tos_id,
                    "tos_name": f"{dataset} terms of service",
                    "tos_form_url": f"{_auth_base(request)}/api/v1/tos/{tos_id}/accept",
                },
            },
        )
    raise CaveHTTPError(
        403,
        body={
            "error": "missing_permission",
            "message": f"Missing permission: {level} for dataset {dataset}",
            "data": {"required_permission": level, "auth_dataset": dataset},
        },
    )


def resolve_dataset(request: Request, params: tuple[str, ...] | None = None) -> str:
    """Auth dataset for the request's resource path parameter (400 ``invalid_table_id``)."""
    reg: AuthRegistry = request.app.state.world.auth
    names = params or _DATASET_PARAMS
    for name in names:
        value = request.path_params.get(name)
        if value is None:
            continue
        dataset = reg.dataset_for(str(value))
        if dataset is None:
            raise CaveHTTPError(
                400,
                body={
                    "error": "invalid_table_id",
                    "message": f"Invalid table_id for service: {value}",
                },
            )
        return dataset
    return reg.default_dataset


_NAMESPACE_PARAMS = {
    "datastack": ("datastack_name", "datastack"),
    "aligned_volume": ("aligned_volume_name", "aligned_volume"),
    "table": ("table_id",),
}


def groups_of_user(world: Any, user_id: int) -> list[str]:
    """Group names of a user id (``[]`` for unknown users)."""
    user = world.auth.user_by_id(int(user_id))
    return list(user.groups) if user is not None else []


def require(
    level: str, param: str | None = None, namespace: str | None = None
) -> Callable[[Request], Coroutine[Any, Any, User]]:
    """FastAPI dependency factory: the caller must hold ``level`` on the request's dataset.

    Args:
        level: ``"view"``, ``"edit"`` or ``"admin"`` (superadmin).
        param: Path parameter naming the resource; default: the first of ``datastack_name``,
            ``aligned_volume_name``, ``table_id`` present in the route.
        namespace: ``"datastack"``, ``"aligned_volume"`` or ``"table"``: only that kind of path
            parameter names the resource (``param`` wins if both are given).

    Returns:
        An async dependency returning the :class:`User`.

    Example:
        >>> dep = require("edit")
        >>> callable(dep)
        True
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")

    if namespace is not None and namespace not in _NAMESPACE_PARAMS:
        raise ValueError(f"namespace must be one of {sorted(_NAMESPACE_PARAMS)}, got {namespace!r}")
    params: tuple[str, ...] | None = (
        (param,) if param else (_NAMESPACE_PARAMS[namespace] if namespace else None)
    )

    async def dependency(request: Request) -> User:
        user = authenticate(request)
        check_permission(request, user, resolve_dataset(request, params), level)
        return user

    dependency.__name__ = f"require_{level}"
    return dependency


# ------------------------------------------------------------------------------ routes
router = APIRouter()
_A = "/auth/api/v1"


@router.get(_A + "/user/cache")
def user_cache(user: User = Depends(current_user)) -> dict[str, Any]:
    """The permission blob of the caller (what services read from the auth server)."""
    return user.cache_blob()


@router.get(_A + "/user/token")
def user_tokens(request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    """The caller's tokens."""
    return request.app.state.world.auth.tokens_of(user)


@router.post(_A + "/user/token")
def new_user_token(user: User = Depends(current_user)) -> str:
    """Create a token. The sandbox has fixed tokens, so it returns the caller's token."""
    return user.token


@router.get(_A + "/create_token")
def create_token(user: User = Depends(current_user)) -> str:
    """Create a token (browser flow in the real service)."""
    return user.token


@router.get(_A + "/refresh_token")
def refresh_token(user: User = Depends(current_user)) -> str:
    """Deprecated refresh: returns the caller's token."""
    return user.token


@router.get(_A + "/user")
def get_users(
    request: Request, id: str | None = None, user: User = Depends(current_user)
) -> list[dict[str, Any]]:
    """User records for comma-joined ids (all users without ``id``)."""
    reg: AuthRegistry = request.app.state.world.auth
    if id is None:
        wanted = [u.id for u in reg.users]
    else:
        wanted = parse_int_list(id, f"id must be a comma-separated list of ints, got {id!r}")
    private = user.admin or user.service_account
    return [u.public_record(private) for i in wanted if (u := reg.user_by_id(i)) is not None]


@router.get(_A + "/group/{group_id}/user")
def group_users(
    group_id: int, request: Request, user: User = Depends(current_user)
) -> list[dict[str, Any]]:
    """Members of a group (needs an admin role)."""
    if not user.admin:
        raise CaveHTTPError(403, text="Requires superadmin privilege.")
    members = request.app.state.world.auth.group_members(group_id)
    if members is None:
        raise CaveHTTPError(404, f"group {group_id} not found")
    return [{"id": u.id, "name": u.name, "email": u.email, "admin": u.admin} for u in members]


@router.get(_A + "/service/{namespace}/table/{table_id}/dataset")
def service_table_dataset(namespace: str, table_id: str, request: Request) -> str:
    """Auth dataset of a service resource."""
    ns = {"datastack": "datastack", "aligned_volume": "aligned_volume"}.get(namespace, "table")
    dataset = request.app.state.world.auth.dataset_for(table_id, ns)
    if dataset is None:
        raise CaveHTTPError(404, f"no dataset for {namespace}/{table_id}")
    return dataset


@router.get(_A + "/authorize")
def authorize(redirect: str | None = None) -> HTMLResponse:
    """Browser login page (where unauthenticated browser-style requests are sent)."""
    return HTMLResponse("<html><body>Sandbox login: use a token.</body></html>")


@router.get(_A + "/tos/{tos_id}/accept")
def tos_accept(tos_id: int) -> HTMLResponse:
    """Terms-of-service page."""
    return HTMLResponse(f"<html><body>Terms of service {tos_id}</body></html>")


@router.get("/sticky_auth/settings/tokens")
def token_page() -> HTMLResponse:
    """HTML token page (used by ``setup_token``)."""
    return HTMLResponse("<html><body>Sandbox tokens are configured by the launcher.</body></html>")
