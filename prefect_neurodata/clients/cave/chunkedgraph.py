"""PyChunkedGraph client (seed: ``caveclient.chunkedgraph``).

Node ids are kept exact end to end: they are sent as JSON integers or little-endian uint64
bytes (caveclient's bytes), parsed with orjson (exact Python ints) and returned with
caveclient 5.25's types: ``np.int64`` arrays and scalars (`get_leaves`, `get_latest_roots`,
`get_root_id`, ...), ``np.uint64`` where caveclient returns uint64 (`get_roots`,
``failed_l2_ids`` of `find_path`), Python ints in dicts and lists. Ids a caller passes must be
integers in [0, 2**63) (`node_ids`); anything else is refused before any request, where
caveclient would silently wrap it into another id. A float is never used for an id.

Timestamps go out as float POSIX seconds (UTC) in the query string (`package_timestamp`); a
naive datetime is taken as UTC.

Bulk root lookups (`ChunkedGraphClientV1.get_roots`) use the binary ``roots_binary`` endpoint,
send each distinct non-zero supervoxel once, and split large lookups into chunks fetched with
bounded concurrency (all chunks at the same timestamp).

Example:
    ```python
    from prefect_neurodata.clients.cave import CAVEclient

    client = CAVEclient("my_datastack", server_address="http://127.0.0.1:8080")
    roots = client.chunkedgraph.get_roots([97557743795364048, 97557743795364049])
    leaves = client.chunkedgraph.get_leaves(roots[0])
    ```
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from packaging.version import Version

from prefect_neurodata.clients.http import TransportConfig, decode_json, loads, map_bounded

from . import endpoints as _endpoints
from .base import (
    ApiVersion,
    ClientBase,
    Service,
    asked_meanwhile,
    check_version_compatibility,
    document_shared_args,
    fetch_server_version,
    resolve_server_address,
    resolve_transport,
)
from .node_ids import int64_ids, valid_node_id, valid_node_ids

if TYPE_CHECKING:
    import networkx as nx

logger = logging.getLogger("prefect_neurodata.cave")

SERVER_KEY = "cg_server_address"

ROOTS_CHUNK_SIZE = 250_000
"""Least distinct supervoxels per ``roots_binary`` request of a split lookup. A lookup of at
least twice this many ids is split into ``k = min(workers, n // ROOTS_CHUNK_SIZE)`` near-equal
chunks, all sent at once (in input order, at one timestamp); smaller lookups go out as one
request, as caveclient sends them. Measured against the sandbox at 0, 30 and 150 ms per
request: below ~500,000 ids one request is as fast or faster; from there on, requests in
flight together win, and at 150 ms every further wave of requests costs a whole round trip,
so a lookup never waits for a second wave: past ``workers * ROOTS_CHUNK_SIZE`` ids the chunks
grow instead."""

ROOTS_MAX_WORKERS = 8
"""Most concurrent ``roots_binary`` requests of one `get_roots` call (also bounded by the
client's ``pool_maxsize``)."""

ROOTS_ACCEPT_ENCODING = "identity"
"""``Accept-Encoding`` of ``roots_binary`` requests. Raw uint64 answers are sent uncompressed:
on the fast links between compute and CAVE servers gzip costs the server more time than it
saves on the wire. Set to ``"gzip"`` for slow links."""

_UTC = dt.timezone.utc

_ASKED_VERSION: ContextVar[tuple[str, Future[Version | None]] | None] = ContextVar(
    "chunkedgraph_asked_version", default=None
)
"""The server version `ChunkedGraphClient` is asking for while it negotiates the API version:
``(server_address, future)``, taken by the client it builds."""


# ---------------------------------------------------------------------------------------------
# Module helpers (seed surface)
# ---------------------------------------------------------------------------------------------


def package_bounds(bounds: Any) -> str:
    """Format a 3x2 bounding box ``[[xmin,xmax],[ymin,ymax],[zmin,zmax]]`` as
    ``"xmin-xmax_ymin-ymax_zmin-zmax"`` (base-resolution voxels).

    Raises:
        ValueError: ``bounds`` is not 3x2.
    """
    arr = np.asarray(bounds)
    if arr.shape != (3, 2):
        raise ValueError(f"bounds must be a 3x2 array [[xmin,xmax],...], got shape {arr.shape}")
    return "{}-{}_{}-{}_{}-{}".format(*(_num(v) for v in arr.ravel()))


def _num(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def package_timestamp(timestamp: dt.datetime | None, name: str = "timestamp") -> dict[str, float]:
    """``{name: POSIX seconds}`` for a datetime (naive = UTC), ``{}`` for None.

    Raises:
        ValueError: ``timestamp`` is not a datetime.
    """
    if timestamp is None:
        return {}
    if isinstance(timestamp, pd.Timestamp):
        timestamp = timestamp.to_pydatetime()
    if not isinstance(timestamp, dt.datetime):
        raise ValueError(f"{name} must be a datetime.datetime, got {timestamp!r}")
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=_UTC)
    return {name: timestamp.astimezone(_UTC).timestamp()}


def root_id_int_list_check(root_id: Any, make_unique: bool = False) -> Any:
    """Normalise one id or many ids for a request body.

    An int (Python or numpy) or a numeric string gives a one-element list; a list, array,
    Series or Index gives a ``np.uint64`` array (sorted unique with ``make_unique``), the
    wire form caveclient sends.

    Raises:
        ValueError: Anything else, floats, ids outside [0, 2**63), or an unparsable string.
    """
    if isinstance(root_id, (bool, np.bool_)):
        raise ValueError("root_id has to be list or uint64")
    if isinstance(root_id, (int, np.integer)):
        return [valid_node_id(root_id, "root_id")]
    if isinstance(root_id, str):
        try:
            number = int(root_id.strip())
        except ValueError:
            raise ValueError(
                f"root_id string {root_id!r} cannot be converted to a uint64"
            ) from None
        return [valid_node_id(number, "root_id")]
    if isinstance(root_id, (list, tuple, np.ndarray, pd.Series, pd.Index)):
        arr = valid_node_ids(root_id, "root_id")
        return np.unique(arr) if make_unique else arr
    raise ValueError("root_id has to be list or uint64")


def package_split_data(
    root_id: int,
    source_points: Any,
    sink_points: Any,
    source_supervoxels: Any,
    sink_supervoxels: Any,
) -> dict[str, list[list[Any]]]:
    """Build the body of a split or split preview: ``{"sources": [[id, x, y, z], ...],
    "sinks": [...]}`` with points in nm; a missing supervoxel is replaced by ``root_id``.

    Raises:
        ValueError: Points are not Nx3, or supervoxel lists do not match the points.
    """
    root = valid_node_id(root_id, "root_id")

    def side(points: Any, supervoxels: Any, label: str) -> list[list[Any]]:
        pts = np.asarray(points, dtype=float)
        if pts.ndim == 1 and pts.size == 3:
            pts = pts.reshape(1, 3)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise ValueError(f"{label}_points must be an Nx3 list of points, got {pts.shape}")
        if supervoxels is None:
            svs: list[Any] = [None] * len(pts)
        else:
            svs = list(supervoxels)
        if len(svs) != len(pts):
            raise ValueError(
                f"{label}_supervoxels has {len(svs)} entries but {label}_points has {len(pts)}"
            )
        rows = []
        for sv, pt in zip(svs, pts, strict=True):
            sv_id = root if sv is None else valid_node_id(sv, f"{label}_supervoxels")
            rows.append([sv_id, *(_num(v) for v in pt)])
        return rows

    return {
        "sources": side(source_points, source_supervoxels, "source"),
        "sinks": side(sink_points, sink_supervoxels, "sink"),
    }


def _roots_chunks(ids: np.ndarray, workers: int) -> list[np.ndarray]:
    """Split a `get_roots` lookup into its concurrent requests (see `ROOTS_CHUNK_SIZE`)."""
    count = min(workers, ids.size // ROOTS_CHUNK_SIZE)
    return np.array_split(ids, count) if count >= 2 else [ids]


def _frame_from_to_json(data: Any) -> pd.DataFrame:
    """Rebuild a DataFrame serialised with ``DataFrame.to_json()`` (orient="columns")."""
    if isinstance(data, (str, bytes)):
        data = loads(data)
    if not isinstance(data, Mapping) or not data:
        return pd.DataFrame()
    index: list[str] = []
    for column in data.values():
        for key in column:
            if key not in index:
                index.append(key)
    with contextlib.suppress(ValueError):
        index.sort(key=int)
    columns = {name: [col.get(key) for key in index] for name, col in data.items()}
    frame = pd.DataFrame(columns)
    return frame


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


@document_shared_args
def ChunkedGraphClient(  # noqa: N802 - seed name
    server_address: str | None = None,
    table_name: str | None = None,
    auth_client: Any = None,
    api_version: ApiVersion = "latest",
    timestamp: dt.datetime | None = None,
    verify: bool | str = True,
    max_retries: int | None = None,
    pool_maxsize: int | None = None,
    pool_block: bool | None = None,
    over_client: Any = None,
    transport: TransportConfig | None = None,
) -> ChunkedGraphClientV1:
    """Create a chunkedgraph client, negotiating the API version with the server.

    Args:
        server_address: The local server (``http://`` accepted); None uses the default global
            server.
        table_name: The PCG table (last path element of the datastack's segmentation source).
        api_version: ``"latest"`` (ask ``segmentation/api/versions``) or 0/1.
        timestamp: Default timestamp for lookups (None: now at each call).

    Example:
        ```python
        cg = ChunkedGraphClient("http://127.0.0.1:9000", table_name="test_v1")
        cg.get_root_id(97557743795364048)
        ```
    """
    address = resolve_server_address(server_address)
    config = resolve_transport(transport, verify, max_retries, pool_maxsize, pool_block)
    options = {"timestamp": timestamp, "table_name": table_name, "over_client": over_client}
    # caveclient asks the API versions, then (building the client) the server version. The two
    # answers do not depend on each other, so both questions go out at once: one round trip
    # instead of two. The client takes the answer, or its error, when it is built.
    url = _endpoints.chunkedgraph_endpoints_common["get_version"].format(**{SERVER_KEY: address})
    ask = functools.partial(fetch_server_version, url=url, server_address=address)
    with asked_meanwhile(auth_client, config, {"version": ask}) as asked:
        token = _ASKED_VERSION.set((address, asked["version"]))
        try:
            return SERVICE.connect(address, auth_client, api_version, config, **options)
        finally:
            _ASKED_VERSION.reset(token)


@document_shared_args
class ChunkedGraphClientV1(ClientBase):
    """ChunkedGraph client for the v1 API.

    Args:
        server_address: The local server.
        auth_header: Auth header (see `ClientBase`).
        api_version: Negotiated API version.
        endpoints: Merged URL templates.
        server_key: Placeholder key of the server.
        timestamp: Default timestamp for lookups (None: the owning client's, else now).
        table_name: The PCG table.
    """

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_key: str = SERVER_KEY,
        timestamp: dt.datetime | None = None,
        table_name: str | None = None,
        verify: bool | str = True,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_key)
        super().__init__(
            *seed, verify, max_retries, pool_maxsize, pool_block, over_client, transport
        )
        self._table_name = table_name
        self._default_timestamp = timestamp
        self._segmentation_info: dict[str, Any] | None = None
        self._default_url_mapping["table_id"] = table_name
        self._roots_workers = max(1, min(ROOTS_MAX_WORKERS, self.transport.pool_maxsize))
        # Fetched now, as caveclient 5.25 does, so version-guarded arguments (bounds=) are
        # checked against the server the client was built for; `ChunkedGraphClient` has
        # already asked, at the same time as the API versions.
        asked = _ASKED_VERSION.get()
        if asked is not None and asked[0] == server_address:
            self._server_version = asked[1].result()
        else:
            self._server_version = self._get_version()

    # -- properties ---------------------------------------------------------------------------
    @property
    def default_url_mapping(self) -> dict[str, Any]:
        """Placeholder values for the URL templates (server and ``table_id``)."""
        return dict(self._default_url_mapping)

    @property
    def table_name(self) -> str | None:
        """The PCG table."""
        return self._table_name

    @property
    def timestamp(self) -> dt.datetime | None:
        """The default timestamp of lookups (the client's, or the owning client's)."""
        if self._default_timestamp is not None:
            return self._default_timestamp
        return getattr(self._fc, "timestamp", None)

    @property
    def segmentation_info(self) -> dict[str, Any]:
        """Complete segmentation metadata (fetched once)."""
        if self._segmentation_info is None:
            self._segmentation_info = self._json("GET", self._url("info"))
        return self._segmentation_info

    @property
    def base_resolution(self) -> list[float]:
        """MIP 0 resolution (x, y, z nm) assumed by the ChunkedGraph."""
        return self.segmentation_info["scales"][0]["resolution"]

    @property
    def cloudvolume_path(self) -> str:
        """``graphene://`` path of the segmentation for CloudVolume."""
        return self._url("cloudvolume_path")

    def _process_timestamp(self, timestamp: dt.datetime | None, name: str = "timestamp") -> dict:
        if timestamp is None:
            timestamp = self.timestamp
        if timestamp is None:
            timestamp = dt.datetime.now(_UTC)
        return package_timestamp(timestamp, name=name)

    def _optional_timestamp(self, timestamp: dt.datetime | None, name: str = "timestamp") -> dict:
        if timestamp is None:
            timestamp = self.timestamp
        return package_timestamp(timestamp, name=name)

    # -- roots --------------------------------------------------------------------------------
    def get_roots(
        self,
        supervoxel_ids: Any,
        timestamp: dt.datetime | None = None,
        stop_layer: int | None = None,
    ) -> np.ndarray:
        """Get the root id of each supervoxel.

        Ids that are all distinct and non-zero are sent in the caller's order (caveclient's
        bytes); otherwise each distinct non-zero id is looked up once (0 maps to 0 locally),
        in ascending order. A lookup of at least twice `ROOTS_CHUNK_SIZE` distinct ids is
        split into up to `ROOTS_MAX_WORKERS` (and the client's ``pool_maxsize``) near-equal
        chunks of at least `ROOTS_CHUNK_SIZE` ids, sent together at one timestamp and joined
        in input order. Each chunk is a ``roots_binary`` request in caveclient's format, and a
        transient failure of one chunk is retried on its own. (caveclient sends one request
        whatever the size; when a round trip costs ~150 ms, as with the real services,
        overlapping the chunks brings a multi-million-id lookup down to about one round trip
        plus the largest chunk's work.)

        Args:
            supervoxel_ids: Supervoxel ids (list, array, Series).
            timestamp: UTC datetime of the state to query; None uses the client's timestamp or
                now.
            stop_layer: Stop the lookup at this layer (e.g. 2 for L2 ids).

        Returns:
            ``np.uint64`` array of root ids, in input order (caveclient 5.25's dtype here;
            ``.astype(np.int64)`` before concatenating with `query_table` ids).

        Raises:
            ValueError: An id is not an integer in [0, 2**63) (named, before any request), or
                the server answered with the wrong number of ids.
        """
        ids = valid_node_ids(supervoxel_ids, "supervoxel_ids")
        result = np.zeros(ids.shape, dtype=np.uint64)
        if ids.size == 0:
            return result
        params: dict[str, Any] = {}
        if stop_layer is not None:
            params["stop_layer"] = int(stop_layer)
        params.update(self._process_timestamp(timestamp))
        unique, inverse = np.unique(ids, return_inverse=True)
        if unique.size == ids.size and unique[0] != 0:
            # Distinct non-zero ids go out as the caller gave them: the bytes caveclient sends.
            unique, inverse = ids, np.arange(ids.size)
        nonzero = unique != 0
        query = unique[nonzero]
        if query.size == 0:
            return result
        url = self._url("get_roots")
        chunks = _roots_chunks(query, self._roots_workers)

        def fetch(chunk: np.ndarray) -> np.ndarray:
            response = self._request(
                "POST",
                url,
                params=params,
                data=chunk.astype("<u8", copy=False).tobytes(),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Accept-Encoding": ROOTS_ACCEPT_ENCODING,
                },
                idempotent=True,
            )
            roots = np.frombuffer(response.content, dtype="<u8")
            if roots.size != chunk.size:
                raise ValueError(
                    f"roots_binary answered {roots.size} root ids for {chunk.size} supervoxels"
                )
            return roots

        if len(chunks) == 1:
            answers = [fetch(chunks[0])]
        else:
            answers = map_bounded(fetch, chunks, max_workers=self._roots_workers)
        unique_roots = np.zeros(unique.shape, dtype=np.uint64)
        unique_roots[nonzero] = np.concatenate(answers).astype(np.uint64)
        return unique_roots[inverse.ravel()]

    def get_root_id(
        self, supervoxel_id: int, timestamp: dt.datetime | None = None, level2: bool = False
    ) -> np.int64:
        """Get the root id of one supervoxel (the L2 id with ``level2=True``).

        Returns:
            The root id as ``np.int64`` (caveclient 5.25's type).
        """
        sv = valid_node_id(supervoxel_id, "supervoxel_id")
        params = self._process_timestamp(timestamp)
        if level2:
            params["stop_layer"] = 2
        r = self._json("GET", self._url("handle_root", supervoxel_id=sv), params=params)
        return int64_ids([r["root_id"]])[0]

    # -- hierarchy ------------------------------------------------------------------------------
    def get_leaves(
        self, root_id: int, bounds: Any = None, stop_layer: int | None = None
    ) -> np.ndarray:
        """Get all supervoxels (or nodes at ``stop_layer``) under a node.

        Args:
            root_id: Root (or any node) id.
            bounds: 3x2 bounds ``[[xmin,xmax],[ymin,ymax],[zmin,zmax]]`` in base voxels.
            stop_layer: Return nodes at this layer instead of supervoxels.

        Returns:
            ``np.int64`` array of ids.
        """
        root = valid_node_id(root_id, "root_id")
        params: dict[str, Any] = {}
        if bounds is not None:
            params["bounds"] = package_bounds(bounds)
        if stop_layer is not None:
            params["stop_layer"] = int(stop_layer)
        r = self._json("GET", self._url("leaves_from_root", root_id=root), params=params)
        return int64_ids(r["leaf_ids"])

    def get_children(self, node_id: int) -> np.ndarray:
        """Get the children of a node (``np.int64``; empty for a supervoxel)."""
        node = valid_node_id(node_id, "node_id")
        r = self._json("GET", self._url("handle_children", node_id=node))
        return int64_ids(r["children_ids"])

    def get_contact_sites(self, root_id: int, bounds: Any, calc_partners: bool = False) -> dict:
        """Get contacts of a root id within ``bounds`` (3x2, base voxels).

        Returns:
            The server's answer; keys that are ids are converted to ints.
        """
        root = valid_node_id(root_id, "root_id")
        params = {"bounds": package_bounds(bounds), "partners": bool(calc_partners)}
        r = self._json("GET", self._url("contact_sites", root_id=root), params=params, json=[root])
        return {(int(k) if str(k).isdigit() else k): v for k, v in r.items()}

    def get_subgraph(self, root_id: int, bounds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Get the supervoxel graph of a node within ``bounds``.

        Returns:
            Edges (Nx2 ``np.int64``), affinities (``float64``) and areas (``int32``).
        """
        root = valid_node_id(root_id, "root_id")
        r = self._json(
            "GET",
            self._url("get_subgraph", root_id=root),
            params={"bounds": package_bounds(bounds)},
        )
        nodes = int64_ids(r["nodes"])
        if nodes.size == 0:
            nodes = nodes.reshape(0, 2)
        return (
            nodes,
            np.array(r["affinities"], dtype=np.double),
            np.array(r["areas"], dtype=np.int32),
        )

    @check_version_compatibility(kwarg_use_constraints={"bounds": ">=2.15.0"})
    def level2_chunk_graph(self, root_id: int, bounds: Any = None) -> list:
        """Get the L2 graph of a root: a list of ``[l2_a, l2_b]`` edges (exact ints).

        Args:
            root_id: Root id of the object.
            bounds: 3x2 box ``[[xmin, xmax], [ymin, ymax], [zmin, zmax]]`` in the chunkedgraph's
                base resolution; only L2 nodes whose chunks touch it are returned. None: the
                whole graph. Needs chunkedgraph server >= 2.15.0.

        Raises:
            ServerIncompatibilityError: ``bounds`` given to a server older than 2.15.0.
            ValueError: ``bounds`` given but the server's ``Used-Bounds`` header says it did
                not apply them (so the answer would silently be the whole graph).

        Example:
            ```python
            edges = client.chunkedgraph.level2_chunk_graph(
                864691135217871271, bounds=[[83875, 85125], [82429, 83679], [20634, 20884]]
            )
            ```
        """
        root = valid_node_id(root_id, "root_id")
        params = {} if bounds is None else {"bounds": package_bounds(bounds)}
        response = self._request("GET", self._url("lvl2_graph", root_id=root), params=params)
        used_bounds = response.headers.get("Used-Bounds") in ("true", "True")
        if bounds is not None and not used_bounds:
            raise ValueError(
                "Bounds were not used for this query, even though it was requested: the "
                "chunkedgraph server does not support bounds (Used-Bounds header is "
                f"{response.headers.get('Used-Bounds')!r}); ask its administrator to update it."
            )
        return decode_json(response)["edge_graph"]

    def remesh_level2_chunks(self, chunk_ids: Sequence[int]) -> None:
        """Ask the meshing service to remesh these L2 chunks."""
        ids = valid_node_ids(chunk_ids, "chunk_ids")
        self._request("POST", self._url("remesh_level2_chunks"), json={"new_lvl2_ids": ids})

    # -- edits ----------------------------------------------------------------------------------
    def do_merge(self, supervoxels: Any, coords: Any, resolution: Any = (4, 4, 40)) -> Any:
        """Merge the objects under two supervoxels.

        Never retried blindly (a resent merge could apply twice).

        Args:
            supervoxels: Two supervoxel (or root) ids.
            coords: 2x3 coordinates of the supervoxels in units of ``resolution``.
            resolution: Voxel size multiplying ``coords`` to nm.

        Returns:
            The server's answer ``{"operation_id", "new_root_ids"}``.

        Raises:
            ValueError: Not exactly two supervoxels with 3-d coordinates.
        """
        svs = [valid_node_id(s, "supervoxels") for s in supervoxels]
        pts = np.asarray(coords, dtype=float)
        res = np.asarray(resolution, dtype=float)
        if len(svs) != 2 or pts.shape != (2, 3):
            raise ValueError(
                f"do_merge needs exactly 2 supervoxels and 2x3 coords, got {len(svs)} "
                f"supervoxels and coords of shape {pts.shape}"
            )
        if res.shape != (3,):
            raise ValueError(f"resolution must have 3 values, got {resolution!r}")
        body = [[sv, *(_num(v) for v in pt * res)] for sv, pt in zip(svs, pts, strict=True)]
        return self._json("POST", self._url("do_merge"), params={"priority": False}, json=body)

    def undo_operation(self, operation_id: int) -> dict:
        """Undo an operation (creates new root ids). Never retried blindly."""
        return self._json(
            "POST",
            self._url("undo"),
            params={"priority": False},
            json={"operation_id": int(operation_id)},
        )

    def execute_split(
        self,
        source_points: Any,
        sink_points: Any,
        root_id: int,
        source_supervoxels: Any = None,
        sink_supervoxels: Any = None,
    ) -> tuple[int, list]:
        """Execute a multicut split (points in nm). Never retried blindly.

        Returns:
            ``(operation_id, new_root_ids)``.
        """
        body = package_split_data(
            root_id, source_points, sink_points, source_supervoxels, sink_supervoxels
        )
        r = self._json("POST", self._url("execute_split"), params={"priority": False}, json=body)
        return r["operation_id"], r["new_root_ids"]

    def preview_split(
        self,
        source_points: Any,
        sink_points: Any,
        root_id: int,
        source_supervoxels: Any = None,
        sink_supervoxels: Any = None,
        return_additional_ccs: bool = False,
    ) -> tuple:
        """Preview a multicut split (a read, so it may be retried).

        Returns:
            ``(source_cc, sink_cc, successful_split)`` plus the other components with
            ``return_additional_ccs``.
        """
        body = package_split_data(
            root_id, source_points, sink_points, source_supervoxels, sink_supervoxels
        )
        r = self._json("POST", self._url("preview_split"), json=body, idempotent=True)
        ccs = r["supervoxel_connected_components"]
        source_cc = ccs[0] if len(ccs) > 0 else []
        sink_cc = ccs[1] if len(ccs) > 1 else []
        success = not r["illegal_split"]
        if return_additional_ccs:
            return source_cc, sink_cc, success, ccs[2:]
        return source_cc, sink_cc, success

    # -- history ----------------------------------------------------------------------------------
    def get_merge_log(self, root_id: int) -> list:
        """Get the merge log of an object (``{"merge_edges", "merge_edge_coords"}``)."""
        root = valid_node_id(root_id, "root_id")
        return self._json("GET", self._url("merge_log", root_id=root))

    def get_change_log(self, root_id: int, filtered: bool = True) -> dict:
        """Get the change-log summary of an object.

        Returns:
            ``{"n_splits", "n_mergers", "user_info", "operations_ids", "past_ids"}`` as the
            server sends it.
        """
        root = valid_node_id(root_id, "root_id")
        return self._json(
            "GET", self._url("change_log", root_id=root), params={"filtered": bool(filtered)}
        )

    def get_tabular_change_log(self, root_ids: Any, filtered: bool = True) -> dict:
        """Get a detailed change log per root.

        Returns:
            ``{root_id (int): DataFrame}`` with columns ``operation_id``, ``timestamp`` (ms),
            ``user_id``, ``before_root_ids``, ``after_root_ids``, ``is_merge``, ``user_name``,
            ``user_affiliation`` (plus ``in_neuron``/``is_relevant`` unfiltered).
        """
        ids = root_id_int_list_check(root_ids, make_unique=True)
        r = self._json(
            "GET",
            self._url("tabular_change_log"),
            params={"filtered": bool(filtered)},
            json={"root_ids": ids},
        )
        return {int(k): _frame_from_to_json(v) for k, v in r.items()}

    def get_user_operations(
        self,
        user_id: int,
        timestamp_start: dt.datetime,
        include_undo: bool = True,
        timestamp_end: dt.datetime | None = None,
    ) -> pd.DataFrame:
        """Get the operations of a user (admins only; ``user_id=0`` for everyone).

        Sends ``include_undone`` (the server's name for ``include_undo``), for every user id.

        Returns:
            DataFrame with ``operation_id``, ``timestamp`` (UTC datetimes), ``user_id``, ...
        """
        params: dict[str, Any] = {"user_id": int(user_id), "include_undone": bool(include_undo)}
        params.update(package_timestamp(timestamp_start, name="start_time"))
        params.update(package_timestamp(timestamp_end, name="end_time"))
        r = self._json("GET", self._url("user_operations"), params=params)
        df = _frame_from_to_json(r)
        if "timestamp" in df.columns:
            df["timestamp"] = pd.to_datetime(df["timestamp"], unit="ms", utc=True)
        return df

    def get_operation_details(self, operation_ids: Iterable[int]) -> dict:
        """Get details of operations, keyed by operation id (as strings)."""
        ops = [int(o) for o in np.atleast_1d(np.asarray(list(operation_ids)))]
        return self._json(
            "GET", self._url("operation_details"), params={"operation_ids": json.dumps(ops)}
        )

    def get_lineage_graph(
        self,
        root_id: Any,
        timestamp_past: dt.datetime | None = None,
        timestamp_future: dt.datetime | None = None,
        as_nx_graph: bool = False,
        exclude_links_to_future: bool = False,
        exclude_links_to_past: bool = False,
    ) -> dict | nx.DiGraph:
        """Get the lineage graph of one or more roots (node-link JSON or ``nx.DiGraph``).

        Without ``timestamp_future`` the client's timestamp (if it has one) bounds the future,
        else the server uses now.

        Args:
            root_id: Root id(s).
            timestamp_past: Cut-off back in time.
            timestamp_future: Cut-off forward in time.
            as_nx_graph: Return a ``networkx.DiGraph``.
            exclude_links_to_future: Drop nodes created after ``timestamp_future``.
            exclude_links_to_past: Drop nodes created before ``timestamp_past``.
        """
        ids = root_id_int_list_check(root_id, make_unique=True)
        params: dict[str, Any] = {}
        params.update(package_timestamp(timestamp_past, name="timestamp_past"))
        if timestamp_future is not None:
            params.update(package_timestamp(timestamp_future, name="timestamp_future"))
        else:
            params.update(self._optional_timestamp(None, name="timestamp_future"))
        r = self._json(
            "POST",
            self._url("handle_lineage_graph"),
            params=params,
            json={"root_ids": ids},
            idempotent=True,
        )
        past_s = package_timestamp(timestamp_past).get("timestamp")
        future_s = package_timestamp(timestamp_future).get("timestamp")
        bad: set[int] = set()
        for node in r.get("nodes", []):
            ts = node.get("timestamp")
            if ts is None:
                continue
            if exclude_links_to_past and past_s is not None and ts < past_s:
                bad.add(node["id"])
            if exclude_links_to_future and future_s is not None and ts > future_s:
                bad.add(node["id"])
        if bad:
            r["nodes"] = [n for n in r["nodes"] if n["id"] not in bad]
            r["links"] = [
                link
                for link in r.get("links", [])
                if link["source"] not in bad and link["target"] not in bad
            ]
        if as_nx_graph:
            # imported here: networkx takes ~80 ms to import, paid by every client start
            # (a CAVEclient imports this module) though only lineage graphs need it
            import networkx as nx

            return nx.node_link_graph(r, directed=True, edges="links")
        return r

    def _root_timestamp_bound(self, ids: Any, use_max: bool) -> dt.datetime:
        stamps = self.get_root_timestamps(ids)
        return max(stamps) if use_max else min(stamps)

    def _lineage_ends(
        self,
        ids: Any,
        timestamp_past: dt.datetime | None,
        timestamp_future: dt.datetime | None,
        newest: bool,
        **exclude_links: bool,
    ) -> np.ndarray:
        """The ends of the lineage graph of ``ids`` between two times, as ``np.int64``: its
        newest roots (out-degree 0) or its oldest (in-degree 0); ``ids`` themselves when the
        graph has none (the roots did not change in that window)."""
        graph: nx.DiGraph = self.get_lineage_graph(
            ids,
            timestamp_past=timestamp_past,
            timestamp_future=timestamp_future,
            as_nx_graph=True,
            **exclude_links,
        )
        degrees = graph.out_degree() if newest else graph.in_degree()
        return int64_ids([n for n, d in degrees if d == 0] or [int(i) for i in ids])

    def get_latest_roots(
        self,
        root_id: int,
        timestamp: dt.datetime | None = None,
        timestamp_future: dt.datetime | None = None,
    ) -> np.ndarray:
        """Get the roots related to ``root_id`` at ``timestamp`` (default now).

        Args:
            root_id: Root id.
            timestamp: Time of the answer; may be before the root's creation (then the
                ancestors are returned).
            timestamp_future: Deprecated name of ``timestamp``.

        Returns:
            ``np.int64`` array of ids.
        """
        ids = root_id_int_list_check(root_id, make_unique=True)
        if timestamp_future is not None:
            logger.warning("timestamp_future is deprecated for get_latest_roots; use timestamp")
            timestamp = timestamp_future
        if timestamp is None:
            timestamp = self.timestamp or dt.datetime.now(_UTC)
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=_UTC)
        root_ts = self._root_timestamp_bound(ids, use_max=False)
        if root_ts <= timestamp:
            return self._lineage_ends(
                ids, root_ts, timestamp, newest=True, exclude_links_to_future=True
            )
        return self._lineage_ends(ids, timestamp, root_ts, newest=False, exclude_links_to_past=True)

    def get_original_roots(
        self, root_id: int, timestamp_past: dt.datetime | None = None
    ) -> np.ndarray:
        """Get the earliest ancestors of a root (in-degree-0 nodes of its lineage graph)."""
        ids = root_id_int_list_check(root_id, make_unique=True)
        root_ts = self._root_timestamp_bound(ids, use_max=True)
        return self._lineage_ends(ids, timestamp_past, root_ts, newest=False)

    def get_past_ids(
        self,
        root_ids: Any,
        timestamp_past: dt.datetime | None = None,
        timestamp_future: dt.datetime | None = None,
    ) -> dict:
        """Map roots to the ids at ``timestamp_past`` (and ``timestamp_future``).

        Returns:
            ``{"future_id_map": {int: ...}, "past_id_map": {int: [ints]}}``.
        """
        ids = root_id_int_list_check(root_ids, make_unique=True)
        params: dict[str, Any] = {}
        params.update(package_timestamp(timestamp_past, name="timestamp_past"))
        params.update(package_timestamp(timestamp_future, name="timestamp_future"))
        r = self._json("GET", self._url("past_id_mapping"), params=params, json={"root_ids": ids})
        return {
            "future_id_map": {int(k): v for k, v in (r.get("future_id_map") or {}).items()},
            "past_id_map": {int(k): v for k, v in (r.get("past_id_map") or {}).items()},
        }

    def get_delta_roots(
        self,
        timestamp_past: dt.datetime,
        timestamp_future: dt.datetime | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Get the roots that expired and the roots created between two times.

        Args:
            timestamp_past: Start of the window (required).
            timestamp_future: End of the window; None means now (evaluated at call time).

        Returns:
            ``(old_roots, new_roots)`` as ``np.int64`` arrays.
        """
        if timestamp_past is None:
            raise ValueError("timestamp_past is required")
        if timestamp_future is None:
            timestamp_future = dt.datetime.now(_UTC)
        params = package_timestamp(timestamp_past, name="timestamp_past")
        params.update(package_timestamp(timestamp_future, name="timestamp_future"))
        r = self._json("GET", self._url("delta_roots"), params=params)
        return int64_ids(r["old_roots"]), int64_ids(r["new_roots"])

    def is_latest_roots(self, root_ids: Any, timestamp: dt.datetime | None = None) -> np.ndarray:
        """Whether each id is a root not yet superseded at ``timestamp`` (default now).

        Returns:
            Boolean array in input order.
        """
        ids = root_id_int_list_check(root_ids, make_unique=False)
        params = self._optional_timestamp(timestamp)
        r = self._json(
            "POST",
            self._url("is_latest_roots"),
            params=params,
            json={"node_ids": ids},
            idempotent=True,
        )
        return np.array(r["is_latest"], dtype=bool)

    def get_root_timestamps(self, root_ids: Any) -> np.ndarray:
        """Get the creation time of each root.

        Returns:
            Array of UTC ``datetime.datetime`` in input order.
        """
        ids = root_id_int_list_check(root_ids, make_unique=False)
        r = self._json(
            "POST", self._url("root_timestamps"), json={"node_ids": ids}, idempotent=True
        )
        return np.array(
            [dt.datetime.fromtimestamp(ts, _UTC) for ts in r["timestamp"]], dtype=object
        )

    def is_valid_nodes(
        self,
        node_ids: Any,
        start_timestamp: dt.datetime | None = None,
        end_timestamp: dt.datetime | None = None,
    ) -> np.ndarray:
        """Whether each id exists in the chunkedgraph within a time range.

        Ids <= 0 are answered False without asking the server (caveclient's own suite expects
        False for -1, which it sends wrapped to 2**64 - 1). ``start_timestamp`` defaults to
        2000-01-01 and ``end_timestamp`` to now.

        Raises:
            ValueError: An id is not an integer, or is >= 2**63 (before any request).
        """
        if isinstance(node_ids, (int, np.integer, str)):
            node_ids = [node_ids]
        values = node_ids.tolist() if hasattr(node_ids, "tolist") else list(node_ids)
        ids = valid_node_ids(
            [0 if isinstance(v, (int, np.integer)) and v < 0 else v for v in values], "node_ids"
        )
        positive = ids != 0
        result = np.zeros(ids.shape, dtype=bool)
        if not positive.any():
            return result
        if start_timestamp is None:
            start_timestamp = dt.datetime(2000, 1, 1, tzinfo=_UTC)
        if end_timestamp is None:
            end_timestamp = dt.datetime.now(_UTC)
        params = package_timestamp(start_timestamp, name="start_timestamp")
        params.update(package_timestamp(end_timestamp, name="end_timestamp"))
        r = self._json(
            "GET", self._url("valid_nodes"), params=params, json={"node_ids": ids[positive]}
        )
        valid = int64_ids(r["valid_roots"])
        result[positive] = np.isin(ids[positive], valid)
        return result

    def get_oldest_timestamp(self) -> dt.datetime:
        """Get the oldest timestamp in the database (UTC)."""
        r = self._json("GET", self._url("oldest_timestamp"))
        value = dt.datetime.fromisoformat(r["iso"])
        return value if value.tzinfo else value.replace(tzinfo=_UTC)

    def suggest_latest_roots(
        self,
        root_id: int,
        timestamp: dt.datetime | None = None,
        stop_layer: int | None = None,
        return_all: bool = False,
        return_fraction_overlap: bool = False,
    ) -> Any:
        """Suggest the latest root(s) of an outdated root by overlap of their chunks.

        The overlap is the fraction of the old root's nodes at ``stop_layer`` (default
        ``n_layers - 4``, at least 1) that each current root still contains.

        Returns:
            The best id (``np.int64``); with ``return_all`` all candidates (best first, an
            ``np.int64`` array); with ``return_fraction_overlap`` also the fractions. When
            ``root_id`` is itself current the answer is caveclient 5.25's: ``root_id`` (an int)
            and 1, or ``[root_id]`` and ``[1]`` with ``return_all``.
        """
        root = valid_node_id(root_id, "root_id")
        current = self.get_latest_roots(root, timestamp=timestamp)
        if root in {int(c) for c in current}:
            if return_all:
                return ([root], [1]) if return_fraction_overlap else [root]
            return (root, 1) if return_fraction_overlap else root
        if stop_layer is None:
            n_layers = int(self.segmentation_info["graph"]["n_layers"])
            stop_layer = max(1, n_layers - 4)
        original = self.get_leaves(root, stop_layer=stop_layer)
        overlaps = []
        for candidate in current:
            nodes = self.get_leaves(int(candidate), stop_layer=stop_layer)
            overlaps.append(float(np.isin(nodes, original).sum()) / max(1, len(original)))
        fractions = np.array(overlaps, dtype=float)
        order = np.argsort(-fractions, kind="stable")
        ids, fractions = current[order], fractions[order]
        if return_all:
            return (ids, fractions) if return_fraction_overlap else ids
        return (ids[0], fractions[0]) if return_fraction_overlap else ids[0]

    def find_path(
        self, root_id: int, src_pt: Any, dst_pt: Any, precision_mode: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Find a path between two points (nm) of a root over the L2 graph.

        Returns:
            ``(centroids, l2_path, failed_l2_ids)``: ``l2_path`` as ``np.int64`` and
            ``failed_l2_ids`` as ``np.uint64``, caveclient 5.25's dtypes.
        """
        root = valid_node_id(root_id, "root_id")
        src = np.asarray(src_pt, dtype=float).ravel()
        dst = np.asarray(dst_pt, dtype=float).ravel()
        if src.shape != (3,) or dst.shape != (3,):
            raise ValueError("src_pt and dst_pt must be 3-element points in nm")
        body = [[root, *(_num(v) for v in src)], [root, *(_num(v) for v in dst)]]
        r = self._json(
            "POST",
            self._url("find_path"),
            params={"precision_mode": bool(precision_mode)},
            json=body,
            idempotent=True,
        )
        return (
            np.array(r["centroids_list"]),
            int64_ids(r["l2_path"]),
            int64_ids(r["failed_l2_ids"]).astype(np.uint64),
        )

    @check_version_compatibility(method_constraint="<3,>=2.18.0 || <4,>=3.0.5")
    def get_minimal_covering_nodes(self, node_ids: Any) -> np.ndarray:
        """Get the minimal set of nodes covering exactly these nodes' supervoxels.

        Needs PyChunkedGraph ``<3,>=2.18.0`` or ``<4,>=3.0.5``.

        Returns:
            ``np.int64`` array of node ids, like `get_leaves` (caveclient 5.25 has no such
            method).
        """
        ids = valid_node_ids(node_ids, "node_ids")
        response = self._request(
            "POST",
            self._url("minimal_covering_nodes"),
            params={"as_array": True},
            json={"node_ids": ids},
            idempotent=True,
        )
        return int64_ids(np.frombuffer(response.content, dtype="<u8").tolist())


SERVICE = Service(
    ChunkedGraphClientV1,
    SERVER_KEY,
    _endpoints.chunkedgraph_endpoints_common,
    _endpoints.chunkedgraph_api_versions,
)
"""The ChunkedGraph as `ChunkedGraphClient` connects to it."""
