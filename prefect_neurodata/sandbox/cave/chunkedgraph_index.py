"""The chunkedgraph model's state and the lookups every other part of it builds on.

:class:`ChunkedGraphIndex` holds what a world is made of (supervoxel arrays, roots, L2 nodes,
edges, the operation timestamps and per-supervoxel change records) and the primitive lookups on
it: id encoding and minting, supervoxel id -> index, and the root or L2 node of supervoxels as of
an operation. The read side, the operation history, the edits and the world generation (the
other ``chunkedgraph_*`` modules and :mod:`.chunkedgraph`) each extend it, so they share one set of
attributes without reaching into each other.

Time: every edit is an operation with a sequence number ``seq`` (= operation id) and a POSIX
timestamp. For each supervoxel the model keeps (seq, root, l2) change records, and answers
``get_roots(svids, timestamp)`` with one ``searchsorted`` over a sorted key array, so a million
lookups take well under a second.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import networkx as nx
import numpy as np

from . import DEFAULT_PCG_TABLE, VOXEL_RESOLUTION
from .chunkedgraph_types import (
    FANOUT,
    LAYER_ID_BITS,
    L2Info,
    Operation,
    OperationRecord,
    RootInfo,
    WorldParams,
    as_uint64,
    decode_id,
    encode_id,
    spatial_bits_for,
    to_posix,
)
from .errors import PCGError

_SEQ_BITS = 32


class ChunkedGraphIndex:
    """State of a chunkedgraph world and its primitive lookups (the base of the model).

    Build a world with :meth:`.chunkedgraph.ChunkedGraph.build`; this class only sets up the
    empty containers that generation and edits fill.
    """

    # Filled by world generation (:class:`.chunkedgraph.ChunkedGraph`), read by every part.
    n_supervoxels: int
    labels: np.ndarray  # cell grid -> supervoxel index + 1 (0 = background)
    sv_ids: np.ndarray
    sv_chunk: np.ndarray
    sv_neuron: np.ndarray
    sv_cells: np.ndarray
    sv_cell_offsets: np.ndarray
    sv_bbox_min: np.ndarray
    sv_bbox_max: np.ndarray
    cur_root: np.ndarray
    cur_l2: np.ndarray
    _sorted_idx: np.ndarray
    _chunk_sv_count: np.ndarray
    _chunk_sv_start: np.ndarray
    _soma_sv: np.ndarray
    _occupied: np.ndarray
    _contacts: np.ndarray

    # ------------------------------------------------------------------ construction
    def __init__(
        self,
        params: WorldParams,
        table_id: str = DEFAULT_PCG_TABLE,
        resolution: Sequence[float] = VOXEL_RESOLUTION,
    ) -> None:
        self.params = params
        self.table_id = table_id
        self.resolution = np.asarray(resolution, dtype=np.float64)
        self.chunks = np.asarray(params.chunks, dtype=np.int64)
        self.chunk_size = np.asarray(params.chunk_size, dtype=np.int64)
        self.cell_size = np.asarray(params.cell_size, dtype=np.int64)
        if np.any(self.chunk_size % self.cell_size):
            raise ValueError("cell_size must divide chunk_size")
        self.bounds_voxel = self.chunks * self.chunk_size
        self.grid_shape = tuple(int(v) for v in self.bounds_voxel // self.cell_size)
        self.n_layers = int(math.ceil(math.log(int(self.chunks.max()), FANOUT))) + 2
        self.bits = spatial_bits_for(self.n_layers)
        self.on_operation: Callable[[OperationRecord], None] | None = None
        self._lock = threading.RLock()
        self._chunk_counters: dict[tuple[int, int, tuple[int, int, int]], int] = {}
        self._root_counters = np.ones(256, dtype=np.int64)
        self._root_rng = np.random.default_rng(params.seed + 7919)
        self.roots: dict[int, RootInfo] = {}
        self.l2s: dict[int, L2Info] = {}
        self.operations: list[Operation] = []
        self._op_ts: list[float] = [float(params.base_timestamp)]
        self._edges: dict[tuple[int, int], dict[str, Any]] = {}
        self._neighbor_cache: dict[int, list[int]] | None = None
        self.graph = nx.Graph()
        self._rec: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []
        self._lookup_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._persist = False

    # ---------------------------------------------------------------- id helpers
    def make_id(self, layer: int, chunk: Sequence[int], segment: int) -> int:
        """Encode a node id from layer, chunk coordinates and segment id."""
        return encode_id(layer, chunk, segment, self.n_layers)

    def get_layer(self, ids: Any) -> np.ndarray:
        """Layer of each id (``id >> 56``)."""
        return (as_uint64(ids) >> np.uint64(64 - LAYER_ID_BITS)).astype(np.int64)

    def get_chunk_coordinates(self, node_id: int) -> tuple[int, int, int]:
        """Chunk coordinates (x, y, z) encoded in a node id."""
        return decode_id(node_id, self.n_layers)[1]

    def get_segment_id(self, node_id: int) -> int:
        """Segment id (the low bits) of a node id."""
        return decode_id(node_id, self.n_layers)[2]

    def _mint(self, layer: int, chunk: tuple[int, int, int]) -> int:
        key = (layer, 0, chunk)
        value = self._chunk_counters.get(key, 0) + 1
        self._chunk_counters[key] = value
        return self.make_id(layer, chunk, value)

    def _mint_root(self) -> int:
        idx = int(self._root_rng.integers(256))
        seg = int(self._root_counters[idx]) * 256 + idx
        self._root_counters[idx] += 1
        return self.make_id(self.n_layers, (0, 0, 0), seg)

    def _chunk_components(self, svs: Iterable[int]) -> list[set[int]]:
        """Connected pieces of these supervoxels within their chunks (what L2 nodes are)."""
        svs = list(svs)
        h = nx.Graph()
        h.add_nodes_from(svs)
        chunk = self.sv_chunk
        sset = set(svs)
        for a in svs:
            for b in self.graph.neighbors(a):
                if b in sset and b > a and np.array_equal(chunk[a], chunk[b]):
                    h.add_edge(a, b)
        return [set(c) for c in nx.connected_components(h)]

    # ---------------------------------------------------------------- index helpers
    def sv_index(self, svids: Any) -> np.ndarray:
        """Index of each supervoxel id in the model's arrays; -1 for unknown ids."""
        ids = as_uint64(svids)
        # Supervoxel ids sort by (chunk x, y, z, segment) and segments count 1.. per chunk, so an
        # id's rank is chunk_start + segment - 1: pure bit arithmetic, no search.
        b = self.bits[1]
        shift = 64 - LAYER_ID_BITS
        mask = np.uint64((1 << b) - 1)
        layer = ids >> np.uint64(shift)
        x = ((ids >> np.uint64(shift - b)) & mask).astype(np.int64)
        y = ((ids >> np.uint64(shift - 2 * b)) & mask).astype(np.int64)
        z = ((ids >> np.uint64(shift - 3 * b)) & mask).astype(np.int64)
        seg = (ids & np.uint64((1 << (shift - 3 * b)) - 1)).astype(np.int64)
        cx, cy, cz = (int(v) for v in self.chunks)
        ok = (layer == 1) & (x < cx) & (y < cy) & (z < cz) & (seg >= 1)
        flat = np.where(ok, (x * cy + y) * cz + z, 0)
        ok &= seg <= self._chunk_sv_count[flat]
        pos = np.where(ok, self._chunk_sv_start[flat] + seg - 1, 0)
        return np.where(ok, self._sorted_idx[pos], -1)

    def _require_sv(self, svid: int) -> int:
        idx = int(self.sv_index([svid])[0])
        if idx < 0:
            raise PCGError(400, f"Supervoxel {svid} does not exist")
        return idx

    def _lookup_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._lock:
            if self._lookup_cache is None:
                idx = np.concatenate([r[0] for r in self._rec])
                seq = np.concatenate([np.full(len(r[0]), r[1], dtype=np.int64) for r in self._rec])
                roots = np.concatenate([r[2] for r in self._rec])
                l2s = np.concatenate([r[3] for r in self._rec])
                keys = (idx << _SEQ_BITS) | seq
                order = np.argsort(keys, kind="stable")
                self._lookup_cache = (keys[order], roots[order], l2s[order])
            return self._lookup_cache

    def seq_at(self, timestamp: float | None) -> int:
        """Number of the last operation applied at ``timestamp`` (0 = base state)."""
        ts = to_posix(timestamp)
        if ts is None:
            return len(self._op_ts) - 1
        k = int(np.searchsorted(np.asarray(self._op_ts), ts, side="right")) - 1
        return max(k, 0)

    def _map_at_seq(self, idx: np.ndarray, seq: int, level: int) -> np.ndarray:
        """Root (level>2) or L2 (level 2) of supervoxel indices as of operation ``seq``."""
        if seq >= len(self._op_ts) - 1:
            return (self.cur_l2 if level == 2 else self.cur_root)[idx]
        if len(idx) > self.n_supervoxels // 4:
            # big batches: index a whole-world snapshot at seq (cached) instead of searching
            return self._snapshot(seq, level)[idx]
        keys, roots, l2s = self._lookup_arrays()
        q = (idx.astype(np.int64) << _SEQ_BITS) | seq
        pos = np.searchsorted(keys, q, side="right") - 1
        return (l2s if level == 2 else roots)[pos]

    def _snapshot(self, seq: int, level: int) -> np.ndarray:
        """Root (or L2) of every supervoxel as of ``seq``; a few recent snapshots are cached."""
        with self._lock:
            cache: dict[tuple[int, int, int], np.ndarray] = self.__dict__.setdefault(
                "_snapshots", {}
            )
            key = (len(self._op_ts), seq, 2 if level == 2 else 0)
            snap = cache.get(key)
            if snap is None:
                keys, roots, l2s = self._lookup_arrays()
                q = (np.arange(self.n_supervoxels, dtype=np.int64) << _SEQ_BITS) | seq
                pos = np.searchsorted(keys, q, side="right") - 1
                snap = (l2s if level == 2 else roots)[pos]
                if len(cache) >= 8:
                    cache.pop(next(iter(cache)))
                cache[key] = snap
            return snap

    # ---------------------------------------------------------------- timeline
    @property
    def base_timestamp(self) -> float:
        """When the segmentation was created (POSIX seconds)."""
        return self._op_ts[0]

    @property
    def latest_timestamp(self) -> float:
        """Timestamp of the last operation (or the base timestamp)."""
        return self._op_ts[-1]

    # ---------------------------------------------------------------- node members
    def _root(self, root_id: int) -> RootInfo:
        info = self.roots.get(int(root_id))
        if info is None:
            raise PCGError(400, f"{int(root_id)} is not a valid root id")
        return info

    def _members(self, node_id: int) -> tuple[np.ndarray, int]:
        """Supervoxel indices under a node, and the seq at which the node is evaluated."""
        node_id = int(node_id)
        if node_id in self.roots:
            r = self.roots[node_id]
            return r.members, r.created_seq
        if node_id in self.l2s:
            return self.l2s[node_id].members, self.l2s[node_id].created_seq
        idx = int(self.sv_index([node_id])[0])
        if idx >= 0:
            return np.array([idx], dtype=np.int64), len(self._op_ts) - 1
        raise PCGError(400, f"Node {node_id} does not exist")

    def in_bounds(self, idx: np.ndarray, bounds: np.ndarray | None) -> np.ndarray:
        """The supervoxel indices of ``idx`` whose bounding box overlaps ``bounds`` (all if None).

        ``bounds`` is ``[[x0, x1], [y0, y1], [z0, z1]]`` in voxels, as the API takes it.
        """
        if bounds is None:
            return idx
        lo, hi = bounds[:, 0], bounds[:, 1]
        keep = np.all((self.sv_bbox_max[idx] > lo) & (self.sv_bbox_min[idx] < hi), axis=1)
        return idx[keep]
