"""JSON state service client (seed: ``caveclient.jsonservice``): Neuroglancer states.

States are uploaded as raw JSON in which numpy integers (scalars and array elements) and
Python integers beyond 2**53 are written as strings, so segment ids survive JavaScript's float
numbers (`neuroglancer_json_encoder`).

Example:
    ```python
    state_id = client.state.upload_state_json({"layers": [{"segments": [np.uint64(1)]}]})
    url = client.state.build_neuroglancer_url(state_id)
    ```
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from prefect_neurodata.clients.http import HttpClient, ServiceError, TransportConfig, decode_json

from . import endpoints as _endpoints
from .base import (
    ApiVersion,
    ClientBase,
    Service,
    document_shared_args,
    resolve_server_address,
    resolve_transport,
)

SERVER_KEY = "json_server_address"

_JS_SAFE_INT = 2**53


def neuroglancer_json_encoder(obj: Any) -> Any:
    """``default=`` hook of `json.dumps` for Neuroglancer states: integers as strings.

    numpy integers become strings; arrays become lists (their integer elements strings);
    numpy floats become floats; sets become lists.

    Raises:
        TypeError: The value cannot be encoded.
    """
    if isinstance(obj, np.integer):
        return str(int(obj))
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return [neuroglancer_json_encoder(v) if isinstance(v, np.generic) else v for v in obj]
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if hasattr(obj, "tolist") and type(obj).__module__.startswith("pandas"):
        return neuroglancer_json_encoder(np.asarray(obj))
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _prepare_state(obj: Any) -> Any:
    """Walk a state so that integers JavaScript cannot hold exactly become strings."""
    if isinstance(obj, dict):
        return {k: _prepare_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_prepare_state(v) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) >= _JS_SAFE_INT:
        return str(obj)
    return obj


def _dumps_state(json_state: Any) -> str:
    return json.dumps(_prepare_state(json_state), default=neuroglancer_json_encoder)


@document_shared_args
def JSONService(  # noqa: N802 - seed name
    server_address: str | None = None,
    auth_client: Any = None,
    api_version: ApiVersion = "latest",
    ngl_url: str | None = None,
    max_retries: int | None = None,
    pool_maxsize: int | None = None,
    pool_block: bool | None = None,
    over_client: Any = None,
    transport: TransportConfig | None = None,
) -> JSONServiceV1:
    """Create a JSON state service client.

    Args:
        server_address: The global server; None uses the default.
        api_version: ``"latest"``, 0 or 1.
        ngl_url: Default Neuroglancer deployment.
    """
    address = resolve_server_address(server_address)
    config = resolve_transport(transport, True, max_retries, pool_maxsize, pool_block)
    return SERVICE.connect(
        address, auth_client, api_version, config, ngl_url, over_client=over_client
    )


class JSONServiceV1(ClientBase):
    """JSON state service client (see `JSONService` for the arguments)."""

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_name: str,
        ngl_url: str | None,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_name)
        super().__init__(*seed, True, max_retries, pool_maxsize, pool_block, over_client, transport)
        self._ngl_url = ngl_url

    @property
    def ngl_url(self) -> str | None:
        """Default Neuroglancer deployment of this client."""
        return self._ngl_url

    @ngl_url.setter
    def ngl_url(self, new_ngl_url: str | None) -> None:
        self._ngl_url = new_ngl_url

    @property
    def state_service_endpoint(self) -> str:
        """Endpoint URL for posting JSON states."""
        return self._url("upload_state")

    def get_state_json(self, state_id: int | str) -> dict:
        """Download a Neuroglancer state by id (or by full URL)."""
        if isinstance(state_id, (int, np.integer)) or (
            isinstance(state_id, str) and state_id.isdigit()
        ):
            url = self._url("get_state", state_id=int(state_id))
        elif isinstance(state_id, str) and state_id.startswith(("http://", "https://")):
            url = state_id
        else:
            raise ValueError(f"state_id must be an int id or a URL, got {state_id!r}")
        return self._json("GET", url)

    def upload_state_json(
        self, json_state: dict, state_id: int | None = None, timestamp: Any = None
    ) -> int:
        """Upload a Neuroglancer state; returns its new id.

        Without ``state_id`` each call creates a new state, so the request is not retried
        after a possibly-delivered failure. Posting with a ``state_id`` (admin only) replaces
        that state and may be retried. ``timestamp`` is accepted for compatibility and, like
        the seed, not sent.

        Raises:
            ValueError: The server's answer holds no state id.
        """
        body = _dumps_state(json_state)
        if state_id is None:
            url = self._url("upload_state")
            idempotent = False
        else:
            url = self._url("upload_state_w_id", state_id=int(state_id))
            idempotent = True
        response = self._request(
            "POST",
            url,
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            idempotent=idempotent,
        )
        try:
            answer = decode_json(response)
        except ValueError:
            answer = response.text
        match = re.search(r".*/(\d+)", str(answer))
        if match is None:
            raise ValueError(f"the state service answered without a state id: {answer!r:.200}")
        return int(match.group(1))

    def save_state_json_local(
        self, json_state: dict, filename: str, overwrite: bool = False
    ) -> None:
        """Save a Neuroglancer state to a local JSON file (same encoding as uploads).

        Raises:
            ValueError: The file exists and ``overwrite`` is False.
        """
        if os.path.exists(filename) and not overwrite:
            raise ValueError(f"file {filename} exists; pass overwrite=True to replace it")
        with open(filename, "w", encoding="utf-8") as handle:
            handle.write(_dumps_state(json_state))

    def _resolve_ngl_url(self, ngl_url: str | None) -> str:
        if ngl_url:
            return ngl_url
        if self._ngl_url:
            return self._ngl_url
        return _endpoints.fallback_ngl_url

    def get_neuroglancer_info(self, ngl_url: str | None = None) -> dict:
        """The ``version.json`` of a Neuroglancer deployment (``{}`` if it has none).

        Sent without the CAVE token: the deployment is usually another host.
        """
        base = self._resolve_ngl_url(ngl_url).rstrip("/")
        url = _endpoints.ngl_endpoints_common["get_info"].format_map({"ngl_url": base})
        http = HttpClient(retry=self._http.retry, timeout=self._http.timeout)
        try:
            response = http.request("GET", url)
            info = decode_json(response)
        except ServiceError as exc:
            if exc.status_code == 404:
                return {}
            raise
        except ValueError:
            return {}
        finally:
            http.close()
        return info if isinstance(info, dict) else {}

    def build_neuroglancer_url(
        self,
        state_id: int | str,
        ngl_url: str | None = None,
        target_site: str | None = None,
        static_url: bool = False,
    ) -> str:
        """Build a Neuroglancer URL that loads a stored state.

        Args:
            state_id: State id (or, with ``static_url``, a URL of the JSON).
            ngl_url: Neuroglancer deployment; default the client's, else the fallback.
            target_site: ``"seunglab"``, ``"cave-explorer"``, ``"mainline"`` or
                ``"spelunker"``; None asks the deployment's ``version.json``.
            static_url: Treat ``state_id`` as a URL of the JSON itself.

        Raises:
            ValueError: Unknown ``target_site``.
        """
        ngl = self._resolve_ngl_url(ngl_url)
        if target_site is None:
            target_site = "mainline" if self.get_neuroglancer_info(ngl) else "seunglab"
        sep = "" if ngl.endswith("/") else "/"
        if static_url:
            state_url, auth_prefix = str(state_id), ""
        else:
            state_url, auth_prefix = self._url("get_state", state_id=int(state_id)), "middleauth+"
        if target_site == "seunglab":
            return f"{ngl}{sep}?json_url={state_url}"
        if target_site in ("cave-explorer", "cave_explorer", "mainline", "spelunker"):
            return f"{ngl}{sep}#!{auth_prefix}{state_url}"
        raise ValueError(
            f"target_site must be 'seunglab', 'cave-explorer', 'mainline', 'spelunker' or None, "
            f"got {target_site!r}"
        )


SERVICE = Service(
    JSONServiceV1, SERVER_KEY, _endpoints.jsonservice_common, _endpoints.jsonservice_api_versions
)
"""The JSON state service as `JSONService` connects to it."""
