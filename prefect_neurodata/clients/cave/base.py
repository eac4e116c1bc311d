"""Base classes, errors and request plumbing shared by every CAVE subclient.

A subclient (chunkedgraph, materialize, annotation, ...) subclasses `ClientBase` (or
`ClientBaseWithDatastack` / `ClientBaseWithDataset`) and sends every request through
`ClientBase._request` / `ClientBase._json`, which use ``self._http`` (a shared-core
`prefect_neurodata.clients.http.HttpClient` over ``self.session``). That gives:

* a timeout on every request, retries of transient failures (connection errors, timeouts, 429,
  502/503/504) with backoff and jitter, and no blind retry of a non-idempotent POST; pass
  ``idempotent=True`` for reads sent as POST (``roots_binary``, ``is_latest_roots``, queries)
  and leave it unset for writes (merge, split, annotation POSTs);
* ``Authorization: Bearer <token>`` plus the ``middle_auth_token`` cookie on every request of
  the session (set from ``auth_header``);
* errors as `ServiceError` (a `requests.HTTPError` with status, URL and the server's message),
  401/403 as `AuthorizationError` (both a `ServiceError` and an `AuthException`), and a redirect
  (the server sending us to its login page) as `AuthException`; the token is never part of a
  message;
* the server's ``Warning`` headers logged (``log_warning=True``);
* JSON bodies encoded with orjson (numpy, pandas, datetimes, sets handled) and JSON responses
  decoded with orjson, so uint64 ids above 2**53 stay exact Python ints.

Version handling:

* `Service.connect` is the one body of every factory (``ChunkedGraphClient(...)`` etc.): it
  negotiates the API version (``api/versions``, via `_api_endpoints`) and builds the client
  with the merged endpoint dict and one `TransportConfig`; `SHARED_ARGS_DOC` describes the
  arguments every factory and subclient shares, composed into their docstrings by
  `document_shared_args`.
* ``ClientBase.server_version`` is the service's software version (``get_version`` endpoint),
  fetched lazily on first use and cached; a 404 or a missing endpoint means None.
* `check_version_compatibility` (caveclient's ``_check_version_compatibility``, kept as an
  alias) guards a method (or some of its keyword arguments) with a
  server-version or API-version constraint and raises `ServerIncompatibilityError` before the
  guarded method sends anything.

Example (a minimal subclient):
    ```python
    from prefect_neurodata.clients.cave.base import ClientBase, check_version_compatibility

    class PingClient(ClientBase):
        @check_version_compatibility(method_constraint=">=2.0.0")
        def ping(self, table_id):
            url = self._endpoints["info"].format_map(
                {**self.default_url_mapping, "table_id": table_id}
            )
            return self._json("GET", url)
    ```
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
import json
import logging
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import requests
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from prefect_neurodata.clients.http import (
    HttpClient,
    ServiceError,
    Timeout,
    TransportConfig,
    decode_json,
    is_transient,
    loads,
    redact_url,
)
from prefect_neurodata.errors import NeurodataError

from . import session_config

logger = logging.getLogger("prefect_neurodata.cave")

F = TypeVar("F", bound=Callable[..., Any])
ClientT = TypeVar("ClientT", bound="ClientBase")

_MISSING: Any = object()

ApiVersion = int | Literal["latest"]
"""A service API version a factory asks for: a number, or "latest" (negotiated with the server)."""


class AuthException(NeurodataError):
    """The CAVE servers refused our credentials, or asked for a login (a redirect)."""


class ServerIncompatibilityError(NeurodataError):
    """The server's software or API version does not support the requested feature.

    Raised before any request of the guarded method is sent.
    """


class AuthorizationError(ServiceError, AuthException):
    """A 401 or 403 answer: no token, an invalid or expired token, or a missing permission.

    It is both a `ServiceError` (so seed-style ``except requests.HTTPError`` still works and
    ``.status_code``/``.server_message`` are available) and an `AuthException`.

    Attributes:
        error_code: The auth server's machine-readable code (``no_token``, ``invalid_token``,
            ``missing_permission``, ``missing_tos``) or "".
        hint: What to do about it.
    """

    def __init__(self, *, error_code: str = "", hint: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error_code = error_code
        self.hint = hint
        if hint:
            self.args = (f"{self.args[0]} -- {hint}",)


_AUTH_HINTS: dict[str, str] = {
    "no_token": (
        "no token was sent: pass auth_token=..., or save one with client.auth.save_token(...) "
        "(see client.auth.setup_token())"
    ),
    "invalid_token": (
        "the token is invalid or expired: create a new one (client.auth.setup_token()) "
        "and save it with client.auth.save_token(..., overwrite=True)"
    ),
    "missing_permission": "the token is valid but this user lacks the permission named above",
}


def authorization_error(exc: ServiceError) -> AuthorizationError:
    """Turn a 401/403 `ServiceError` into an `AuthorizationError` with a hint."""
    response = exc.response
    code = ""
    hint = ""
    body: Any = None
    if response is not None and response.content:
        try:
            body = loads(response.content)
        except ValueError:
            body = None
    if isinstance(body, dict):
        code = str(body.get("error") or "")
        if code == "missing_tos":
            data = body.get("data") or {}
            url = data.get("tos_form_url") if isinstance(data, dict) else None
            hint = "accept the terms of service" + (f" at {url}" if url else "") + " and retry"
        else:
            hint = _AUTH_HINTS.get(code, "")
    if not hint:
        hint = (
            "the server refused the credentials (401)"
            if exc.status_code == 401
            else "the server refused access (403); check the token's permissions"
        )
    return AuthorizationError(
        status_code=exc.status_code,
        method=exc.method,
        url=exc.url,
        server_message=exc.server_message,
        reason=exc.reason,
        attempts=exc.attempts,
        response=response,
        error_code=code,
        hint=hint,
    )


def check_authorization_redirect(response: requests.Response) -> None:
    """Raise `AuthException` if ``response`` is (or followed) a redirect.

    The CAVE services answer a request without a usable token by redirecting to the login
    page; a CAVE API never redirects a successful call.
    """
    if response.history or response.is_redirect or 300 <= response.status_code < 400:
        first = response.history[0] if response.history else response
        location = first.headers.get("Location", "")
        request = first.request
        method = request.method if request is not None else "?"
        url = redact_url(first.url or (request.url if request is not None else "") or "")
        target = f" to {redact_url(location).split('?')[0]}" if location else ""
        raise AuthException(
            f"{method} {url} was redirected{target}: the server asks for a login, so no valid "
            "token was sent. Set one up with client.auth.setup_token() and "
            "client.auth.save_token(...), or pass auth_token=..."
        )


def log_warnings(response: requests.Response) -> None:
    warning = response.headers.get("Warning")
    if warning:
        logger.warning(warning)


def _raise_for_status(response: requests.Response, log_warning: bool = True) -> None:
    """Raise for an error status (as `ServiceError` / `AuthorizationError`), else log warnings.

    Args:
        response: A response obtained without `HttpClient`'s own status check.
        log_warning: Log the server's ``Warning`` header on success.
    """
    if response.status_code >= 400:
        error = ServiceError.from_response(response)
        if response.status_code in (401, 403):
            raise authorization_error(error)
        raise error
    if log_warning:
        log_warnings(response)


def send_checked(
    http: HttpClient, method: str, url: str, *, log_warning: bool = True, **kwargs: Any
) -> requests.Response:
    """Send a request without following redirects and check it the CAVE way.

    The one home of the CAVE answer rules, used by every subclient and by `AuthClient`: 401/403
    become `AuthorizationError`, a redirect (to the login page) `AuthException`, and the
    server's ``Warning`` header is logged.

    Args:
        http: The client's `HttpClient`.
        method: HTTP method.
        url: Absolute URL.
        log_warning: Log the server's ``Warning`` header.
        **kwargs: Passed to `HttpClient.request` (``params``, ``json``, ``idempotent``, ...).

    Example:
        ```python
        response = send_checked(new_http(auth_header, transport), "GET", url)
        ```
    """
    try:
        response = http.request(method, url, allow_redirects=False, **kwargs)
    except ServiceError as exc:
        if exc.status_code in (401, 403):
            raise authorization_error(exc) from None
        raise
    check_authorization_redirect(response)
    if log_warning:
        log_warnings(response)
    return response


def handle_response(
    response: requests.Response, as_json: bool = True, log_warning: bool = True
) -> Any:
    """Check a response for errors and return its decoded JSON (or the response itself).

    Args:
        response: The response.
        as_json: Return the JSON body (decoded with orjson, so big ints stay exact); if False,
            return ``response``.
        log_warning: Log the server's ``Warning`` header.

    Raises:
        ServiceError: Error status (401/403 as `AuthorizationError`).
        AuthException: The request was redirected (to a login page).
    """
    _raise_for_status(response, log_warning=log_warning)
    check_authorization_redirect(response)
    if as_json:
        return decode_json(response)
    return response


class BaseEncoder(json.JSONEncoder):
    """`json.JSONEncoder` for request bodies: numpy/pandas arrays, sets, numpy ints, datetimes.

    The clients themselves send bodies with the shared core's orjson ``dumps``, which encodes
    the same values; this class exists for users' own ``json.dumps(..., cls=BaseEncoder)``.
    """

    def default(self, obj: Any) -> Any:
        """Encode the values the standard encoder does not know."""
        is_array = isinstance(obj, np.ndarray) or type(obj).__module__.startswith("pandas")
        if is_array and hasattr(obj, "tolist"):
            return obj.tolist()
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, (dt.datetime, dt.date)):
            return obj.isoformat()
        return json.JSONEncoder.default(self, obj)


# ---------------------------------------------------------------------------------------------
# API version negotiation
# ---------------------------------------------------------------------------------------------


def resolve_transport(
    transport: TransportConfig | None,
    verify: bool | str = True,
    max_retries: int | None = None,
    pool_maxsize: int | None = None,
    pool_block: bool | None = None,
) -> TransportConfig:
    """The transport of a CAVE client: ``transport`` (else the session defaults) with the
    seed's per-client arguments applied.

    The seed arguments win when given: ``max_retries``/``pool_maxsize``/``pool_block`` when
    not None, ``verify`` when not its default True.

    Example:
        ```python
        config = resolve_transport(None, max_retries=0)
        assert config.retry.max_retries == 0
        ```
    """
    base = transport if transport is not None else session_config.default_transport()
    return base.with_overrides(
        max_retries=max_retries,
        pool_maxsize=pool_maxsize,
        pool_block=pool_block,
        verify=None if verify is True else verify,
    )


def new_http(auth_header: Mapping[str, str] | None, transport: TransportConfig) -> HttpClient:
    """Build the `HttpClient` of one subclient: a session from ``transport`` carrying the
    auth header and cookie.

    The token is put into the session's headers and cookie jar, never into a URL.
    """
    session = transport.new_session()
    _apply_auth(session, auth_header)
    return transport.http_client(session)


def _apply_auth(session: requests.Session, auth_header: Mapping[str, str] | None) -> None:
    """Set (or clear) the Bearer header and the ``middle_auth_token`` cookie of ``session``."""
    session.headers.pop("Authorization", None)
    session.cookies.pop("middle_auth_token", None)
    if not auth_header:
        return
    session.headers.update(auth_header)
    value = auth_header.get("Authorization", "")
    if value.startswith("Bearer "):
        session.cookies.set("middle_auth_token", value[len("Bearer ") :])


def _api_versions(
    server_name: str,
    server_address: str,
    endpoints_common: Mapping[str, str],
    auth_header: Mapping[str, str] | None,
    transport: TransportConfig,
) -> list[int] | None:
    """Ask a service which API versions it serves (``get_api_versions``); None if it has no
    such endpoint."""
    url_template = endpoints_common.get("get_api_versions")
    if url_template is None:
        return None
    url = url_template.format_map({server_name: server_address})
    http = new_http(auth_header, transport)
    try:
        response = http.request("GET", url, allow_redirects=False)
        return [int(v) for v in handle_response(response, as_json=True, log_warning=False)]
    finally:
        http.close()


def _api_endpoints(
    api_version: ApiVersion,
    server_name: str,
    server_address: str,
    endpoints_common: Mapping[str, str],
    endpoint_versions: Mapping[int, Mapping[str, str]],
    auth_header: Mapping[str, str] | None,
    fallback_version: int | None = None,
    transport: TransportConfig | None = None,
) -> tuple[dict[str, str], int]:
    """Choose the API version and return ``(endpoints, api_version)``.

    With ``api_version="latest"``, the service's ``get_api_versions`` endpoint is asked; the
    highest version both sides support wins. When the service cannot say (no such endpoint, an
    answer that is not a version list, no connection), ``fallback_version`` (or else the
    client's highest version) is used; a 429 or 5xx answer that outlasted the retries is raised
    instead.

    Args:
        api_version: An int, or "latest".
        server_name: The placeholder key of the server (e.g. ``cg_server_address``).
        server_address: The server's base URL.
        endpoints_common: Templates common to every version.
        endpoint_versions: ``{version: templates}``.
        auth_header: Headers carrying the token, or None.
        fallback_version: Version used when negotiation fails.
        transport: Transport settings of the version lookup (default: the session defaults).

    Raises:
        ValueError: No API version is supported by both sides, or an unknown version was asked.
        requests.HTTPError: The version lookup was answered 429 or 5xx (see `is_transient`).
    """
    client_versions = set(endpoint_versions)
    if api_version == "latest":
        try:
            server_versions = _api_versions(
                server_name,
                server_address,
                endpoints_common,
                auth_header,
                transport if transport is not None else session_config.default_transport(),
            )
        except (requests.RequestException, AuthException, ValueError, TypeError) as exc:
            if isinstance(exc, requests.HTTPError) and is_transient(exc):
                # a server that answers 429/5xx is there but failing, which says nothing about
                # its versions: falling back would build a client for another API version
                # (other URLs and methods) that fails later, far from the cause. Unreachable
                # servers still fall back, as caveclient does (its own tests rely on it).
                raise
            logger.debug("API version lookup at %s failed: %s", redact_url(server_address), exc)
            server_versions = None
        if server_versions is None:
            chosen = fallback_version if fallback_version is not None else max(client_versions)
        else:
            common = client_versions & set(server_versions)
            if not common:
                raise ValueError(
                    f"no API version in common: the server at {redact_url(server_address)} "
                    f"offers {sorted(server_versions)}, this client {sorted(client_versions)}"
                )
            chosen = max(common)
    else:
        chosen = int(api_version)
    if chosen not in endpoint_versions:
        raise ValueError(
            f"api_version={api_version!r} is not supported; choose one of "
            f"{sorted(client_versions)} or 'latest'"
        )
    endpoints = dict(endpoints_common)
    endpoints.update(endpoint_versions[chosen])
    return endpoints, chosen


# ---------------------------------------------------------------------------------------------
# Version guards
# ---------------------------------------------------------------------------------------------


def _version_fails_constraint(version: Version | None, constraint: str | None) -> bool:
    """True if ``version`` does not satisfy ``constraint``; an unknown version always fails."""
    if constraint is None:
        return False
    if version is None:
        return True
    return version not in SpecifierSet(constraint, prereleases=True)


def check_version_compatibility(
    method_constraint: str | None = None,
    kwarg_use_constraints: Mapping[str, str] | None = None,
    method_api_constraint: str | None = None,
    kwarg_use_api_constraints: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Decorate a client method so it refuses to run against an unsupported server.

    Constraints are PEP 440 specifier strings (e.g. ``">=2.15.0"`` or
    ``"<3,>=2.18.0"``; several alternatives separated by ``" || "``, any of which may hold).
    ``method_*`` constraints apply to every call; ``kwarg_use_*`` constraints apply only when
    the named keyword argument is passed with a value other than None. Server constraints are
    checked against ``self.server_version`` (unknown = fails), API constraints against
    ``self.api_version``. `ServerIncompatibilityError` is raised before the method runs, so
    nothing is sent.
    """

    def fails(version: Version | None, constraint: str) -> bool:
        return all(_version_fails_constraint(version, c) for c in constraint.split("||"))

    def decorator(method: F) -> F:
        signature = inspect.signature(method)

        @functools.wraps(method)
        def wrapper(self: ClientBase, *args: Any, **kwargs: Any) -> Any:
            name = method.__name__
            # Guarded arguments count however they are passed, positionally too (as in 5.25).
            passed = signature.bind_partial(self, *args, **kwargs).arguments
            if method_constraint is not None:
                version = self.server_version
                if fails(version, method_constraint):
                    raise ServerIncompatibilityError(
                        f"{type(self).__name__}.{name} needs server version "
                        f"{method_constraint}, but the server is {version or 'of unknown version'}"
                    )
            if method_api_constraint is not None:
                api = Version(str(self.api_version))
                if fails(api, method_api_constraint):
                    raise ServerIncompatibilityError(
                        f"{type(self).__name__}.{name} needs API version {method_api_constraint}, "
                        f"but this client uses API version {self.api_version}"
                    )
            for kwarg, constraint in (kwarg_use_constraints or {}).items():
                if passed.get(kwarg) is None:
                    continue
                version = self.server_version
                if fails(version, constraint):
                    raise ServerIncompatibilityError(
                        f"argument {kwarg}= of {type(self).__name__}.{name} needs server version "
                        f"{constraint}, but the server is {version or 'of unknown version'}"
                    )
            for kwarg, constraint in (kwarg_use_api_constraints or {}).items():
                if passed.get(kwarg) is None:
                    continue
                if fails(Version(str(self.api_version)), constraint):
                    raise ServerIncompatibilityError(
                        f"argument {kwarg}= of {type(self).__name__}.{name} needs API version "
                        f"{constraint}, but this client uses API version {self.api_version}"
                    )
            return method(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


_check_version_compatibility = check_version_compatibility
"""caveclient's name of `check_version_compatibility` (``caveclient.base``), for seed code."""


# ---------------------------------------------------------------------------------------------
# Factories: one service description, one description of the shared arguments
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Service(Generic[ClientT]):
    """One CAVE service as its factory sees it: the client class and where its URLs live.

    Every subclient factory (`JSONService`, `ChunkedGraphClient`, ...) is the seed's signature
    over one `Service.connect` call: negotiate the API version, then build the client with the
    caller's token and one `TransportConfig` for the lookup and the client alike.

    Attributes:
        client_class: The client class, or ``{api_version: class}`` to pick by the version.
        server_key: The placeholder key of the server in the templates (e.g.
            ``cg_server_address``).
        common: Templates common to every API version (version probes).
        versions: ``{api_version: templates}``.
        fallback_version: The version used when the server cannot say (None: the highest).

    Example:
        ```python
        from prefect_neurodata.clients.cave import endpoints
        from prefect_neurodata.clients.cave.jsonservice import JSONServiceV1

        service = Service(
            JSONServiceV1, "json_server_address",
            endpoints.jsonservice_common, endpoints.jsonservice_api_versions,
        )
        state = service.connect(
            "http://127.0.0.1:8080", None, "latest", resolve_transport(None), None
        )
        ```
    """

    client_class: Callable[..., ClientT] | Mapping[Any, Callable[..., ClientT]]
    server_key: str
    common: Mapping[str, str]
    versions: Mapping[int, Mapping[str, str]]
    fallback_version: int | None = None

    def connect(
        self,
        server_address: str,
        auth_client: Any,
        api_version: ApiVersion,
        transport: TransportConfig,
        *client_args: Any,
        **client_kwargs: Any,
    ) -> ClientT:
        """Negotiate the API version and build the client.

        The client is built as ``client_class(server_address, auth_header, api_version,
        endpoints, server_key, *client_args, transport=transport, **client_kwargs)``.

        Args:
            server_address: The server's base URL (already normalised by the caller).
            auth_client: An `AuthClient` (its token is sent), or None for no auth.
            api_version: An int, or "latest" (see `_api_endpoints`).
            transport: The settings of the lookup and of the client (`resolve_transport`).
            *client_args: Positional arguments of the class after ``server_key``.
            **client_kwargs: Keyword arguments of the class.

        Raises:
            ValueError: No API version is supported by both sides, or an unknown version was
                asked.
        """
        auth_header = auth_header_of(auth_client)
        endpoints, chosen = _api_endpoints(
            api_version,
            self.server_key,
            server_address,
            self.common,
            self.versions,
            auth_header,
            fallback_version=self.fallback_version,
            transport=transport,
        )
        classes = self.client_class
        cls = classes[chosen] if isinstance(classes, Mapping) else classes
        base_args = (server_address, auth_header, chosen, endpoints, self.server_key)
        return cls(*base_args, *client_args, transport=transport, **client_kwargs)


SHARED_ARGS_DOC: dict[str, str] = {
    "auth_client": "An `AuthClient` (its token is sent), or None for no auth.",
    "verify": "TLS verification (True, False or a CA bundle path).",
    "max_retries": (
        "Retries of transient failures (a write is never retried blindly); None uses the "
        "session defaults."
    ),
    "pool_maxsize": "Pooled connections per host; None uses the session defaults.",
    "pool_block": "Block when the pool is exhausted; None uses the session defaults.",
    "over_client": "The `CAVEclient` this client belongs to, or None.",
    "transport": (
        "Timeout, retry policy, pool and TLS settings (`TransportConfig`); None uses the "
        "session defaults. The seed arguments above, when given, override it (see "
        "`resolve_transport`)."
    ),
}
"""The one description of the arguments every subclient factory and class shares."""

_ARG_ENTRY = re.compile(r"^    (\w+)( \(.*\))?:")


def document_shared_args(obj: F) -> F:
    """Complete the ``Args:`` section of ``obj``'s docstring with `SHARED_ARGS_DOC`.

    Each argument of ``obj``'s signature (a class: its ``__init__``) that the docstring does
    not describe itself and that `SHARED_ARGS_DOC` knows is added, and the section is put in
    signature order, so ``help()`` shows every argument while the source states the shared
    ones once. ``obj`` itself (and its signature) is returned unchanged but for ``__doc__``.

    Example:
        ```python
        def factory(server_address: str, max_retries: int | None = None) -> None:
            ...

        factory.__doc__ = "Build a client.\n\nArgs:\n    server_address: The server.\n"
        document_shared_args(factory)
        assert "max_retries: Retries" in factory.__doc__
        ```
    """
    signature = inspect.signature(obj)
    lines = inspect.cleandoc(obj.__doc__ or "").splitlines()
    if "Args:" not in lines:
        lines += ["", "Args:"]
    start = lines.index("Args:") + 1
    end = start
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    entries: dict[str, list[str]] = {}
    for line in lines[start:end]:
        match = _ARG_ENTRY.match(line)
        if match:
            entries[match.group(1)] = []
        list(entries.values())[-1].append(line)
    section: list[str] = []
    for name in signature.parameters:
        if name in entries:
            section += entries.pop(name)
        elif name in SHARED_ARGS_DOC:
            text = f"{name}: {SHARED_ARGS_DOC[name]}"
            section += textwrap.wrap(
                text, width=96, initial_indent="    ", subsequent_indent="        "
            )
    for rest in entries.values():
        section += rest
    obj.__doc__ = "\n".join(lines[:start] + section + lines[end:])
    return obj


# ---------------------------------------------------------------------------------------------
# Client bases
# ---------------------------------------------------------------------------------------------


@document_shared_args
class ClientBase:
    """Base of every CAVE subclient (seed: ``caveclient.base.ClientBase``).

    The owning client (``over_client``) gives a subclient its timestamp, version, desired
    resolution and sibling clients.

    Args:
        server_address: Base URL of the service's server (``http://`` accepted).
        auth_header: ``{"Authorization": "Bearer <token>"}`` (from
            ``AuthClient.request_header``) or ``{}``/None for no auth.
        api_version: The negotiated API version (int).
        endpoints: The merged URL templates (from `Service.connect`).
        server_name: Placeholder key of the server in the templates (e.g.
            ``cg_server_address``).

    Attributes:
        session: The `requests.Session` (seed compatibility; it carries the auth header and
            cookie). Requests are sent through ``self._http`` which wraps it.
    """

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_name: str,
        verify: bool | str = True,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        transport: TransportConfig | None = None,
    ) -> None:
        self._server_address = server_address.rstrip("/") if server_address else server_address
        self._default_url_mapping: dict[str, Any] = {server_name: self._server_address}
        self._server_name = server_name
        self._transport = resolve_transport(
            transport, verify, max_retries, pool_maxsize, pool_block
        )
        self._http = new_http(auth_header, self._transport)
        self.session = self._http.session
        self.verify = self._transport.verify
        self._api_version = api_version
        self._endpoints = dict(endpoints)
        self._fc = over_client
        self._server_version: Any = _MISSING

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(server_address={self._server_address!r}, "
            f"api_version={self._api_version!r})"
        )

    # -- seed properties --------------------------------------------------------------------
    @property
    def transport(self) -> TransportConfig:
        """The transport settings (timeout, retries, pool, TLS) this client was built with."""
        return self._transport

    @property
    def default_url_mapping(self) -> dict[str, Any]:
        """Placeholder values for the URL templates (a copy)."""
        return dict(self._default_url_mapping)

    @property
    def server_address(self) -> str:
        """Base URL of the server."""
        return self._server_address

    @property
    def api_version(self) -> int:
        """The negotiated API version."""
        return self._api_version

    @property
    def fc(self) -> Any:
        """The framework client (`CAVEclient`) this subclient belongs to, or None."""
        return self._fc

    @property
    def server_version(self) -> Version | None:
        """The server's software version, fetched on first use; None when unknown."""
        if self._server_version is _MISSING:
            self._server_version = self._get_version()
        return self._server_version

    @staticmethod
    def raise_for_status(r: requests.Response, log_warning: bool = True) -> None:
        """Raise `ServiceError` (401/403: `AuthorizationError`) for an error status."""
        _raise_for_status(r, log_warning=log_warning)

    # -- request plumbing -------------------------------------------------------------------
    def _url(self, key: str, **values: Any) -> str:
        """Format the endpoint template ``key`` with the server mapping plus ``values``."""
        try:
            template = self._endpoints[key]
        except KeyError:
            raise ServerIncompatibilityError(
                f"{type(self).__name__} with API version {self._api_version} has no "
                f"endpoint {key!r}"
            ) from None
        return template.format_map({**self._default_url_mapping, **values})

    def _set_auth_header(self, auth_header: Mapping[str, str] | None) -> None:
        """Replace the token used by this client (header and cookie)."""
        _apply_auth(self.session, auth_header)

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        json: Any = _MISSING,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        stream: bool = False,
        timeout: Timeout = _MISSING,
        log_warning: bool = True,
    ) -> requests.Response:
        """Send one request through the shared core and check it like the seed does.

        The arguments mean what they mean in `HttpClient.request` (build ``url`` with `_url`;
        pass ``idempotent=True`` for reads done by POST); ``log_warning`` logs the server's
        ``Warning`` header.

        Returns:
            The (successful, non-redirected) response.

        Raises:
            ServiceError: Error status after retries (`AuthorizationError` for 401/403).
            AuthException: The server redirected (to its login page).
        """
        kwargs: dict[str, Any] = {}
        if json is not _MISSING:
            kwargs["json"] = json
        if timeout is not _MISSING:
            kwargs["timeout"] = timeout
        return send_checked(
            self._http,
            method,
            url,
            log_warning=log_warning,
            params=params,
            data=data,
            headers=headers,
            idempotent=idempotent,
            stream=stream,
            **kwargs,
        )

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        """`_request` and decode the JSON body (orjson: big ints stay exact)."""
        return decode_json(self._request(method, url, **kwargs))

    def _get_version(self) -> Version | None:
        """Fetch the server's software version; None if the service has no version endpoint."""
        template = self._endpoints.get("get_version")
        if template is None:
            return None
        url = template.format_map(self._default_url_mapping)
        return fetch_server_version(self._http, url, self._server_address)


