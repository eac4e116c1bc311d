"""Schema service client (seed: ``caveclient.emannotationschemas``).

Example:
    ```python
    from prefect_neurodata.clients.cave.emannotationschemas import SchemaClient

    schema = SchemaClient("http://127.0.0.1:8080")
    schema.schema_definition("synapse")
    ```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect_neurodata.clients.http import ServiceError, TransportConfig

from . import endpoints as _endpoints
from .base import (
    ApiVersion,
    ClientBase,
    Service,
    document_shared_args,
    logger,
    resolve_server_address,
    resolve_transport,
)

SERVER_KEY = "emas_server_address"


@document_shared_args
def SchemaClient(  # noqa: N802 - seed name
    server_address: str | None = None,
    auth_client: Any = None,
    api_version: ApiVersion = "latest",
    max_retries: int | None = None,
    pool_maxsize: int | None = None,
    pool_block: bool | None = None,
    over_client: Any = None,
    transport: TransportConfig | None = None,
) -> SchemaClientLegacy:
    """Create a schema client (``SchemaClientLegacy`` for API versions 1 and 2).

    Args:
        server_address: The global server; None uses the default.
        api_version: ``"latest"`` (asks ``schema/versions``), 1 or 2.
    """
    address = resolve_server_address(server_address)
    config = resolve_transport(transport, True, max_retries, pool_maxsize, pool_block)
    return SERVICE.connect(address, auth_client, api_version, config, over_client=over_client)


class SchemaClientLegacy(ClientBase):
    """Schema service client (see `SchemaClient` for the arguments)."""

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_name: str,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_name)
        super().__init__(*seed, True, max_retries, pool_maxsize, pool_block, over_client, transport)

    def get_schemas(self) -> list[str]:
        """Names of the schema types the service knows."""
        return self._json("GET", self._url("schema"))

    def schema_definition(self, schema_type: str) -> dict:
        """The JSON Schema of ``schema_type``.

        Raises:
            ServiceError: 404 for an unknown schema type.
        """
        if not isinstance(schema_type, str) or not schema_type:
            raise ValueError(f"schema_type must be a non-empty string, got {schema_type!r}")
        return self._json("GET", self._url("schema_definition", schema_type=schema_type))

    def schema_definition_multi(self, schema_types: Iterable[str]) -> dict | None:
        """JSON Schemas of several types, ``{name: schema}``; None (with a warning) on failure.

        A read sent as POST with the names in the query string.
        """
        names = [schema_types] if isinstance(schema_types, str) else list(schema_types)
        try:
            return self._json(
                "POST",
                self._url("schema_definition_multi"),
                params={"schema_names": ",".join(names)},
                idempotent=True,
            )
        except ServiceError as exc:
            logger.warning("could not fetch schema definitions %s: %s", names, exc)
            return None

    def schema_definition_all(self) -> dict | None:
        """JSON Schemas of every type, ``{name: schema}``; None (with a warning) on failure."""
        try:
            return self._json("GET", self._url("schema_definition_all"))
        except ServiceError as exc:
            logger.warning("could not fetch all schema definitions: %s", exc)
            return None


SERVICE = Service(
    SchemaClientLegacy, SERVER_KEY, _endpoints.schema_common, _endpoints.schema_api_versions
)
"""The schema service as `SchemaClient` connects to it."""
