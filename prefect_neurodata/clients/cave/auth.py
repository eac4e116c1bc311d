"""Finding, saving and using CAVE auth tokens (seed: ``caveclient.auth``).

Tokens live in JSON files under ``~/.cloudvolume/secrets/`` (shared with CloudVolume). When no
file is named, the lookup order is:

1. ``{netloc}-cave-secret.json`` where ``netloc`` is the host[:port] of the global server,
2. ``cave-secret.json``,
3. ``chunkedgraph-secret.json`` (deprecated; a warning asks to rename it).

A token passed directly (``token=``) beats every file. Files are written with mode 0600 in a
0700 directory, atomically (temporary file + rename), keeping the other keys of the file.

The token is sent as ``Authorization: Bearer <token>`` and as the ``middle_auth_token`` cookie
(see `prefect_neurodata.clients.cave.base`). It never appears in ``repr``, logs or errors.

Example:
    ```python
    from prefect_neurodata.clients.cave.auth import AuthClient

    auth = AuthClient(server_address="http://127.0.0.1:8080")
    auth.save_token("0123456789abcdef0123456789abcdef")
    auth.request_header  # {"Authorization": "Bearer ..."}
    ```
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import webbrowser
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from prefect_neurodata.clients.http import ServiceError, TransportConfig, decode_json, loads

from . import endpoints as _endpoints
from .base import logger, new_http, resolve_transport, send_checked

default_token_location = "~/.cloudvolume/secrets"
default_token_name = "cave-secret.json"
deprecated_token_names = ["chunkedgraph-secret.json"]
default_token_key = "token"
default_token_file = f"{default_token_location}/{default_token_name}"
server_token_suffix = "-cave-secret.json"


def _netloc(server_address: str | None) -> str | None:
    """Host[:port] of ``server_address`` (``https://`` assumed without a scheme)."""
    if not server_address:
        return None
    if "://" not in server_address:
        server_address = "https://" + server_address
    return urlparse(server_address).netloc or None


def server_token_filename(server_address: str | None) -> str | None:
    """Path of the server-specific token file for ``server_address`` (None without one)."""
    netloc = _netloc(server_address)
    if netloc is None:
        return None
    return f"{default_token_location}/{netloc}{server_token_suffix}"


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = loads(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"token file {path} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValueError(f"token file {path} must hold a JSON object")
    return data


def write_token(token: str, filepath: str, key: str, overwrite: bool = True) -> None:
    """Write ``token`` under ``key`` into the JSON file ``filepath`` with mode 0600.

    Other keys of an existing file are kept. The write is atomic (temporary file + rename).

    Args:
        token: The token.
        filepath: The file (``~`` expanded); missing directories are created with mode 0700.
        key: The JSON key.
        overwrite: Replace a different token already stored under ``key``.

    Raises:
        ValueError: A different token is stored under ``key`` and ``overwrite`` is False, or the
            token is empty or not a string.
    """
    if not isinstance(token, str) or not token.strip():
        raise ValueError("token must be a non-empty string")
    if not isinstance(key, str) or not key:
        raise ValueError(f"token key must be a non-empty string, got {key!r}")
    path = Path(os.path.expanduser(filepath))
    data: dict[str, Any] = {}
    if path.exists():
        data = _read_json_file(path)
        if key in data and data[key] != token and not overwrite:
            raise ValueError(
                f"a different token is already stored under key {key!r} in {path}; "
                "pass overwrite=True to replace it"
            )
    data[key] = token
    write_json_private(path, data)


def write_json_private(filepath: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``filepath`` atomically, readable by the owner only (0600).

    Missing directories are created with mode 0700.
    """
    path = Path(os.path.expanduser(str(filepath)))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    os.chmod(path, 0o600)


class AuthClient:
    """Client to find and use auth tokens for the CAVE services.

    Args:
        token_file: JSON file holding the token. None uses the lookup order of the module
            docstring.
        token_key: Key of the token in the file; None means ``"token"``.
        token: The token itself; overrides every file.
        server_address: The global (auth) server.
        transport: Timeout, retries, pool and TLS settings of its requests (`TransportConfig`);
            None uses the session defaults.

    Attributes:
        local_server: The datastack's local server (set by `CAVEclient`); `save_token` also
            writes a token file for it so CloudVolume can authenticate there.
    """

    def __init__(
        self,
        token_file: str | None = None,
        token_key: str | None = None,
        token: str | None = None,
        server_address: str = _endpoints.default_global_server_address,
        transport: TransportConfig | None = None,
    ) -> None:
        self._transport = resolve_transport(transport)
        self._server_address = (server_address or _endpoints.default_global_server_address).rstrip(
            "/"
        )
        if "://" not in self._server_address:
            self._server_address = "https://" + self._server_address
        self._token_key = token_key or default_token_key
        self.local_server: str | None = None
        self._default_endpoint_mapping = {"auth_server_address": self._server_address}

        if token_file is not None:
            self._token_file: str = token_file
            candidates = [token_file]
        else:
            server_file = server_token_filename(self._server_address)
            candidates = [f for f in (server_file, default_token_file) if f]
            self._token_file = candidates[0]

        self._token: str | None = None
        if token is not None:
            if not isinstance(token, str) or not token.strip():
                raise ValueError("auth token must be a non-empty string")
            self._token = token.strip()
            return
        for candidate in candidates:
            found = self._load_token(candidate, self._token_key)
            if found is not None:
                self._token = found
                self._token_file = candidate
                return
        if token_file is None:
            for name in deprecated_token_names:
                candidate = f"{default_token_location}/{name}"
                found = self._load_token(candidate, self._token_key)
                if found is not None:
                    logger.warning(
                        "token file location %s is deprecated; rename it to %s",
                        candidate,
                        default_token_file,
                    )
                    self._token = found
                    self._token_file = candidate
                    return

    def __repr__(self) -> str:
        return (
            f"AuthClient(server_address={self._server_address!r}, "
            f"token_file={self._token_file!r}, token_key={self._token_key!r}, "
            f"token={'<set>' if self._token else None})"
        )

    @staticmethod
    def _load_token(token_file: str, token_key: str) -> str | None:
        path = Path(os.path.expanduser(token_file))
        if not path.is_file():
            return None
        value = _read_json_file(path).get(token_key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"token file {path}: key {token_key!r} must hold a non-empty string")
        return value.strip()

    # -- properties ---------------------------------------------------------------------------
    @property
    def token(self) -> str | None:
        """Secret token used to authenticate to the CAVE services (None if none was found)."""
        return self._token

    @token.setter
    def token(self, new_token: str | None) -> None:
        self._token = new_token

    @property
    def server_address(self) -> str:
        """The auth (global) server."""
        return self._server_address

    @property
    def token_file(self) -> str:
        """The token file in use (or the one a save would write by default)."""
        return self._token_file

    @property
    def token_key(self) -> str:
        """The key of the token in the token file."""
        return self._token_key

    @property
    def request_header(self) -> dict[str, str]:
        """Formatted request header with the specified token (``{}`` without a token)."""
        if self._token is not None:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    # -- token files ----------------------------------------------------------------------------
    def get_token(self, token_key: str | None = None) -> str | None:
        """Load the token stored under ``token_key`` in the current token file.

        Args:
            token_key: Key in the token file JSON; None uses ``"token"``.
        """
        return self._load_token(self._token_file, token_key or default_token_key)

    def save_token(
        self,
        token: str | None = None,
        token_key: str = default_token_key,
        overwrite: bool = False,
        token_file: str | None = None,
        switch_token: bool = True,
        write_to_server_file: bool = True,
    ) -> None:
        """Save a token in the right format (mode 0600), and by default start using it.

        Writes ``token_file`` (default ``~/.cloudvolume/secrets/cave-secret.json``), plus the
        server-specific file of the global server and, when known, of the local server.

        Args:
            token: The token; None saves the token currently in use.
            token_key: JSON key for the token.
            overwrite: Allow replacing a different token stored under the key.
            token_file: File to write; None means the default file.
            switch_token: Use the new token from now on.
            write_to_server_file: Also write the server-specific files.

        Raises:
            ValueError: No token, or a different token exists and ``overwrite`` is False.
        """
        if token is None:
            token = self._token
        if token is None:
            raise ValueError("no token to save: pass token=...")
        token = token.strip()
        files = [token_file or default_token_file]
        if write_to_server_file:
            for address in (self._server_address, self.local_server):
                server_file = server_token_filename(address)
                if server_file and server_file not in files:
                    files.append(server_file)
        # Check every file before writing any, so a refused overwrite leaves nothing half-done.
        if not overwrite:
            for path in files:
                existing = self._load_token(path, token_key)
                if existing is not None and existing != token:
                    raise ValueError(
                        f"a different token is already stored under key {token_key!r} in "
                        f"{os.path.expanduser(path)}; pass overwrite=True to replace it"
                    )
        for path in files:
            write_token(token, path, token_key, overwrite=True)
        if switch_token:
            self._token = token
            self._token_key = token_key
            self._token_file = files[0]

    # -- browser helpers ------------------------------------------------------------------------
    def _tokens_page(self, make_new: bool) -> str:
        key = "create_token" if make_new else "user_tokens_page"
        return _endpoints.auth_endpoints_v1[key].format_map(self._default_endpoint_mapping)

    def get_new_token(self, open: bool = False) -> None:
        """Print how to get a new token (it cannot be fetched programmatically).

        Args:
            open: Also open the token page in a web browser.
        """
        url = self._tokens_page(make_new=True)
        print(
            "New tokens must be acquired through a browser: log in at\n"
            f"    {url}\n"
            "then save the token with client.auth.save_token(token=<new_token>). "
            "Note: a new token invalidates nothing, but keep it secret."
        )
        if open:
            webbrowser.open(url)

    def setup_token(self, make_new: bool = True, open: bool = True) -> None:
        """Print how to obtain (or look up) a token and save it; optionally open the page.

        Args:
            make_new: Point to the page that creates a new token (else the token list page).
            open: Open the page in a web browser.
        """
        url = self._tokens_page(make_new=make_new)
        print(
            f"Get your token at\n    {url}\nand save it with client.auth.save_token(token=<token>)."
        )
        if open:
            webbrowser.open(url)

    # -- server calls ---------------------------------------------------------------------------
    def _get(self, key: str, params: Any = None, **values: Any) -> Any:
        url = _endpoints.auth_endpoints_v1[key].format_map(
            {**self._default_endpoint_mapping, **values}
        )
        http = new_http(self.request_header, self._transport)
        try:
            return decode_json(send_checked(http, "GET", url, params=params))
        finally:
            http.close()

    def get_tokens(self) -> list[dict[str, Any]]:
        """Get the tokens of this user: dicts with ``id``, ``token``, ``user_id``, ..."""
        return self._get("get_tokens")

    def get_user_information(self, user_ids: Iterable[int]) -> list[dict[str, Any]]:
        """Get user data.

        Args:
            user_ids: User ids to look up.

        Raises:
            ValueError: An id is not an integer.
        """
        values: Iterable[Any] = [user_ids] if isinstance(user_ids, (int, str)) else user_ids
        ids = []
        for value in values:
            try:
                ids.append(str(int(value)))
            except (TypeError, ValueError):
                raise ValueError(f"user_ids must be integers, got {value!r}") from None
        return self._get("get_users", params={"id": ",".join(ids)})

    def get_user_cache(self) -> dict[str, Any]:
        """The auth server's record of the token's user: id, name, ``admin``,
        ``permissions_v2`` (``{dataset: [permission, ...]}``) and ``missing_tos``.

        Example:
            ```python
            me = client.auth.get_user_cache()
            can_edit = "edit" in me["permissions_v2"].get("minnie65_phase3", [])
            ```
        """
        return self._get("user_cache")

    def get_table_dataset(self, table_id: str, service_namespace: str = "datastack") -> str:
        """The auth dataset that governs ``table_id`` of a service (for a datastack: the
        dataset whose permissions apply to it).

        Args:
            table_id: The table, e.g. the datastack name.
            service_namespace: The service namespace the table belongs to.

        Raises:
            ServiceError: 404 when the auth server does not know the table.
        """
        return self._get(
            "service_table_dataset", service_namespace=service_namespace, table_id=table_id
        )

    def get_group_users(self, group_id: int) -> list[dict[str, Any]]:
        """Get the users of a group (an empty list if the group does not exist).

        Args:
            group_id: The group id.
        """
        try:
            return self._get("get_group_users", group_id=int(group_id))
        except ServiceError as exc:
            if exc.status_code == 404:
                return []
            raise
