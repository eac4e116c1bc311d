"""Credential block for CAVE (Connectome Annotation Versioning Engine) services.

One block holds what a `CAVEclient` needs: the global server, the default datastack, the token
(a `SecretStr`, masked in reprs, logs and the Prefect UI), and the session settings (retries,
connection pool, timeout, desired resolution of positions). Tasks take the block's *name* and
build their own client, so no token ever crosses a task boundary or lands in a flow parameter.

Example:
    ```python
    from prefect_neurodata.blocks import CaveCredentials

    CaveCredentials(
        server_address="https://global.daf-apis.com",
        datastack_name="minnie65_public",
        token="0123456789abcdef0123456789abcdef",
    ).save("cave")

    client = CaveCredentials.load("cave").get_client()
    print(client.materialize.get_versions())
    ```
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, field_validator

from prefect_neurodata.blocks._base import NeurodataCredentialsBlock, ServiceUrl

if TYPE_CHECKING:
    from prefect_neurodata.clients.cave.frameworkclient import CAVEclientFull, CAVEclientGlobal

CAVE_LOGO_URL = "https://caveconnectome.github.io/CAVEclient/images/logo-cleanwhite.png"
CAVE_DOCS_URL = "https://caveconnectome.github.io/CAVEclient/"

CONNECT_TIMEOUT_S = 10.0
"""Upper bound of the connect part of the timeout (the block's timeout bounds the read)."""


class CaveCredentials(NeurodataCredentialsBlock):
    """Where the CAVE services are and how to authenticate to them.

    Attributes:
        server_address: The global server (info, auth, schema and state services), e.g.
            ``https://global.daf-apis.com``; ``http://`` is accepted for loopback stand-ins.
        datastack_name: Datastack used when a task does not name one.
        token: The CAVE API token (sent as ``Authorization: Bearer``).
        max_retries: Retries of a transient failure (connection error, timeout, 429, 5xx) per
            request; writes are never resent blindly.
        pool_maxsize: Pooled connections per service (bounds concurrent partitions).
        desired_resolution: Resolution (nm per voxel) of positions returned by materialization
            queries, e.g. ``[4, 4, 40]``; None keeps each table's own resolution.
        timeout: Seconds to wait for a server's answer (read timeout of every request).

    Example:
        ```python
        from prefect_neurodata.blocks import CaveCredentials

        cave = CaveCredentials.load("BLOCK_NAME")
        client = cave.get_client()
        print(client.materialize.most_recent_version())
        ```
    """

    _block_type_name = "CAVE Credentials"
    _block_type_slug = "cave-credentials"
    _logo_url = CAVE_LOGO_URL  # type: ignore[assignment]  # Prefect types it HttpUrl; its own blocks assign str
    _documentation_url = CAVE_DOCS_URL  # type: ignore[assignment]  # Prefect types it HttpUrl; its own blocks assign str
    _description = (
        "Global server, datastack and API token of the CAVE connectomics services, with the "
        "session settings of the clients built from it."
    )

    server_address: ServiceUrl = Field(
        default="https://global.daf-apis.com",
        description="Global CAVE server (info, auth, schema, state) including the scheme.",
        title="Server address",
    )
    datastack_name: str | None = Field(
        default=None,
        description="Datastack used when a task does not name one.",
        title="Datastack",
    )
    token: SecretStr | None = Field(
        default=None,
        description="CAVE API token, sent as a Bearer token.",
        title="Token",
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries of a transient failure per request (writes are never resent).",
        title="Retries",
    )
    pool_maxsize: int = Field(
        default=10,
        ge=1,
        le=256,
        description="Pooled connections per service; bounds concurrent partition fetches.",
        title="Connection pool size",
    )
    desired_resolution: list[float] | None = Field(
        default=None,
        description="Resolution (nm per voxel) of returned positions, e.g. [4, 4, 40].",
        title="Desired resolution",
    )
    timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds to wait for a server's answer to one request.",
        title="Timeout (s)",
    )

    @field_validator("desired_resolution")
    @classmethod
    def _three_positive(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if len(value) != 3 or not all(x > 0 and math.isfinite(x) for x in value):
            raise ValueError(f"desired_resolution must be three positive numbers, got {value!r}")
        return [float(x) for x in value]

    @property
    def request_timeout(self) -> tuple[float, float]:
        """The ``(connect, read)`` timeout given to every request."""
        return (min(CONNECT_TIMEOUT_S, self.timeout), self.timeout)

    def get_client(
        self,
        datastack_name: str | None = None,
        version: int | None = None,
    ) -> CAVEclientFull | CAVEclientGlobal:
        """Build a `CAVEclient` from this block.

        Args:
            datastack_name: Overrides the block's datastack; with neither, a global client
                (auth, info, schema, state) is returned.
            version: Materialization version to pin (None: the most recent).

        Returns:
            A `CAVEclientFull` for a datastack, else a `CAVEclientGlobal`. Build one per task
            (clients are not shared across threads or processes).
        """
        from prefect_neurodata.clients.cave import CAVEclient

        return CAVEclient(
            datastack_name or self.datastack_name,
            server_address=self.server_address,
            auth_token=self.token.get_secret_value() if self.token else None,
            max_retries=self.max_retries,
            pool_maxsize=self.pool_maxsize,
            desired_resolution=self.desired_resolution,
            write_server_cache=False,
            version=version,
            timeout=self.request_timeout,
        )
