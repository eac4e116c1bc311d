"""Info service client (seed: ``caveclient.infoservice``): datastack and aligned-volume records.

Datastack records are cached per datastack in ``info_cache`` for the life of the client
(``use_stored=True``); `InfoServiceClientV2.refresh_stored_data` re-fetches them.

Example:
    ```python
    from prefect_neurodata.clients.cave.infoservice import InfoServiceClient

    info = InfoServiceClient("http://127.0.0.1:8080", datastack_name="test_stack")
    info.segmentation_source(format_for="neuroglancer")
    ```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from prefect_neurodata.clients.http import ServiceError, TransportConfig

from . import endpoints as _endpoints
from .base import (
    ApiVersion,
    ClientBaseWithDatastack,
    Service,
    document_shared_args,
    resolve_server_address,
    resolve_transport,
)
from .format_utils import formatter

SERVER_KEY = "i_server_address"


@document_shared_args
def InfoServiceClient(  # noqa: N802 - seed name
    server_address: str | None = None,
    datastack_name: str | None = None,
    auth_client: Any = None,
    api_version: ApiVersion = "latest",
    verify: bool | str = True,
    max_retries: int | None = None,
    pool_maxsize: int | None = None,
    pool_block: bool | None = None,
    over_client: Any = None,
    info_cache: dict[str, dict] | None = None,
    transport: TransportConfig | None = None,
) -> InfoServiceClientV2:
    """Create an info service client (API v2).

    Args:
        server_address: The global server (``http://`` accepted); None uses the default.
        datastack_name: Default datastack of the lookups.
        api_version: ``"latest"`` or 2.
        info_cache: Pre-computed ``{datastack: record}``, skipping lookups.
    """
    address = resolve_server_address(server_address)
    config = resolve_transport(transport, verify, max_retries, pool_maxsize, pool_block)
    options = {"over_client": over_client, "info_cache": info_cache}
    return SERVICE.connect(address, auth_client, api_version, config, datastack_name, **options)


class InfoServiceClientV2(ClientBaseWithDatastack):
    """Info service client for API v2 (see `InfoServiceClient` for the arguments)."""

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
        info_cache: dict[str, dict] | None = None,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_name, datastack_name)
        super().__init__(
            *seed, verify, max_retries, pool_maxsize, pool_block, over_client, transport
        )
        self.info_cache: dict[str, dict] = dict(info_cache) if info_cache else {}
        self._aligned_volume_cache: dict[int, dict] = {}

    def _default_aligned_volume(self) -> dict:
        if self.datastack_name is None:
            return {}
        return self.get_aligned_volume_info() or {}

    @property
    def aligned_volume_name(self) -> str | None:
        """Aligned volume of the default datastack (looked up on first use)."""
        return self._default_aligned_volume().get("name")

    @property
    def aligned_volume_id(self) -> int | None:
        """Id of the aligned volume of the default datastack (looked up on first use)."""
        return self._default_aligned_volume().get("id")

    def _datastack(self, datastack_name: str | None) -> str:
        name = datastack_name or self.datastack_name
        if name is None:
            raise ValueError("no datastack_name given and the client has no default datastack")
        return name

    def _cached_get(self, cache: dict, key: Any, url: str, use_stored: bool) -> Any:
        """GET ``url`` and keep the answer in ``cache[key]``; with ``use_stored``, a kept
        answer is returned without a request."""
        if use_stored and key in cache:
            return cache[key]
        record = self._json("GET", url)
        cache[key] = record
        return record

    # -- lookups ---------------------------------------------------------------------------
    def get_datastacks(self) -> list[str]:
        """Names of the datastacks the caller may view."""
        return self._json("GET", self._url("datastacks"))

    def get_datastack_info(
        self, datastack_name: str | None = None, use_stored: bool = True
    ) -> dict | None:
        """The full record of a datastack (cached unless ``use_stored=False``).

        Raises:
            ValueError: No datastack given and no default.
            ServiceError: The lookup failed (404 for an unknown datastack).
        """
        name = self._datastack(datastack_name)
        url = self._url("datastack_info", datastack_name=name)
        return self._cached_get(self.info_cache, name, url, use_stored)

    def get_aligned_volumes(self) -> list[str]:
        """Names of the aligned volumes."""
        return self._json("GET", self._url("aligned_volumes"))

    def get_aligned_volume_info(
        self, datastack_name: str | None = None, use_stored: bool = True
    ) -> dict | None:
        """The aligned-volume record of a datastack."""
        record = self.get_datastack_info(datastack_name, use_stored=use_stored) or {}
        return record.get("aligned_volume")

    def get_aligned_volume_info_by_id(
        self, aligned_volume_id: int | None = None, use_stored: bool = True
    ) -> dict:
        """The record of an aligned volume by id (default: the datastack's)."""
        if aligned_volume_id is None:
            aligned_volume_id = self.aligned_volume_id
        if aligned_volume_id is None:
            raise ValueError("no aligned_volume_id given and the client has no default")
        key = int(aligned_volume_id)
        url = self._url("aligned_volume_by_id", aligned_volume_id=key)
        return self._cached_get(self._aligned_volume_cache, key, url, use_stored)

    def get_datastacks_by_aligned_volume(self, aligned_volume: str | None = None) -> list[str]:
        """Datastacks built on an aligned volume (default: the datastack's).

        Raises:
            ValueError: No aligned volume given and no default.
        """
        aligned_volume = aligned_volume or self.aligned_volume_name
        if aligned_volume is None:
            raise ValueError("Must specify aligned_volume")
        return self._json(
            "GET",
            self._url("datastacks_from_aligned_volume", aligned_volume_name=aligned_volume),
        )

    def refresh_stored_data(self) -> None:
        """Re-fetch every cached datastack record."""
        for name in list(self.info_cache):
            self.get_datastack_info(name, use_stored=False)

    def _get_property(
        self, key: str, datastack_name: str | None, use_stored: bool, format_for: str = "raw"
    ) -> Any:
        record = self.get_datastack_info(datastack_name, use_stored=use_stored) or {}
        return formatter(format_for)(record.get(key))

    # -- derived values ----------------------------------------------------------------------
    def local_server(self, datastack_name: str | None = None, use_stored: bool = True) -> str:
        """The datastack's local server."""
        return self._get_property("local_server", datastack_name, use_stored)

    def annotation_endpoint(
        self, datastack_name: str | None = None, use_stored: bool = True
    ) -> str:
        """Location of the annotation engine (``local_server + "/annotation"``)."""
        return self.local_server(datastack_name, use_stored) + "/annotation"

    def segmentation_source(
        self, datastack_name: str | None = None, format_for: str = "raw", use_stored: bool = True
    ) -> str | None:
        """Cloud path of the chunkedgraph segmentation, formatted for ``format_for``
        (``raw``, ``cloudvolume``, ``neuroglancer``, ``cave_explorer``)."""
        return self._get_property("segmentation_source", datastack_name, use_stored, format_for)

    def image_source(
        self, datastack_name: str | None = None, use_stored: bool = True, format_for: str = "raw"
    ) -> str | None:
        """Cloud path of the imagery, formatted for ``format_for``."""
        record = self.get_datastack_info(datastack_name, use_stored=use_stored) or {}
        aligned = record.get("aligned_volume") or {}
        return formatter(format_for)(aligned.get("image_source"))

    def synapse_segmentation_source(
        self, datastack_name: str | None = None, use_stored: bool = True, format_for: str = "raw"
    ) -> str | None:
        """Cloud path of the synapse segmentation, formatted for ``format_for``."""
        return self._get_property(
            "synapse_segmentation_source", datastack_name, use_stored, format_for
        )

    def viewer_site(self, datastack_name: str | None = None, use_stored: bool = True) -> str | None:
        """Base Neuroglancer URL of the datastack."""
        return self._get_property("viewer_site", datastack_name, use_stored)

    def viewer_resolution(
        self, datastack_name: str | None = None, use_stored: bool = True
    ) -> np.ndarray:
        """Viewer voxel resolution as a 3-element array (x, y, z nm)."""
        record = self.get_datastack_info(datastack_name, use_stored=use_stored) or {}
        return np.array([record.get(f"viewer_resolution_{axis}") for axis in "xyz"], dtype=float)

    # -- CloudVolume -------------------------------------------------------------------------
    def _cloudvolume(self, path: str | None, secrets: Any, kwargs: dict[str, Any]) -> Any:
        try:
            import cloudvolume
        except ImportError as exc:
            raise ImportError(
                "cloudvolume is not installed; pip install cloud-volume to use this method"
            ) from exc
        options = {"use_https": True, "bounded": False, "fill_missing": True, **kwargs}
        if secrets is not None:
            options.setdefault("secrets", secrets)
        return cloudvolume.CloudVolume(path, **options)

    def image_cloudvolume(self, **kwargs: Any) -> Any:
        """A CloudVolume of the imagery (needs ``cloud-volume``)."""
        return self._cloudvolume(self.image_source(format_for="cloudvolume"), None, kwargs)

    def segmentation_cloudvolume(self, use_client_secret: bool = True, **kwargs: Any) -> Any:
        """A CloudVolume of the segmentation (needs ``cloud-volume``); graphene sources get the
        client's token as a secret."""
        path = self.segmentation_source(format_for="cloudvolume")
        secrets = None
        if use_client_secret and path and path.startswith("graphene://"):
            auth = getattr(self._fc, "auth", None)
            token = getattr(auth, "token", None)
            if token:
                secrets = {"token": token}
        return self._cloudvolume(path, secrets, kwargs)

    # -- helpers used by CAVEclient --------------------------------------------------------------
    def check_datastack(self, datastack_name: str) -> None:
        """Fetch a datastack record, turning a 404 into a clear ValueError."""
        try:
            self.get_datastack_info(datastack_name)
        except ServiceError as exc:
            if exc.status_code == 404:
                raise ValueError(
                    f"datastack {datastack_name!r} is not known to the info service at "
                    f"{self.server_address}"
                ) from exc
            raise


SERVICE = Service(
    InfoServiceClientV2,
    SERVER_KEY,
    _endpoints.infoservice_common,
    _endpoints.infoservice_api_versions,
)
"""The info service as `InfoServiceClient` connects to it."""
