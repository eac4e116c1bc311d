"""Credential block for direct DocumentDB access through an SSH tunnel.

Example:
    ```python
    from prefect_neurodata.blocks import DocumentDbSshCredentials

    block = DocumentDbSshCredentials.load("aind-docdb-ssh")
    with block.get_client() as client:
        print(client.collection.count_documents({}))
    ```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr

from prefect_neurodata.blocks._base import AindCredentialsBlock

if TYPE_CHECKING:
    from prefect_neurodata.clients.aind.document_db_ssh import DocumentDbSSHClient


class DocumentDbSshCredentials(AindCredentialsBlock):
    """DocumentDB (MongoDB wire) credentials and the SSH bastion that reaches it.

    Attributes:
        host: DocumentDB host as seen from the SSH server.
        port: DocumentDB port (also the local end of the tunnel).
        username: DocumentDB user.
        password: DocumentDB password.
        database: Database name.
        collection: Collection name.
        ssh_local_bind_address: Local address the tunnel binds.
        ssh_host: SSH server host.
        ssh_port: SSH server port.
        ssh_username: SSH user.
        ssh_password: SSH password.
        ssh_host_key: The SSH server's public key (a ``known_hosts`` line or
            ``"<type> <base64>"``). When given, or when ``ssh_known_hosts`` is, the tunnel
            refuses a server that presents any other key.
        ssh_known_hosts: Path of a ``known_hosts`` file on the worker to look the server's key up
            in; a missing entry fails before connecting.

    Host keys: with neither ``ssh_host_key`` nor ``ssh_known_hosts`` set, the server's key is
    NOT checked (the behaviour of aind-data-access-api 1.10 and sshtunnel's default), so a
    machine that can intercept the connection could impersonate the bastion and read the
    DocumentDB password. Set one of them in production (``ssh-keyscan -p PORT HOST`` prints
    the line to paste).

    Example:
        ```python
        from prefect_neurodata.blocks import DocumentDbSshCredentials

        block = DocumentDbSshCredentials.load("BLOCK_NAME")
        client = block.get_client()
        client.start()
        ```
    """

    _block_type_name = "AIND DocumentDB SSH Credentials"
    _block_type_slug = "aind-documentdb-ssh-credentials"
    _description = "DocumentDB credentials plus the SSH tunnel used to reach the database."

    host: str = Field(description="DocumentDB host as seen from the SSH server.", title="Host")
    port: int = Field(default=27017, description="DocumentDB port.", title="Port")
    username: str = Field(description="DocumentDB user.", title="Username")
    password: SecretStr = Field(description="DocumentDB password.", title="Password")
    database: str = Field(default="metadata_index", description="Database name.", title="Database")
    collection: str = Field(
        default="data_assets", description="Collection name.", title="Collection"
    )
    ssh_local_bind_address: str = Field(
        default="localhost",
        description="Local address the SSH tunnel binds.",
        title="Local bind address",
    )
    ssh_host: str = Field(description="SSH server host.", title="SSH host")
    ssh_port: int = Field(default=22, description="SSH server port.", title="SSH port")
    ssh_username: str = Field(description="SSH user.", title="SSH username")
    ssh_password: SecretStr = Field(description="SSH password.", title="SSH password")
    ssh_host_key: str | None = Field(
        default=None,
        description=(
            "The SSH server's public key: a known_hosts line or '<type> <base64>' (see "
            "ssh-keyscan). When set, a server presenting another key is refused. When neither "
            "this nor 'SSH known_hosts file' is set, the server's key is not checked."
        ),
        title="SSH host key",
    )
    ssh_known_hosts: str | None = Field(
        default=None,
        description=(
            "Path of a known_hosts file on the worker holding the SSH server's key; the "
            "connection is refused when the key is missing or different."
        ),
        title="SSH known_hosts file",
    )

    def get_client(self) -> DocumentDbSSHClient:
        """Build a ``DocumentDbSSHClient``; call ``start()`` or use it as a context manager."""
        from prefect_neurodata.clients.aind.document_db_ssh import (
            DocumentDbSSHClient,
            DocumentDbSSHCredentials,
        )

        credentials = DocumentDbSSHCredentials(**self._values_for(DocumentDbSSHCredentials))
        return DocumentDbSSHClient(credentials=credentials)