class ClientBaseWithDataset(ClientBase):
    """`ClientBase` bound to a dataset name (legacy services)."""

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_name: str,
        dataset_name: str | None,
        verify: bool | str = True,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_name)
        super().__init__(
            *seed, verify, max_retries, pool_maxsize, pool_block, over_client, transport
        )
        self._dataset_name = dataset_name

    @property
    def dataset_name(self) -> str | None:
        """The dataset name."""
        return self._dataset_name


class ClientBaseWithDatastack(ClientBase):
    """`ClientBase` bound to a datastack name (info, materialization)."""

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_name: str,
        datastack_name: str | None,
        verify: bool | str = True,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_name)
        super().__init__(
            *seed, verify, max_retries, pool_maxsize, pool_block, over_client, transport
        )
        self._datastack_name = datastack_name

    @property
    def datastack_name(self) -> str | None:
        """The datastack name."""
        return self._datastack_name


def fetch_server_version(http: HttpClient, url: str, server_address: str) -> Version | None:
    """The software version a service reports at its ``get_version`` endpoint ``url``.

    Args:
        http: The `HttpClient` to ask with (carrying the token).
        url: The formatted ``get_version`` URL.
        server_address: The server, named in the warning about an unparsable version.

    Returns:
        The version; None when the service has no such endpoint (404) or its answer does not
        parse as a version.

    Raises:
        ServiceError: Any other error status after retries (401/403: `AuthorizationError`).

    Example:
        ```python
        http = new_http({"Authorization": "Bearer ..."}, resolve_transport(None))
        fetch_server_version(http, "http://127.0.0.1:9000/segmentation/api/version", "...")
        ```
    """
    try:
        value = decode_json(send_checked(http, "GET", url, log_warning=False))
    except ServiceError as exc:
        if exc.status_code == 404:
            return None
        raise
    try:
        return Version(str(value))
    except InvalidVersion:
        logger.warning("server at %s reports an unparsable version", server_address)
        return None


