"""The framework client (seed: ``caveclient.frameworkclient``): one object holding every CAVE
subclient, sharing the datastack, the servers and the token.

``CAVEclient(datastack_name, server_address=...)`` returns a `CAVEclientFull` (or, without a
datastack or with ``global_only=True``, a `CAVEclientGlobal` that only has ``auth``, ``info``,
``schema`` and ``state``). Construction asks the info service for the datastack record (unless
``info_cache`` holds it); every subclient is created lazily on first access, so an outage of one
service (say materialization) does not prevent using the others.

Example:
    ```python
    from prefect_neurodata.clients.cave import CAVEclient

    client = CAVEclient(
        "my_datastack",
        server_address="http://127.0.0.1:8080",
        auth_token="0123456789abcdef0123456789abcdef",
    )
    client.info.segmentation_source()
    client.chunkedgraph.get_roots([97557743795364048])
    client.materialize.query_table("synapses", limit=10)
    ```
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from prefect_neurodata.clients.concurrency import PicklableLock
from prefect_neurodata.clients.http import Timeout, TransportConfig, loads
from prefect_neurodata.errors import NeurodataError

from .annotationengine import AnnotationClient, AnnotationClientV2
from .auth import AuthClient, default_token_file, default_token_location, write_json_private
from .base import logger, resolve_server_address, resolve_transport
from .chunkedgraph import ChunkedGraphClient, ChunkedGraphClientV1
from .emannotationschemas import SchemaClient, SchemaClientLegacy
from .infoservice import InfoServiceClient, InfoServiceClientV2
from .jsonservice import JSONService, JSONServiceV1
from .l2cache import L2CacheClient, L2CacheClientLegacy
from .materializationengine import MaterializationClient, MaterializationClientV2

datastack_map_file = f"{default_token_location}/cave_datastack_to_server_map.json"
"""``{datastack: global server}`` written when a client names both (see `CAVEclient`)."""


SubclientT = TypeVar("SubclientT")


class GlobalClientError(NeurodataError):
    """A datastack-specific service was asked of a client that has no datastack."""


def _read_datastack_map() -> dict[str, str]:
    path = Path(os.path.expanduser(datastack_map_file))
    if not path.is_file():
        return {}
    try:
        data = loads(path.read_bytes())
    except ValueError:
        logger.warning("ignoring unreadable datastack map %s", path)
        return {}
    return data if isinstance(data, dict) else {}


def get_datastack_server(datastack_name: str) -> str | None:
    """The global server recorded for ``datastack_name`` in the datastack map, if any."""
    value = _read_datastack_map().get(datastack_name)
    return value if isinstance(value, str) and value else None


def write_datastack_server(datastack_name: str, server_address: str) -> None:
    """Record ``server_address`` as the global server of ``datastack_name``."""
    data = _read_datastack_map()
    if data.get(datastack_name) == server_address:
        return
    data[datastack_name] = server_address
    write_json_private(datastack_map_file, data)
    logger.warning(
        "wrote the global server of datastack %s (%s) to %s",
        datastack_name,
        server_address,
        datastack_map_file,
    )


class CAVEclient:
    """Create the right framework client: `CAVEclientFull` with a datastack, else
    `CAVEclientGlobal`.

    Args:
        datastack_name: The datastack; None (or ``global_only=True``) gives a global client.
        server_address: The global server (``http://`` accepted). None: the server recorded
            for the datastack in ``~/.cloudvolume/secrets/cave_datastack_to_server_map.json``,
            else ``https://global.daf-apis.com``.
        auth_token_file: JSON file with the token (None: the default lookup order).
        auth_token_key: Key of the token in the file (None: ``"token"``).
        auth_token: The token itself (beats files).
        global_only: Return a global client even with a datastack.
        max_retries: Retries of transient failures per request.
        pool_maxsize: Pooled connections per subclient.
        pool_block: Block when a pool is exhausted.
        desired_resolution: Default resolution of positions in materialization queries.
        info_cache: Pre-computed ``{datastack: info record}`` (no info lookup).
        write_server_cache: Record the datastack's server when both are given.
        version: Materialization version to pin (also pins the chunkedgraph timestamp).
        timeout: ``(connect, read)`` seconds for every request of every subclient, or one
            number for both; None keeps the session default (`set_session_defaults`).
        transport: Every transport setting at once (`TransportConfig`: timeout, retry policy,
            pool, TLS verify, session factory); the arguments above override it when given.

    Example:
        ```python
        client = CAVEclient("minnie65_public", timeout=(5, 120), max_retries=5)
        ```
    """

    def __new__(  # type: ignore[misc]
        cls,
        datastack_name: str | None = None,
        server_address: str | None = None,
        auth_token_file: str | None = None,
        auth_token_key: str | None = None,
        auth_token: str | None = None,
        global_only: bool = False,
        max_retries: int | None = 3,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        desired_resolution: Iterable[float] | None = None,
        info_cache: dict[str, dict] | None = None,
        write_server_cache: bool = True,
        version: int | None = None,
        timeout: Timeout = None,
        transport: TransportConfig | None = None,
    ) -> CAVEclientGlobal:
        if server_address is None and datastack_name is not None:
            server_address = get_datastack_server(datastack_name)
        elif server_address is not None and datastack_name is not None and write_server_cache:
            write_datastack_server(datastack_name, resolve_server_address(server_address))
        # What the global and the datastack client take alike, named once.
        shared: dict[str, Any] = {
            "server_address": server_address,
            "auth_token_file": auth_token_file,
            "auth_token_key": auth_token_key,
            "auth_token": auth_token,
            "max_retries": max_retries,
            "pool_maxsize": pool_maxsize,
            "pool_block": pool_block,
            "info_cache": info_cache,
            "timeout": timeout,
            "transport": transport,
        }
        if global_only or datastack_name is None:
            return CAVEclientGlobal(**shared)
        return CAVEclientFull(
            datastack_name, desired_resolution=desired_resolution, version=version, **shared
        )


class CAVEclientGlobal:
    """Framework client for the global services: ``auth``, ``info``, ``schema``, ``state``.

    See `CAVEclient` for the arguments. Datastack-specific services (``chunkedgraph``,
    ``annotation``, ``materialize``, ``l2cache``) raise `GlobalClientError`.
    """

    def __init__(
        self,
        server_address: str | None = None,
        auth_token_file: str | None = None,
        auth_token_key: str | None = None,
        auth_token: str | None = None,
        max_retries: int | None = 3,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        info_cache: dict[str, dict] | None = None,
        timeout: Timeout = None,
        transport: TransportConfig | None = None,
    ) -> None:
        self._server_address = resolve_server_address(server_address)
        self._transport = resolve_transport(
            transport, True, max_retries, pool_maxsize, pool_block
        ).with_overrides(timeout=timeout)
        self._info_cache = info_cache
        self._lock = PicklableLock()
        if auth_token_file == default_token_file:
            # The seed's default path: use the full lookup order (server file first).
            auth_token_file = None
        self._auth = AuthClient(
            token_file=auth_token_file,
            token_key=auth_token_key,
            token=auth_token,
            server_address=self._server_address,
            transport=self._transport,
        )
        self._reset_services()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(datastack_name={self.datastack_name!r}, "
            f"server_address={self._server_address!r})"
        )

    def _reset_services(self) -> None:
        self._info: InfoServiceClientV2 | None = None
        self._schema: SchemaClientLegacy | None = None
        self._state: JSONServiceV1 | None = None

    def _lazy(self, attr: str, build: Callable[[], SubclientT]) -> SubclientT:
        value = getattr(self, attr)
        if value is None:
            with self._lock:
                value = getattr(self, attr)
                if value is None:
                    value = build()
                    setattr(self, attr, value)
        return value

    def _subclient(self, factory: Callable[..., SubclientT], **kwargs: Any) -> SubclientT:
        """Build a subclient with this client's token and transport, owned by this client."""
        return factory(auth_client=self.auth, over_client=self, transport=self._transport, **kwargs)

    @property
    def transport(self) -> TransportConfig:
        """The transport settings (timeout, retries, pool, TLS) every subclient is built with."""
        return self._transport

    # -- seed surface ---------------------------------------------------------------------------
    @property
    def server_address(self) -> str:
        """The global server."""
        return self._server_address

    @property
    def datastack_name(self) -> str | None:
        """The datastack (None for a global client)."""
        return None

    @property
    def auth(self) -> AuthClient:
        """The `AuthClient` holding the token."""
        return self._auth

    @property
    def info(self) -> InfoServiceClientV2:
        """The info service client (`InfoServiceClientV2`)."""
        return self._lazy(
            "_info",
            lambda: self._subclient(
                InfoServiceClient,
                server_address=self._server_address,
                datastack_name=self.datastack_name,
                info_cache=self._info_cache,
            ),
        )

    @property
    def schema(self) -> SchemaClientLegacy:
        """The schema service client (`SchemaClientLegacy`)."""
        return self._lazy(
            "_schema",
            lambda: self._subclient(SchemaClient, server_address=self._server_address),
        )

    @property
    def state(self) -> JSONServiceV1:
        """The JSON state service client (`JSONServiceV1`)."""
        return self._lazy(
            "_state",
            lambda: self._subclient(
                JSONService, server_address=self._server_address, ngl_url=self._ngl_url()
            ),
        )

    def _ngl_url(self) -> str | None:
        return None

    def _global_error(self, service: str) -> GlobalClientError:
        return GlobalClientError(
            f"{service} needs a datastack: create the client with CAVEclient(datastack_name=...)"
        )

    @property
    def annotation(self) -> Any:
        """Not available without a datastack."""
        raise self._global_error("annotation")

    @property
    def chunkedgraph(self) -> Any:
        """Not available without a datastack."""
        raise self._global_error("chunkedgraph")

    @property
    def materialize(self) -> Any:
        """Not available without a datastack."""
        raise self._global_error("materialize")

    @property
    def l2cache(self) -> Any:
        """Not available without a datastack."""
        raise self._global_error("l2cache")

    def change_auth(
        self,
        auth_token_file: str | None = None,
        auth_token_key: str | None = None,
        auth_token: str | None = None,
    ) -> None:
        """Change the token and reset every subclient.

        Args:
            auth_token_file: New token file (default: the current one).
            auth_token_key: New key in the file (default: the current one).
            auth_token: The new token itself (default: read from the file).
        """
        if auth_token_file is None:
            auth_token_file = self._auth.token_file
        if auth_token_key is None:
            auth_token_key = self._auth.token_key
        local_server = self._auth.local_server
        self._auth = AuthClient(
            token_file=auth_token_file,
            token_key=auth_token_key,
            token=auth_token,
            server_address=self._server_address,
            transport=self._transport,
        )
        self._auth.local_server = local_server
        with self._lock:
            self._reset_services()


class CAVEclientFull(CAVEclientGlobal):
    """Framework client for one datastack: global services plus ``chunkedgraph``,
    ``materialize``, ``annotation`` and ``l2cache`` on the datastack's local server.

    See `CAVEclient` for the arguments.

    Raises:
        ValueError: The info service does not know the datastack.
    """

    def __init__(
        self,
        datastack_name: str | None = None,
        server_address: str | None = None,
        auth_token_file: str | None = default_token_file,
        auth_token_key: str | None = "token",
        auth_token: str | None = None,
        max_retries: int | None = 3,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        desired_resolution: Iterable[float] | None = None,
        info_cache: dict[str, dict] | None = None,
        version: int | None = None,
        timeout: Timeout = None,
        transport: TransportConfig | None = None,
    ) -> None:
        if not datastack_name:
            raise ValueError("CAVEclientFull needs a datastack_name")
        self._datastack_name = datastack_name
        self._desired_resolution = (
            list(desired_resolution) if desired_resolution is not None else None
        )
        super().__init__(
            server_address=server_address,
            auth_token_file=auth_token_file,
            auth_token_key=auth_token_key,
            auth_token=auth_token,
            max_retries=max_retries,
            pool_maxsize=pool_maxsize,
            pool_block=pool_block,
            info_cache=info_cache,
            timeout=timeout,
            transport=transport,
        )
        self.info.check_datastack(datastack_name)
        self.local_server: str = self.info.local_server().rstrip("/")
        self._auth.local_server = self.local_server
        self._aligned_volume_name = self.info.aligned_volume_name
        self._version: int | None = None
        self._timestamp: dt.datetime | None = None
        if version is not None:
            self.version = version

    def _reset_services(self) -> None:
        super()._reset_services()
        self._chunkedgraph: ChunkedGraphClientV1 | None = None
        self._annotation: AnnotationClientV2 | None = None
        self._materialize: MaterializationClientV2 | None = None
        self._l2cache: L2CacheClientLegacy | None = None

    def _ngl_url(self) -> str | None:
        return self.info.viewer_site()

    @property
    def datastack_name(self) -> str:
        """The datastack."""
        return self._datastack_name

    @property
    def desired_resolution(self) -> list[float] | None:
        """Default resolution of positions in materialization queries.

        Assignable, as in caveclient 5.25, where it is a plain attribute: the value is used
        when the materialization client is built (a client built before keeps its own).

        Example:
            ```python
            client.desired_resolution = [4, 4, 40]
            ```
        """
        return self._desired_resolution

    @desired_resolution.setter
    def desired_resolution(self, value: Iterable[float] | None) -> None:
        self._desired_resolution = list(value) if value is not None else None

    @property
    def version(self) -> int | None:
        """The pinned materialization version (None: not pinned)."""
        return self._version

    @version.setter
    def version(self, version: int | None) -> None:
        if version is None:
            self._version = None
            self._timestamp = None
        else:
            version = int(version)
            versions = self.materialize.get_versions(expired=True)
            if version not in versions:
                raise ValueError(
                    f"version {version} is not available for datastack "
                    f"{self._datastack_name!r} (available: {sorted(versions)})"
                )
            self._timestamp = self.materialize.get_timestamp(version)
            self._version = version
        if self._materialize is not None:
            self._materialize._version = self._version

    @property
    def timestamp(self) -> dt.datetime | None:
        """Timestamp of the pinned version (None when no version is pinned)."""
        return self._timestamp

    def _pcg_table_name(self) -> str:
        source = self.info.segmentation_source()
        if not source:
            raise ValueError(f"datastack {self._datastack_name!r} has no segmentation source")
        return source.rstrip("/").split("/")[-1]

    def _segmentation_subclient(self, attr: str, factory: Callable[..., SubclientT]) -> SubclientT:
        """A subclient of the datastack's segmentation (its chunkedgraph table), built once."""
        return self._lazy(
            attr,
            lambda: self._subclient(
                factory, server_address=self.local_server, table_name=self._pcg_table_name()
            ),
        )

    @property
    def chunkedgraph(self) -> ChunkedGraphClientV1:
        """The chunkedgraph client (`ChunkedGraphClientV1`) of the datastack's segmentation."""
        return self._segmentation_subclient("_chunkedgraph", ChunkedGraphClient)

    @property
    def l2cache(self) -> L2CacheClientLegacy:
        """The L2 cache client (`L2CacheClientLegacy`)."""
        return self._segmentation_subclient("_l2cache", L2CacheClient)

    @property
    def materialize(self) -> MaterializationClientV2:
        """The materialization client (`MaterializationClientV3` or ``V2``)."""

        def build() -> MaterializationClientV2:
            record = self.info.get_datastack_info() or {}
            return self._subclient(
                MaterializationClient,
                server_address=self.local_server,
                datastack_name=self._datastack_name,
                synapse_table=record.get("synapse_table"),
                version=self._version,
                desired_resolution=self._desired_resolution,
            )

        return self._lazy("_materialize", build)

    @property
    def annotation(self) -> AnnotationClientV2:
        """The annotation engine client (`AnnotationClientV2`), keyed by aligned volume."""

        def build() -> AnnotationClientV2:
            return self._subclient(
                AnnotationClient,
                server_address=self.local_server,
                dataset_name=self._datastack_name,
                aligned_volume_name=self._aligned_volume_name,
            )

        return self._lazy("_annotation", build)


__all__ = [
    "CAVEclient",
    "CAVEclientFull",
    "CAVEclientGlobal",
    "GlobalClientError",
    "datastack_map_file",
]
