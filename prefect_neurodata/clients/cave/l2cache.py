"""L2 cache client (seed: ``caveclient.l2cache``): per-L2-node statistics.

Example:
    ```python
    l2_ids = client.chunkedgraph.get_leaves(root_id, stop_layer=2)
    stats = client.l2cache.get_l2data(l2_ids, attributes=["size_nm3", "rep_coord_nm"])
    ```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

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
from .node_ids import valid_node_ids

SERVER_KEY = "l2cache_server_address"


@document_shared_args
def L2CacheClient(  # noqa: N802 - seed name
    server_address: str | None = None,
    table_name: str | None = None,
    auth_client: Any = None,
    api_version: ApiVersion = "latest",
    max_retries: int | None = None,
    pool_maxsize: int | None = None,
    pool_block: bool | None = None,
    over_client: Any = None,
    verify: bool | str = True,
    transport: TransportConfig | None = None,
) -> L2CacheClientLegacy:
    """Create an L2 cache client.

    Args:
        server_address: The local server; None uses the default global server.
        table_name: The PCG table (same as the chunkedgraph's).
        api_version: ``"latest"`` or 1.
    """
    address = resolve_server_address(server_address)
    config = resolve_transport(transport, verify, max_retries, pool_maxsize, pool_block)
    return SERVICE.connect(
        address, auth_client, api_version, config, table_name, over_client=over_client
    )


class L2CacheClientLegacy(ClientBase):
    """L2 cache client (see `L2CacheClient` for the arguments)."""

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_name: str,
        table_name: str | None = None,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        verify: bool | str = True,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_name)
        super().__init__(
            *seed, verify, max_retries, pool_maxsize, pool_block, over_client, transport
        )
        self._table_name = table_name
        self._default_url_mapping["table_id"] = table_name
        self._attributes: list[str] | None = None
        self._table_mapping: dict | None = None

    @property
    def default_url_mapping(self) -> dict[str, Any]:
        """Placeholder values for the URL templates (server and ``table_id``)."""
        return dict(self._default_url_mapping)

    def get_l2data(self, l2_ids: Any, attributes: Iterable[str] | None = None) -> dict:
        """Get attribute statistics of L2 ids.

        Args:
            l2_ids: L2 ids (list or array).
            attributes: Attributes to fetch (see `attributes`); None for all.

        Returns:
            ``{"<l2_id>": {attribute: value}}`` (``{}`` for an id not cached yet).

        Raises:
            ValueError: An id is not an integer in [0, 2**63) (before any request).
        """
        ids = valid_node_ids(l2_ids, "l2_ids")
        params: dict[str, Any] = {"int64_as_str": False}
        if attributes is not None:
            names = [attributes] if isinstance(attributes, str) else list(attributes)
            params["attribute_names"] = ",".join(names)
        return self._json(
            "POST",
            self._url("l2cache_data"),
            params=params,
            json={"l2_ids": ids},
            idempotent=True,
        )

    def get_l2data_table(
        self, l2_ids: Any, attributes: Iterable[str] | None = None, split_columns: bool = True
    ) -> pd.DataFrame:
        """`get_l2data` as a DataFrame indexed by ``l2_id`` (``int64``, like the chunkedgraph's
        node ids), vector attributes split into ``_x/_y/_z`` style columns with
        ``split_columns``."""
        data = self.get_l2data(l2_ids, attributes=attributes)
        rows = []
        for key, values in data.items():
            row: dict[str, Any] = {"l2_id": int(key)}
            for name, value in (values or {}).items():
                if not split_columns or not isinstance(value, list):
                    row[name] = value
                elif name in ("rep_coord_nm",):
                    row.update({f"{name}_{a}": v for a, v in zip("xyz", value, strict=False)})
                elif name == "pca_val":
                    row.update({f"{name}_{i}": v for i, v in enumerate(value)})
                elif name == "pca":
                    for i, vec in enumerate(value):
                        row.update({f"pca_{i}_{a}": v for a, v in zip("xyz", vec, strict=False)})
                elif name == "chunk_intersect_count":
                    for side, vec in zip(("bottom", "top"), value, strict=False):
                        row.update(
                            {f"{name}_{a}_{side}": v for a, v in zip("xyz", vec, strict=False)}
                        )
                else:
                    row[name] = value
            rows.append(row)
        return pd.DataFrame(rows).set_index("l2_id") if rows else pd.DataFrame()

    def cache_metadata(self) -> dict:
        """``{attribute: dtype}`` of the cache."""
        return self._json("GET", self._url("l2cache_meta"))

    @property
    def attributes(self) -> list[str]:
        """Names of the available attributes (fetched once)."""
        if self._attributes is None:
            self._attributes = list(self.cache_metadata())
        return self._attributes

    def table_mapping(self) -> dict:
        """``{pcg_table: {"l2cache_id", "cv_path"}}`` (fetched once)."""
        if self._table_mapping is None:
            self._table_mapping = self._json("GET", self._url("l2cache_table_mapping"))
        return self._table_mapping

    def has_cache(self, datastack_name: str | None = None) -> bool:
        """Whether the datastack's segmentation has an L2 cache.

        True when the segmentation source is ``graphene://`` and its table is in
        `table_mapping`; a 404 from the mapping means no cache (with a warning).
        """
        info = getattr(self._fc, "info", None)
        if info is None:
            raise ValueError(
                "has_cache needs the client to belong to a CAVEclient with a datastack"
            )
        source = info.segmentation_source(datastack_name)
        if not source or not source.startswith("graphene://"):
            return False
        table = source.rstrip("/").split("/")[-1]
        try:
            mapping = self.table_mapping()
        except ServiceError as exc:
            if exc.status_code == 404:
                logger.warning("the L2 cache has no table mapping (404); assuming no cache")
                return False
            raise
        return table in mapping


SERVICE = Service(
    L2CacheClientLegacy, SERVER_KEY, _endpoints.l2cache_common, _endpoints.l2cache_api_versions
)
"""The L2 cache service as `L2CacheClient` connects to it."""