@contextmanager
def asked_meanwhile(
    auth_client: Any,
    transport: TransportConfig,
    questions: Mapping[str, Callable[[HttpClient], Any]],
) -> Iterator[dict[str, Future[Any]]]:
    """Send independent start-up questions while the caller negotiates the API version.

    A client factory asks the API versions first and the client it builds asks more (server
    version, version list) one after the other; when their answers do not depend on each
    other, asking them at the same time saves a round trip each at realistic latency. Each
    question runs in its own worker thread with one session carrying ``auth_client``'s token;
    its answer or error waits in its future, so the client can raise it where it always did.

    Args:
        auth_client: An `AuthClient` (its token is sent), or None for no auth.
        transport: The settings of the requests (`resolve_transport`).
        questions: ``{name: ask}``; ``ask(http)`` sends the question through ``http``.

    Yields:
        ``{name: future}``, all submitted; on exit every question has been answered.

    Example:
        ```python
        url = "http://127.0.0.1:9000/materialize/version"
        ask = functools.partial(fetch_server_version, url=url, server_address=url)
        with asked_meanwhile(None, resolve_transport(None), {"version": ask}) as asked:
            ...  # negotiate the API version here
        asked["version"].result()
        ```
    """
    http = new_http(auth_header_of(auth_client), transport)
    try:
        with ThreadPoolExecutor(max(1, len(questions)), thread_name_prefix="cave-start") as pool:
            yield {name: pool.submit(ask, http) for name, ask in questions.items()}
    finally:
        http.close()


def auth_header_of(auth_client: Any) -> dict[str, str]:
    """The request header of an `AuthClient` (``{}`` for None)."""
    if auth_client is None:
        return {}
    return dict(auth_client.request_header)


def resolve_server_address(server_address: str | None) -> str:
    """Normalise a server address: default global server, ``https://`` when no scheme."""
    from . import endpoints as _endpoints

    if not server_address:
        return _endpoints.default_global_server_address
    if "://" not in server_address:
        server_address = "https://" + server_address
    return server_address.rstrip("/")
