"""Connect to the document database (AWS DocumentDB / MongoDB) through an SSH tunnel.

Same classes, fields and defaults as ``aind_data_access_api.document_db_ssh``. Additions, all
optional: SSH key authentication (``ssh_pkey``), host-key checking (``ssh_host_key`` or
``ssh_known_hosts``), a configurable local port (``ssh_local_bind_port``; 0 picks a free one),
and the Mongo authentication mechanism/source. pymongo connects with
``directConnection=True``, so a server that advertises a replica set cannot lead the driver
around the tunnel.

Example:
    ```python
    from prefect_neurodata.clients.aind.document_db_ssh import (
        DocumentDbSSHClient, DocumentDbSSHCredentials)

    creds = DocumentDbSSHCredentials.from_secrets_manager("doc_db_secret", "ssh_secret")
    with DocumentDbSSHClient(creds) as client:
        print(client.collection.count_documents({}))
    ```
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from pydantic import SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from typing_extensions import Self

from prefect_neurodata.clients._extras import missing_extra
from prefect_neurodata.clients.aind.credentials import CoreCredentials
from prefect_neurodata.clients.aind.secrets import get_secret

try:
    from pymongo import MongoClient
    from sshtunnel import BaseSSHTunnelForwarderError, SSHTunnelForwarder
except ModuleNotFoundError as _exc:  # installed without the [aind] extra
    # Fail when a tunnel is opened, naming the extra, not when the package is imported.
    _MISSING_EXTRA: ImportError | None = missing_extra(_exc.name or "sshtunnel", "aind")
    MongoClient = SSHTunnelForwarder = None  # type: ignore[assignment,misc]
    BaseSSHTunnelForwarderError = OSError
else:
    _MISSING_EXTRA = None

logger = logging.getLogger("prefect_neurodata.aind.document_db_ssh")


class DocumentDbSSHCredentials(CoreCredentials):
    """Document store credentials with SSH tunneling (environment prefix ``DOC_DB_``).

    Attributes:
        host: The document database host as seen from the SSH server.
        port: Its port (27017).
        database: Default ``metadata_index``.
        collection: Default ``data_assets``.
        ssh_local_bind_address: Local address of the tunnel (``localhost``).
        ssh_local_bind_port: Local port of the tunnel; None uses ``port`` (as the official
            client does), 0 picks a free port.
        ssh_host: The SSH server.
        ssh_port: Its port (22).
        ssh_username: The SSH user.
        ssh_password: The SSH password (optional when ``ssh_pkey`` is given).
        ssh_pkey: Path of a private key file for SSH key authentication.
        ssh_pkey_password: Passphrase of that key.
        ssh_host_key: The SSH server's public key as an OpenSSH ``known_hosts`` line or
            ``"<type> <base64>"``; the connection fails when the server presents another key.
        ssh_known_hosts: Path of a ``known_hosts`` file to look the server's key up in.
        auth_mechanism: Mongo authentication mechanism (``SCRAM-SHA-1`` like DocumentDB).
        auth_source: Mongo authentication database (``admin``).
    """

    # merged with `CoreCredentials`' settings (case-insensitive, inputs hidden in errors)
    model_config = SettingsConfigDict(env_prefix="DOC_DB_", extra="ignore")

    host: str
    port: int = 27017
    database: str = "metadata_index"
    collection: str = "data_assets"
    ssh_local_bind_address: str = "localhost"
    ssh_local_bind_port: int | None = None
    ssh_host: str
    ssh_port: int = 22
    ssh_username: str
    ssh_password: SecretStr | None = None
    ssh_pkey: str | None = None
    ssh_pkey_password: SecretStr | None = None
    ssh_host_key: str | None = None
    ssh_known_hosts: str | None = None
    auth_mechanism: str = "SCRAM-SHA-1"
    auth_source: str = "admin"

    @model_validator(mode="after")
    def _require_ssh_secret(self) -> Self:
        if self.ssh_password is None and not self.ssh_pkey:
            raise ValueError("ssh_password or ssh_pkey must be set for the SSH tunnel")
        return self

    @classmethod
    def from_secrets_manager(cls, doc_db_secret_name: str, ssh_secret_name: str) -> Self:
        """Construct class from AWS Secrets Manager.

        Args:
            doc_db_secret_name: Secret with the document store credentials (host, port,
                username, password; other keys are ignored).
            ssh_secret_name: Secret with the SSH credentials (host, username, password, port);
                its keys are prefixed with ``ssh_``.

        Returns:
            The credentials; fields missing from both secrets come from ``DOC_DB_*`` variables.
        """
        docdb_secret = get_secret(doc_db_secret_name)
        ssh_secret = get_secret(ssh_secret_name)
        ssh_fields = {f"ssh_{key}": value for key, value in ssh_secret.items()}
        return cls(**{**docdb_secret, **ssh_fields})


def _host_key(credentials: DocumentDbSSHCredentials) -> Any:
    """The paramiko key the SSH server must present, or None when not checked."""
    import paramiko

    if credentials.ssh_host_key:
        parts = credentials.ssh_host_key.split()
        if len(parts) == 2:  # "<type> <base64>" without a host field
            parts = ["*", *parts]
        entry = paramiko.hostkeys.HostKeyEntry.from_line(" ".join(parts[:3]))
        if entry is None or entry.key is None:
            raise ValueError("ssh_host_key is not a known_hosts line or '<type> <base64>' key")
        return entry.key
    if credentials.ssh_known_hosts:
        path = os.path.expanduser(credentials.ssh_known_hosts)
        keys = paramiko.HostKeys(path)
        names = [credentials.ssh_host]
        if credentials.ssh_port != 22:
            names.insert(0, f"[{credentials.ssh_host}]:{credentials.ssh_port}")
        for name in names:
            found = keys.lookup(name)
            if found:
                return next(iter(found.values()))
        raise ValueError(
            f"no host key for {names[0]} in {path}: add it (ssh-keyscan) or pass ssh_host_key"
        )
    return None


def _abandon(tunnel: Any) -> None:
    """Release a tunnel whose start failed.

    ``SSHTunnelForwarder.stop()`` would wait forever for forwarding servers that never started
    serving, so their sockets and the SSH transport are closed directly instead.
    """
    for server in list(getattr(tunnel, "_server_list", [])):
        with contextlib.suppress(Exception):
            server.server_close()
    transport = getattr(tunnel, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()


class DocumentDbSSHClient:
    """A pymongo client to the document store through an SSH tunnel.

    Args:
        credentials: Where and how to connect.
    """

    def __init__(self, credentials: DocumentDbSSHCredentials) -> None:
        self.credentials = credentials
        self.database_name = credentials.database
        self.collection_name = credentials.collection
        self._client: Any = None
        self._ssh_server: Any = None
        self.ssh_connect_attempts = 3

    def __repr__(self) -> str:
        c = self.credentials
        return (
            f"DocumentDbSSHClient(ssh={c.ssh_username}@{c.ssh_host}:{c.ssh_port}, "
            f"host={c.host}:{c.port}, collection={c.database}.{c.collection})"
        )

    @property
    def collection(self) -> Any:
        """Collection of metadata records in Document Database."""
        if self._client is None:
            raise RuntimeError("the client is not started: call start() or use `with`")
        return self._client[self.database_name][self.collection_name]

    def _create_ssh_tunnel(self) -> Any:
        c = self.credentials
        local_port = c.port if c.ssh_local_bind_port is None else c.ssh_local_bind_port
        kwargs: dict[str, Any] = {
            "ssh_address_or_host": (c.ssh_host, c.ssh_port),
            "ssh_username": c.ssh_username,
        }
        if c.ssh_password is not None:
            kwargs["ssh_password"] = c.ssh_password.get_secret_value()
        kwargs["remote_bind_address"] = (c.host, c.port)
        kwargs["local_bind_address"] = (c.ssh_local_bind_address, local_port)
        host_key = _host_key(c)
        if host_key is not None:
            kwargs["ssh_host_key"] = host_key
        if c.ssh_pkey:
            # Only the given key: no agent, no ~/.ssh keys, so the login is predictable.
            kwargs.update(
                ssh_pkey=os.path.expanduser(c.ssh_pkey),
                allow_agent=False,
                host_pkey_directories=[],
            )
            if c.ssh_pkey_password is not None:
                kwargs["ssh_private_key_password"] = c.ssh_pkey_password.get_secret_value()
        # Without ssh_pkey, sshtunnel's defaults apply as in 1.10: the password, then the SSH
        # agent's keys and the keys in ~/.ssh are tried.
        return SSHTunnelForwarder(**kwargs)

    def _create_mongo_client(self, port: int) -> Any:
        c = self.credentials
        return MongoClient(
            host=c.ssh_local_bind_address,
            port=port,
            retryWrites=False,
            directConnection=True,
            username=c.username,
            password=c.password.get_secret_value(),
            authSource=c.auth_source,
            authMechanism=c.auth_mechanism,
        )

    def start(self) -> None:
        """Start the client and SSH tunnel.

        Opening the SSH session is retried (``ssh_connect_attempts`` times) because a busy
        gateway may drop a handshake; authentication and host-key failures are not retried.

        Example:
            ```python
            client = DocumentDbSSHClient(creds)
            client.start()
            try:
                print(client.collection.count_documents({}))
            finally:
                client.close()
            ```
        """
        if _MISSING_EXTRA is not None:
            raise _MISSING_EXTRA
        attempts = max(1, self.ssh_connect_attempts)
        for attempt in range(attempts):
            tunnel = self._create_ssh_tunnel()
            try:
                tunnel.start()
            except BaseSSHTunnelForwarderError:
                _abandon(tunnel)
                if attempt + 1 >= attempts:
                    raise
                time.sleep(0.2 * (attempt + 1))
                continue
            except BaseException:
                _abandon(tunnel)
                raise
            self._ssh_server = tunnel
            break
        c = self.credentials
        # The local port is the configured one (1.10: always ``port``), or the one the tunnel
        # picked when ssh_local_bind_port is 0.
        port = c.port if c.ssh_local_bind_port is None else self._ssh_server.local_bind_port
        try:
            self._client = self._create_mongo_client(port)
            server_info = self._client.server_info()
        except BaseException:
            self.close()
            raise
        # Root-logger messages as in 1.10 (callers' log handlers and filters rely on them).
        logging.info(server_info)
        logging.info(f"Connected to {c.host}:{c.port} as {c.username}")

    def close(self) -> None:
        """Close the client and SSH tunnel."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._ssh_server is not None:
            self._ssh_server.stop()
            self._ssh_server = None
        logging.info("DocDB SSH session closed.")

    def __enter__(self) -> DocumentDbSSHClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
