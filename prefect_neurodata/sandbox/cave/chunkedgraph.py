"""In-memory chunkedgraph model of the CAVE stand-in (PyChunkedGraph semantics, reference §3).

The world is a voxel volume (resolution ``(4, 4, 40)`` nm) cut into a grid of chunks. Neurons
are branching random walks through a coarse grid of *cells* (``cell_size`` voxels each); runs of
up to ``sv_cells`` consecutive cells inside one chunk form a supervoxel. Consecutive
supervoxels along a neurite are joined by atomic edges (high affinity). The world starts
over-segmented (some true edges missing) and with false merges (low-affinity edges between
touching neurons); the generated edit history then merges the fragments and splits the false
merges (min cut), followed by one undo and one redo. Everything is deterministic given
:class:`WorldParams`.

Node ids are uint64 ``[layer:8][x:b][y:b][z:b][segment]`` with PyChunkedGraph's bit widths.
Layer 1 = supervoxels, layer 2 = L2 nodes (one per connected component of a root's supervoxels
inside a chunk), layer ``n_layers`` = roots (chunk (0, 0, 0)); the root's children are its L2
nodes (a skip connection, as PyChunkedGraph allows).

Time: every edit is an operation with a sequence number ``seq`` (= operation id) and a POSIX
timestamp. For each supervoxel the model keeps (seq, root, l2) change records, and answers
``get_roots(svids, timestamp)`` with one ``searchsorted`` over a sorted key array, so a million
lookups take well under a second.

Example:
    >>> cg = ChunkedGraph.build(WorldParams(seed=1, n_neurons=6, neuron_length=60, n_merges=2,
    ...                                      n_splits=1, base_timestamp=1.7e9))
    >>> pos, svs = cg.sample_points(5, np.random.default_rng(0))
    >>> bool((cg.lookup_supervoxels(pos) == svs).all())
    True
    >>> roots = cg.get_roots(svs)
    >>> bool((cg.get_layer(roots) == cg.n_layers).all())
    True
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import networkx as nx
import numpy as np

from . import DEFAULT_PCG_TABLE, VOXEL_RESOLUTION
from .errors import PCGError

LAYER_ID_BITS = 8
SPATIAL_BITS = 10
FANOUT = 2
_SEQ_BITS = 32
_DIRS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.int64
)
TRUE_AFFINITY = (0.8, 1.0)
FALSE_AFFINITY = 0.05
MERGE_AFFINITY = 1.0


# ---------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class WorldParams:
    """Parameters that fully determine the generated world (persisted by the stand-in).

    Args:
        seed: RNG seed.
        n_neurons: Number of neurons (connected components before edits).
        neuron_length: Approximate number of cells per neuron.
        n_merges: Number of merge operations in the generated history (fragments fixed).
        n_splits: Number of split operations in the generated history (false merges cut).
        base_timestamp: POSIX seconds when the segmentation was created (before any edit).
        history_span_s: The generated edits are spread over this many seconds after the base.
        chunks: Number of chunks per axis.
        chunk_size: Chunk size in voxels.
        cell_size: Cell size in voxels (must divide ``chunk_size``).
        sv_cells: Maximum number of cells per supervoxel.
        undo_redo: Whether the history ends with an undo and a redo of the last merge.
    """

    seed: int = 1
    n_neurons: int = 150
    neuron_length: int = 400
    n_merges: int = 20
    n_splits: int = 10
    base_timestamp: float = 1_760_000_000.0
    history_span_s: float = 20 * 86400.0
    chunks: tuple[int, int, int] = (16, 16, 8)
    chunk_size: tuple[int, int, int] = (512, 512, 64)
    cell_size: tuple[int, int, int] = (64, 64, 8)
    sv_cells: int = 4
    undo_redo: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldParams:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        values: dict[str, Any] = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()
        }
        return cls(**values)


@dataclass
class RootInfo:
    """A root node: its members and lineage."""

    id: int
    created_seq: int
    created_ts: float
    members: np.ndarray  # supervoxel indices
    former: list[int] = field(default_factory=list)
    new: list[int] = field(default_factory=list)
    op_created: int | None = None
    op_superseded: int | None = None
    superseded_seq: int | None = None
    superseded_ts: float | None = None


@dataclass
class L2Info:
    """A level-2 node: supervoxels of one connected piece inside one chunk."""

    id: int
    chunk: tuple[int, int, int]
    members: np.ndarray
    created_seq: int
    created_ts: float
    superseded_seq: int | None = None


@dataclass
class Operation:
    """One edit in the operation log."""

    id: int
    kind: str  # merge | split | undo | redo
    ts: float
    user_id: int
    added_edges: list[tuple[int, int]]  # supervoxel ids
    removed_edges: list[tuple[int, int]]
    old_roots: list[int]
    new_roots: list[int]
    meta: dict[str, Any]
    undone: bool = False

    @property
    def is_merge(self) -> bool:
        """True when the operation joined objects (merge, or undo of a split...)."""
        return bool(self.added_edges) and not self.removed_edges


@dataclass
class OperationRecord:
    """Everything needed to replay an operation (persisted by the world)."""

    seq: int
    kind: str
    ts: float
    user_id: int
    added: list[list[int]]
    removed: list[list[int]]
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperationRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


# ---------------------------------------------------------------------------- id layout
def spatial_bits_for(n_layers: int) -> dict[int, int]:
    """Bits per spatial dimension for each layer (PyChunkedGraph ``compute_bitmasks``)."""
    out: dict[int, int] = {}
    for layer in range(1, n_layers + 1):
        if layer in (1, 2):
            out[layer] = max(SPATIAL_BITS, n_layers - 2)
        else:
            out[layer] = max(1, n_layers - layer)
    return out


def encode_id(layer: int, chunk: Sequence[int], segment: int, n_layers: int) -> int:
    """Node id from layer, chunk coordinates and segment id for a graph with ``n_layers``.

    Example:
        >>> encode_id(12, (0, 0, 0), 6762736039, n_layers=12)
        864691135217871271
    """
    b = spatial_bits_for(n_layers)[layer]
    shift = 64 - LAYER_ID_BITS
    value = layer << shift
    for i, c in enumerate(chunk):
        value |= int(c) << (shift - (i + 1) * b)
    return value | int(segment)


def decode_id(node_id: int, n_layers: int) -> tuple[int, tuple[int, int, int], int]:
    """``(layer, (x, y, z), segment)`` of a node id for a graph with ``n_layers``.

    Example:
        >>> decode_id(97557743795364048, n_layers=12)
        (1, (362, 388, 18), 188624)
    """
    node_id = int(node_id)
    shift = 64 - LAYER_ID_BITS
    layer = node_id >> shift
    b = spatial_bits_for(n_layers).get(layer, 1)
    mask = (1 << b) - 1
    chunk = tuple((node_id >> (shift - (i + 1) * b)) & mask for i in range(3))
    segment = node_id & ((1 << (shift - 3 * b)) - 1)
    return layer, chunk, segment  # type: ignore[return-value]


@overload
def to_posix(timestamp: None) -> None: ...
@overload
def to_posix(timestamp: float | dt.datetime | np.datetime64) -> float: ...
def to_posix(timestamp: Any) -> float | None:
    """POSIX seconds from a float/int, a datetime (naive = UTC) or ``None`` (kept ``None``)."""
    if timestamp is None:
        return None
    if isinstance(timestamp, dt.datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=dt.timezone.utc)
        return timestamp.timestamp()
    if isinstance(timestamp, np.datetime64):
        return float(timestamp.astype("datetime64[us]").astype(np.int64)) / 1e6
    return float(timestamp)


def _as_uint64(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype == np.uint64:
        return arr.reshape(-1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if arr.dtype.kind == "f":
        raise PCGError(400, "node ids must be integers")
    return arr.astype(np.uint64).reshape(-1)


def _walk_roots(start: Iterable[int], step: Callable[[int], Iterable[int]]) -> None:
    """Visit every root reachable from ``start`` once, depth first, as lineage walks do.

    ``step(root_id)`` handles one root and returns the roots to visit from it; they go on a
    stack, so the last one returned is visited next (the order the lineage graph's nodes and
    edges are added in, which its JSON reply keeps).
    """
    todo = list(start)
    seen: set[int] = set()
    while todo:
        root_id = todo.pop()
        if root_id in seen:
            continue
        seen.add(root_id)
        todo.extend(step(root_id))


# ---------------------------------------------------------------------------- model
class ChunkedGraph:
    """The chunkedgraph model. Build it with :meth:`ChunkedGraph.build`.

    All timestamps are float POSIX seconds (UTC). Methods that take node ids accept any
    sequence of ints / ``np.uint64``. Errors that a client can cause raise
    :class:`~.errors.PCGError` with the status PyChunkedGraph uses.

    Attributes:
        params: The :class:`WorldParams`.
        table_id: PCG table name.
        n_layers: Number of layers (root layer).
        resolution: Voxel resolution in nm.
        on_operation: Callback called with an :class:`OperationRecord` after each API edit.
    """

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

    @classmethod
    def build(
        cls,
        params: WorldParams,
        table_id: str = DEFAULT_PCG_TABLE,
        resolution: Sequence[float] = VOXEL_RESOLUTION,
    ) -> ChunkedGraph:
        """Generate the world (neurons, supervoxels, edges, roots) and its edit history.

        Args:
            params: World parameters.
            table_id: PCG table name.
            resolution: Voxel resolution (nm).

        Returns:
            The model; later edits through the API call :attr:`on_operation`.
        """
        cg = cls(params, table_id=table_id, resolution=resolution)
        rng = np.random.default_rng(params.seed)
        cg._generate_neurons(rng)
        history = cg._plan_history(rng)
        cg._init_base()
        cg._run_history(history, rng)
        cg._persist = True
        return cg

    # ---------------------------------------------------------------- id helpers
    def make_id(self, layer: int, chunk: Sequence[int], segment: int) -> int:
        """Encode a node id from layer, chunk coordinates and segment id."""
        return encode_id(layer, chunk, segment, self.n_layers)

    def get_layer(self, ids: Any) -> np.ndarray:
        """Layer of each id (``id >> 56``)."""
        return (_as_uint64(ids) >> np.uint64(64 - LAYER_ID_BITS)).astype(np.int64)

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

    # ---------------------------------------------------------------- generation
    def _generate_neurons(self, rng: np.random.Generator) -> None:
        p = self.params
        gx, gy, gz = self.grid_shape
        labels = np.zeros(self.grid_shape, dtype=np.int32)  # sv index + 1
        cells_per_chunk = self.chunk_size // self.cell_size
        sv_chunk: list[tuple[int, int, int]] = []
        sv_neuron: list[int] = []
        sv_cells: list[list[tuple[int, int, int]]] = []
        edges: list[tuple[int, int]] = []
        somas: list[tuple[int, int]] = []  # (sv index, cell flat)
        upper = np.array(self.grid_shape, dtype=np.int64)

        def new_sv(cell: np.ndarray, neuron: int) -> int:
            chunk = tuple(int(v) for v in cell // cells_per_chunk)
            sv_chunk.append(chunk)  # type: ignore[arg-type]
            sv_neuron.append(neuron)
            sv_cells.append([])
            return len(sv_chunk) - 1

        for neuron in range(p.n_neurons):
            soma = None
            for _ in range(200):
                cand = (
                    rng.integers(gx // 8, gx - gx // 8),
                    rng.integers(gy // 8, gy - gy // 8),
                    rng.integers(gz // 8, gz - gz // 8),
                )
                if labels[cand] == 0:
                    soma = np.array(cand, dtype=np.int64)
                    break
            if soma is None:
                break
            s0 = new_sv(soma, neuron)
            sv_cells[s0].append(tuple(int(v) for v in soma))  # type: ignore[arg-type]
            labels[tuple(soma)] = s0 + 1
            somas.append((s0, 0))
            stack = [
                (soma.copy(), s0, int(rng.integers(6))) for _ in range(int(rng.integers(3, 6)))
            ]
            budget = p.neuron_length
            while stack and budget > 0:
                cell, parent_sv, d = stack.pop()
                cur_sv = -1
                cur_len = 0
                for _ in range(int(rng.integers(15, 60))):
                    if rng.random() < 0.3:
                        d = int(rng.integers(6))
                    moved = False
                    for attempt in range(6):
                        dd = d if attempt == 0 else int(rng.integers(6))
                        nxt = cell + _DIRS[dd]
                        if np.any(nxt < 0) or np.any(nxt >= upper) or labels[tuple(nxt)] != 0:
                            continue
                        d = dd
                        moved = True
                        break
                    if not moved:
                        break
                    cell = nxt
                    budget -= 1
                    chunk = tuple(int(v) for v in cell // cells_per_chunk)
                    if cur_sv < 0 or cur_len >= p.sv_cells or sv_chunk[cur_sv] != chunk:
                        prev = parent_sv if cur_sv < 0 else cur_sv
                        cur_sv = new_sv(cell, neuron)
                        edges.append((prev, cur_sv))
                        cur_len = 0
                    labels[tuple(cell)] = cur_sv + 1
                    sv_cells[cur_sv].append(tuple(int(v) for v in cell))  # type: ignore[arg-type]
                    cur_len += 1
                    if rng.random() < 0.04:
                        stack.append((cell.copy(), cur_sv, int(rng.integers(6))))
                    if budget <= 0:
                        break

        n = len(sv_chunk)
        self.n_supervoxels = n
        self.labels = labels
        self.sv_chunk = np.asarray(sv_chunk, dtype=np.int64).reshape(n, 3)
        self.sv_neuron = np.asarray(sv_neuron, dtype=np.int64)
        ids = np.zeros(n, dtype=np.uint64)
        for i in range(n):
            ids[i] = self._mint(1, sv_chunk[i])
        self.sv_ids = ids
        order = np.argsort(ids)
        self._sorted_ids = ids[order]
        self._sorted_idx = order.astype(np.int64)
        cx, cy, cz = (int(v) for v in self.chunks)
        chunk_flat = (self.sv_chunk[:, 0] * cy + self.sv_chunk[:, 1]) * cz + self.sv_chunk[:, 2]
        self._chunk_sv_count = np.bincount(chunk_flat, minlength=cx * cy * cz).astype(np.int64)
        self._chunk_sv_start = np.concatenate([[0], np.cumsum(self._chunk_sv_count)[:-1]])
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(c) for c in sv_cells])
        self.sv_cell_offsets = offsets
        self.sv_cells = np.asarray(
            [c for cells in sv_cells for c in cells], dtype=np.int64
        ).reshape(-1, 3)
        mins = np.zeros((n, 3), dtype=np.int64)
        maxs = np.zeros((n, 3), dtype=np.int64)
        for i in range(n):
            cells = self.sv_cells[offsets[i] : offsets[i + 1]]
            mins[i] = cells.min(axis=0) * self.cell_size
            maxs[i] = (cells.max(axis=0) + 1) * self.cell_size
        self.sv_bbox_min = mins
        self.sv_bbox_max = maxs
        self._soma_sv = np.asarray([s for s, _ in somas], dtype=np.int64)
        self._true_edges = edges
        self._occupied = np.argwhere(labels > 0).astype(np.int64)
        self._contacts = self._find_contacts()

    def _find_contacts(self) -> np.ndarray:
        """Pairs of face-adjacent cells of different neurons: array (m, 2, 3) of cells."""
        out = []
        lab = self.labels
        for axis in range(3):
            a = np.moveaxis(lab, axis, 0)
            left, right = a[:-1], a[1:]
            mask = (left > 0) & (right > 0)
            mask &= (
                self.sv_neuron[np.maximum(left, 1) - 1] != self.sv_neuron[np.maximum(right, 1) - 1]
            )
            first = np.argwhere(mask)
            if first.size == 0:
                continue
            first_xyz = np.zeros_like(first)
            order = [axis] + [i for i in range(3) if i != axis]
            for j, ax in enumerate(order):
                first_xyz[:, ax] = first[:, j]
            second_xyz = first_xyz.copy()
            second_xyz[:, axis] += 1
            out.append(np.stack([first_xyz, second_xyz], axis=1))
        if not out:
            return np.zeros((0, 2, 3), dtype=np.int64)
        return np.concatenate(out).astype(np.int64)

    def _plan_history(self, rng: np.random.Generator) -> list[tuple[str, int, int]]:
        """Pick fragmenting edges (removed at base) and false merges (added at base)."""
        p = self.params
        plan: list[tuple[str, int, int]] = []
        edges = self._true_edges
        self._base_removed: set[tuple[int, int]] = set()
        if edges and p.n_merges:
            picks = rng.choice(len(edges), size=min(p.n_merges, len(edges)), replace=False)
            for k in picks:
                a, b = edges[int(k)]
                self._base_removed.add((min(a, b), max(a, b)))
                plan.append(("merge", a, b))
        self._false_edges: list[tuple[int, int]] = []
        contacts = self._contacts
        seen_pairs: set[tuple[int, int]] = set()
        if len(contacts) and p.n_splits:
            for k in rng.permutation(len(contacts)):
                if len(self._false_edges) >= p.n_splits:
                    break
                ca, cb = contacts[int(k)]
                a = int(self.labels[tuple(ca)]) - 1
                b = int(self.labels[tuple(cb)]) - 1
                na, nb = int(self.sv_neuron[a]), int(self.sv_neuron[b])
                pair = (min(na, nb), max(na, nb))
                if pair in seen_pairs:
                    continue
                seen_pairs.add(pair)
                self._false_edges.append((a, b))
                plan.append(("split", a, b))
        order = rng.permutation(len(plan))
        return [plan[int(i)] for i in order]

    def _init_base(self) -> None:
        p = self.params
        rng = np.random.default_rng(p.seed + 101)
        base_ts = float(p.base_timestamp)
        g = self.graph
        g.add_nodes_from(range(self.n_supervoxels))
        for a, b in self._true_edges:
            key = (min(a, b), max(a, b))
            aff = float(rng.uniform(*TRUE_AFFINITY))
            area = int(rng.integers(50, 400))
            active = key not in self._base_removed
            self._edges[key] = {
                "affinity": aff,
                "area": area,
                "intervals": [[base_ts, None]] if active else [],
            }
            if active:
                g.add_edge(*key, affinity=aff, area=area)
        for a, b in self._false_edges:
            key = (min(a, b), max(a, b))
            self._edges[key] = {
                "affinity": FALSE_AFFINITY,
                "area": int(rng.integers(5, 30)),
                "intervals": [[base_ts, None]],
            }
            g.add_edge(*key, affinity=FALSE_AFFINITY, area=self._edges[key]["area"])
        n = self.n_supervoxels
        self.cur_root = np.zeros(n, dtype=np.uint64)
        self.cur_l2 = np.zeros(n, dtype=np.uint64)
        # L2: connected pieces inside each chunk
        for comp in self._chunk_components(range(n)):
            members = np.asarray(sorted(comp), dtype=np.int64)
            chunk = tuple(int(v) for v in self.sv_chunk[members[0]])
            l2 = self._mint(2, chunk)  # type: ignore[arg-type]
            self.l2s[l2] = L2Info(l2, chunk, members, 0, base_ts)  # type: ignore[arg-type]
            self.cur_l2[members] = l2
        comps = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: c[0])
        for component in comps:
            members = np.asarray(component, dtype=np.int64)
            root = self._mint_root()
            self.roots[root] = RootInfo(root, 0, base_ts, members)
            self.cur_root[members] = root
        all_idx = np.arange(n, dtype=np.int64)
        self._rec.append((all_idx, 0, self.cur_root.copy(), self.cur_l2.copy()))

    def _chunk_components(self, svs: Iterable[int]) -> list[set[int]]:
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

    def _run_history(self, plan: list[tuple[str, int, int]], rng: np.random.Generator) -> None:
        p = self.params
        n = max(1, len(plan) + (2 if p.undo_redo else 0))
        step = p.history_span_s / (n + 1)
        ts = p.base_timestamp
        last_merge: int | None = None
        users = (2, 1)
        for i, (kind, a, b) in enumerate(plan):
            ts = p.base_timestamp + step * (i + 1)
            try:
                if kind == "merge":
                    op = self._merge_svs(a, b, ts, users[i % 2], meta={})
                    last_merge = op.id
                else:
                    self._split_svs([a], [b], ts, users[i % 2], meta={}, mincut=True)
            except PCGError:
                continue  # an earlier edit made this one moot; the history just skips it
        if p.undo_redo and last_merge is not None:
            self.undo(last_merge, user_id=1, timestamp=ts + step)
            self.redo(last_merge, user_id=2, timestamp=ts + 2 * step)
        del rng

    # ---------------------------------------------------------------- index helpers
    def sv_index(self, svids: Any) -> np.ndarray:
        """Index of each supervoxel id in the model's arrays; -1 for unknown ids."""
        ids = _as_uint64(svids)
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

    # ---------------------------------------------------------------- spatial API
    def lookup_supervoxels(self, points_voxel: Any) -> np.ndarray:
        """Supervoxel id under each point (vectorised); 0 for background or out of bounds.

        Args:
            points_voxel: Array ``(n, 3)`` of positions in base-resolution voxels (4,4,40 nm).

        Returns:
            ``np.ndarray[uint64]`` of length n.
        """
        pts = np.asarray(points_voxel)
        if pts.size == 0:
            return np.zeros(0, dtype=np.uint64)
        pts = pts.reshape(-1, 3)
        cells = np.floor_divide(pts, self.cell_size).astype(np.int64)
        inside = np.all((cells >= 0) & (cells < np.asarray(self.grid_shape)), axis=1)
        out = np.zeros(len(pts), dtype=np.uint64)
        c = cells[inside]
        lab = self.labels[c[:, 0], c[:, 1], c[:, 2]]
        vals = np.zeros(len(lab), dtype=np.uint64)
        nz = lab > 0
        vals[nz] = self.sv_ids[lab[nz] - 1]
        out[inside] = vals
        return out

    def sample_points(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Uniform random points inside neurons.

        Args:
            n: Number of points.
            rng: NumPy generator (determinism is the caller's).

        Returns:
            ``(positions int64 (n, 3) in voxels, supervoxel ids uint64 (n,))``.
        """
        pick = self._occupied[rng.integers(len(self._occupied), size=n)]
        pos = pick * self.cell_size + rng.integers(0, self.cell_size, size=(n, 3))
        lab = self.labels[pick[:, 0], pick[:, 1], pick[:, 2]]
        return pos.astype(np.int64), self.sv_ids[lab - 1]

    def sample_contacts(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random synapse-like contacts between two different neurons.

        Args:
            n: Number of contacts.
            rng: NumPy generator.

        Returns:
            Dict with ``pre_pt_position``, ``post_pt_position``, ``ctr_pt_position`` (int64
            (n, 3) voxels) and ``pre_pt_supervoxel_id``, ``post_pt_supervoxel_id`` (uint64).
        """
        if len(self._contacts) == 0:
            raise ValueError("the world has no contacts between neurons; use more neurons")
        pick = self._contacts[rng.integers(len(self._contacts), size=n)]
        swap = rng.random(n) < 0.5
        pre_c = np.where(swap[:, None], pick[:, 1], pick[:, 0])
        post_c = np.where(swap[:, None], pick[:, 0], pick[:, 1])
        pre = pre_c * self.cell_size + rng.integers(0, self.cell_size, size=(n, 3))
        post = post_c * self.cell_size + rng.integers(0, self.cell_size, size=(n, 3))
        ctr = (pre + post) // 2
        pre_sv = self.sv_ids[self.labels[pre_c[:, 0], pre_c[:, 1], pre_c[:, 2]] - 1]
        post_sv = self.sv_ids[self.labels[post_c[:, 0], post_c[:, 1], post_c[:, 2]] - 1]
        return {
            "pre_pt_position": pre.astype(np.int64),
            "post_pt_position": post.astype(np.int64),
            "ctr_pt_position": ctr.astype(np.int64),
            "pre_pt_supervoxel_id": pre_sv,
            "post_pt_supervoxel_id": post_sv,
        }

    def somas(self) -> tuple[np.ndarray, np.ndarray]:
        """One soma point per neuron: ``(positions int64 (k, 3) voxels, supervoxel ids)``."""
        first = self.sv_cells[self.sv_cell_offsets[self._soma_sv]]
        pos = first * self.cell_size + self.cell_size // 2
        return pos.astype(np.int64), self.sv_ids[self._soma_sv]

    def sv_position(self, svid: int) -> np.ndarray:
        """A voxel position inside the supervoxel (center of its first cell)."""
        idx = self._require_sv(svid)
        return self.sv_cells[self.sv_cell_offsets[idx]] * self.cell_size + self.cell_size // 2

    # ---------------------------------------------------------------- time-aware reads
    @property
    def base_timestamp(self) -> float:
        """When the segmentation was created (POSIX seconds)."""
        return self._op_ts[0]

    @property
    def latest_timestamp(self) -> float:
        """Timestamp of the last operation (or the base timestamp)."""
        return self._op_ts[-1]

    def get_roots(
        self, node_ids: Any, timestamp: float | None = None, stop_layer: int | None = None
    ) -> np.ndarray:
        """Root (or ``stop_layer`` ancestor) of each node at ``timestamp``, vectorised.

        Args:
            node_ids: Supervoxel ids (L2 and root ids are accepted too).
            timestamp: POSIX seconds or datetime (naive = UTC); ``None`` = now.
            stop_layer: 2 returns L2 ids; ``None`` or >= ``n_layers`` returns roots;
                3..n_layers-1 return roots (roots are direct parents of L2 nodes).

        Returns:
            ``np.ndarray[uint64]`` in input order; 0 for 0 and for unknown ids.
        """
        ids = _as_uint64(node_ids)
        level = 2 if stop_layer == 2 else self.n_layers
        if stop_layer == 1:
            return ids.copy()
        idx = self.sv_index(ids)
        out = np.zeros(len(ids), dtype=np.uint64)
        ok = idx >= 0
        with self._lock:  # edits swap arrays; never read half an edit
            seq = self.seq_at(timestamp)
            if ok.any():
                out[ok] = self._map_at_seq(idx[ok], seq, level)
            rest = np.nonzero(~ok & (ids != 0))[0]
            for i in rest:
                out[i] = self._higher_node_parent(int(ids[i]), seq, level)
        return out

    def _higher_node_parent(self, node: int, seq: int, level: int) -> int:
        if node in self.roots:
            return node
        l2 = self.l2s.get(node)
        if l2 is None:
            return 0
        if level == 2:
            return node
        return int(self._map_at_seq(l2.members[:1], max(seq, l2.created_seq), self.n_layers)[0])

    def node_exists(self, node_id: int) -> bool:
        """Whether a node id (supervoxel, L2 or root) exists in the graph."""
        node_id = int(node_id)
        return node_id in self.roots or node_id in self.l2s or self.sv_index([node_id])[0] >= 0

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

    def get_leaves(
        self, node_id: int, bounds: np.ndarray | None = None, stop_layer: int = 1
    ) -> np.ndarray:
        """Descendants of a node at ``stop_layer`` (1 = supervoxels, 2+ = L2 nodes).

        Args:
            node_id: Root, L2 or supervoxel id.
            bounds: Optional ``[[x0, x1], [y0, y1], [z0, z1]]`` in voxels.
            stop_layer: Layer of the returned nodes.
        """
        idx, seq = self._members(node_id)
        idx = self.in_bounds(idx, bounds)
        if stop_layer is None or stop_layer <= 1:
            return np.sort(self.sv_ids[idx])
        if int(node_id) in self.l2s or self.get_layer([node_id])[0] <= stop_layer:
            return np.asarray([int(node_id)], dtype=np.uint64)
        return np.unique(self._map_at_seq(idx, seq, 2))

    def get_children(self, node_id: int) -> np.ndarray:
        """Children: root -> its L2 nodes, L2 -> supervoxels, supervoxel -> empty."""
        node_id = int(node_id)
        if node_id in self.roots:
            r = self.roots[node_id]
            return np.unique(self._map_at_seq(r.members, r.created_seq, 2))
        if node_id in self.l2s:
            return np.sort(self.sv_ids[self.l2s[node_id].members])
        if self.sv_index([node_id])[0] >= 0 or node_id == 0:
            return np.zeros(0, dtype=np.uint64)
        raise PCGError(400, f"Node {node_id} does not exist")

    def node_created_ts(self, node_id: int) -> float | None:
        """Creation timestamp of any node, ``None`` if unknown."""
        node_id = int(node_id)
        if node_id in self.roots:
            return self.roots[node_id].created_ts
        if node_id in self.l2s:
            return self.l2s[node_id].created_ts
        if node_id and self.sv_index([node_id])[0] >= 0:
            return self.base_timestamp
        return None

    def _root_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted root ids with their created / superseded timestamps (inf if current)."""
        with self._lock:
            cache = getattr(self, "_root_array_cache", None)
            if cache is None or cache[0] != len(self._op_ts):
                ids = np.fromiter(self.roots.keys(), dtype=np.uint64, count=len(self.roots))
                order = np.argsort(ids)
                infos = list(self.roots.values())
                created = np.asarray([r.created_ts for r in infos], dtype=np.float64)
                sup = np.asarray(
                    [np.inf if r.superseded_ts is None else r.superseded_ts for r in infos],
                    dtype=np.float64,
                )
                cache = (len(self._op_ts), ids[order], created[order], sup[order])
                self._root_array_cache = cache
            return cache[1], cache[2], cache[3]

    def _root_lookup(self, root_ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = _as_uint64(root_ids)
        keys, created, sup = self._root_arrays()
        if len(keys) == 0:
            return np.zeros(len(ids), bool), np.zeros(len(ids)), np.zeros(len(ids))
        pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        found = keys[pos] == ids
        return found, created[pos], sup[pos]

    def is_latest_roots(self, root_ids: Any, timestamp: Any = None) -> np.ndarray:
        """True iff the id is a root created at or before ``timestamp`` and not superseded then.

        Args:
            root_ids: Root ids (vectorised).
            timestamp: POSIX seconds or datetime; ``None`` = now.
        """
        ts = time.time() if timestamp is None else to_posix(timestamp)
        found, created, sup = self._root_lookup(root_ids)
        return found & (created <= ts) & (sup > ts)

    def get_root_timestamps(
        self, root_ids: Any, latest: bool = False, timestamp: Any = None
    ) -> np.ndarray:
        """Creation time of each root (float seconds); 0 for unknown ids.

        With ``latest=True`` a superseded root reports when it was superseded and a current root
        reports ``timestamp`` (default now).
        """
        ts = time.time() if timestamp is None else to_posix(timestamp)
        found, created, sup = self._root_lookup(root_ids)
        out = np.where(sup <= ts, sup, ts) if latest else created
        return np.where(found, out, 0.0)

    def valid_nodes(self, node_ids: Any, start: float | None, end: float | None) -> np.ndarray:
        """The ids among ``node_ids`` written within ``[start, end]`` (any layer)."""
        lo = -math.inf if start is None else to_posix(start)
        hi = math.inf if end is None else to_posix(end)
        out = []
        for nid in _as_uint64(node_ids):
            ts = self.node_created_ts(int(nid))
            if ts is not None and lo <= ts <= hi:
                out.append(int(nid))
        return np.asarray(out, dtype=np.uint64)

    # ---------------------------------------------------------------- lineage / history
    def lineage_graph(
        self,
        root_ids: Any,
        timestamp_past: float | None = None,
        timestamp_future: float | None = None,
    ) -> nx.DiGraph:
        """Lineage DiGraph around the roots: nodes carry ``timestamp`` and ``operation_id``.

        Walks back through former roots until a node older than ``timestamp_past`` and forward
        through successors while they are not newer than ``timestamp_future``. Edges go from older
        to newer roots; ``operation_id`` is the operation that superseded the node.
        """
        past = -math.inf if timestamp_past is None else to_posix(timestamp_past)
        future = math.inf if timestamp_future is None else to_posix(timestamp_future)
        g = nx.DiGraph()
        todo_back: list[int] = []
        todo_fwd: list[int] = []
        for rid in _as_uint64(root_ids):
            r = self._root(int(rid))
            self._add_lineage_node(g, r)
            todo_back.append(r.id)
            todo_fwd.append(r.id)

        def step_back(nid: int) -> list[int]:
            r = self.roots[nid]
            if r.created_ts < past:
                return []
            for f in r.former:
                self._add_lineage_node(g, self.roots[f])
                g.add_edge(f, nid)
            return r.former

        def step_forward(nid: int) -> list[int]:
            later: list[int] = []
            for nxt in self.roots[nid].new:
                rn = self.roots[nxt]
                if rn.created_ts > future:
                    continue
                self._add_lineage_node(g, rn)
                g.add_edge(nid, nxt)
                later.append(nxt)
            return later

        _walk_roots(todo_back, step_back)
        _walk_roots(todo_fwd, step_forward)
        return g

    @staticmethod
    def _add_lineage_node(g: nx.DiGraph, r: RootInfo) -> None:
        if r.id in g:
            return
        attrs: dict[str, Any] = {"timestamp": r.created_ts}
        if r.op_superseded is not None:
            attrs["operation_id"] = r.op_superseded
        g.add_node(r.id, **attrs)

    def past_id_mapping(
        self, root_ids: Any, timestamp_past: float | None, timestamp_future: float | None
    ) -> tuple[dict[int, list[int]], dict[int, int]]:
        """Past ids of each root at ``timestamp_past`` (in-degree-0 ancestors of its lineage).

        Returns:
            ``(past_id_map {root: [past ids]}, future_id_map)``. The future map is always empty,
            as PyChunkedGraph's ``handle_past_id_mapping`` answers (it never fills it); a
            stand-in that filled it would make the official client's ``live_query`` take its
            future-map shortcut and return rows the real service would not.
        """
        past_map: dict[int, list[int]] = {}
        for rid in _as_uint64(root_ids):
            rid = int(rid)
            g = self.lineage_graph([rid], timestamp_past, timestamp_future)
            anc = nx.ancestors(g, rid)
            past_map[rid] = sorted(n for n in anc if g.in_degree(n) == 0) or [rid]
        return past_map, {}

    def delta_roots(
        self, timestamp_past: float, timestamp_future: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Roots created by operations in ``(past, future]`` and the roots they replaced.

        Returns:
            ``(old_roots, new_roots)`` as uint64 arrays.
        """
        future = math.inf if timestamp_future is None else to_posix(timestamp_future)
        old: list[int] = []
        new: list[int] = []
        for op in self.operations:
            if to_posix(timestamp_past) < op.ts <= future:
                new.extend(op.new_roots)
                old.extend(op.old_roots)
        return np.asarray(old, dtype=np.uint64), np.asarray(new, dtype=np.uint64)

    def root_history_operations(self, root_id: int) -> list[Operation]:
        """Operations that created the root or any of its ancestors, oldest first."""
        root = self._root(root_id)
        ops: set[int] = set()

        def step_back(nid: int) -> list[int]:
            r = self.roots[nid]
            if r.op_created is not None:
                ops.add(r.op_created)
            return r.former

        _walk_roots([root.id], step_back)
        return [self.operations[i - 1] for i in sorted(ops)]

    def change_log(self, root_id: int, filtered: bool = False) -> dict[str, Any]:
        """Summary of a root's edit history (reference §3.6 ``change_log``)."""
        ops = self.root_history_operations(root_id)
        n_splits = sum(1 for op in ops if not op.is_merge)
        n_mergers = sum(1 for op in ops if op.is_merge)
        user_info: dict[str, dict[str, int]] = {}
        for op in ops:
            key = "n_mergers" if op.is_merge else "n_splits"
            entry = user_info.setdefault(str(op.user_id), {})
            entry[key] = entry.get(key, 0) + 1
        past_ids: list[int] = []
        for op in ops:
            past_ids.extend(op.old_roots)
        return {
            "n_splits": n_splits,
            "n_mergers": n_mergers,
            "user_info": user_info,
            "operations_ids": [op.id for op in ops],
            "past_ids": past_ids,
        }

    def tabular_change_log(self, root_id: int, filtered: bool = True) -> list[dict[str, Any]]:
        """Rows of the tabular change log of a root (the API turns them into DataFrame JSON)."""
        rows = []
        for op in self.root_history_operations(root_id):
            row: dict[str, Any] = {
                "operation_id": op.id,
                "timestamp": op.ts,
                "user_id": op.user_id,
                "before_root_ids": list(op.old_roots),
                "after_root_ids": list(op.new_roots),
                "is_merge": op.is_merge,
            }
            if not filtered:
                row["in_neuron"] = True
                row["is_relevant"] = True
            rows.append(row)
        return rows

    def merge_log(self, root_id: int) -> dict[str, Any]:
        """Merges in a root's history: ``{"merge_edges", "merge_edge_coords"}``."""
        edges = []
        coords = []
        for op in self.root_history_operations(root_id):
            if not op.is_merge:
                continue
            edges.append([list(e) for e in op.added_edges])
            pts = [self.sv_position(e[0]).tolist() for e in op.added_edges[:1]]
            pts2 = [self.sv_position(e[1]).tolist() for e in op.added_edges[:1]]
            coords.append([pts, pts2])
        return {"merge_edges": edges, "merge_edge_coords": coords}

    def get_operation(self, op_id: int) -> Operation:
        """The operation with this id (400 if unknown)."""
        if not 1 <= int(op_id) <= len(self.operations):
            raise PCGError(400, f"Operation {op_id} does not exist")
        return self.operations[int(op_id) - 1]

    def oldest_timestamp(self) -> float:
        """Earliest operation-log timestamp minus 0.5 s (base timestamp if no edits)."""
        first = self.operations[0].ts if self.operations else self.base_timestamp
        return min(first, self.base_timestamp) - 0.5

    # ---------------------------------------------------------------- graph reads
    def _edges_at(self, idx: np.ndarray, ts: float) -> list[tuple[int, int, dict[str, Any]]]:
        members = set(int(i) for i in idx)
        out = []
        for a in members:
            for b in self._all_neighbors(a):
                if b <= a or b not in members:
                    continue
                e = self._edges[(a, b)]
                if any(s <= ts and (t is None or t > ts) for s, t in e["intervals"]):
                    out.append((a, b, e))
        return out

    def _all_neighbors(self, a: int) -> list[int]:
        nb = getattr(self, "_neighbor_cache", None)
        if nb is None:
            nb = {}
            for x, y in self._edges:
                nb.setdefault(x, []).append(y)
                nb.setdefault(y, []).append(x)
            self._neighbor_cache = nb
        return nb.get(a, [])

    def _root_eval_ts(self, root_id: int) -> tuple[RootInfo, float]:
        r = self._root(root_id)
        return r, self._op_ts[r.created_seq]

    def subgraph(self, root_id: int, bounds: np.ndarray | None = None) -> dict[str, Any]:
        """Supervoxel edges of a root: ``{"nodes": [[a, b]...], "affinities", "areas"}``."""
        r, ts = self._root_eval_ts(root_id)
        idx = self.in_bounds(r.members, bounds)
        edges = self._edges_at(idx, ts)
        return {
            "nodes": [[int(self.sv_ids[a]), int(self.sv_ids[b])] for a, b, _ in edges],
            "affinities": [e["affinity"] for _, _, e in edges],
            "areas": [e["area"] for _, _, e in edges],
        }

    def level2_graph(self, root_id: int, bounds: np.ndarray | None = None) -> list[list[int]]:
        """Edges between the root's L2 nodes (``[[l2a, l2b], ...]``)."""
        r, ts = self._root_eval_ts(root_id)
        idx = self.in_bounds(r.members, bounds)
        edges = self._edges_at(idx, ts)
        if not edges:
            return []
        a = np.asarray([e[0] for e in edges], dtype=np.int64)
        b = np.asarray([e[1] for e in edges], dtype=np.int64)
        la = self._map_at_seq(a, r.created_seq, 2)
        lb = self._map_at_seq(b, r.created_seq, 2)
        pairs = {tuple(sorted((int(x), int(y)))) for x, y in zip(la, lb, strict=True) if x != y}
        return [list(p) for p in sorted(pairs)]

    def find_sv_in_node(self, node_id: int, position_voxel: Sequence[float]) -> int:
        """Supervoxel at a voxel position belonging to ``node_id`` (searching nearby cells).

        Raises:
            PCGError: 400 when no supervoxel of the node is within 3 cells of the point.
        """
        node_id = int(node_id)
        pos = np.asarray(position_voxel, dtype=np.float64)
        layer = int(self.get_layer([node_id])[0])
        if layer == 1:
            self._require_sv(node_id)
            return node_id
        idx, seq = self._members(node_id)
        member_set = set(int(i) for i in idx)
        cell = np.floor(pos / self.cell_size).astype(np.int64)
        for radius in range(0, 4):
            best = None
            rng_ = range(-radius, radius + 1)
            for dx in rng_:
                for dy in rng_:
                    for dz in rng_:
                        c = cell + np.array([dx, dy, dz])
                        if np.any(c < 0) or np.any(c >= np.asarray(self.grid_shape)):
                            continue
                        lab = int(self.labels[tuple(c)])
                        if lab and (lab - 1) in member_set:
                            d = abs(dx) + abs(dy) + abs(dz)
                            if best is None or d < best[0]:
                                best = (d, lab - 1)
            if best is not None:
                return int(self.sv_ids[best[1]])
        del seq
        raise PCGError(
            400, f"Could not determine supervoxel ID for coordinates {pos.tolist()} in {node_id}"
        )

    def find_path(
        self, root_id: int, pos_a_voxel: Sequence[float], pos_b_voxel: Sequence[float]
    ) -> dict[str, Any]:
        """Shortest L2 path between two points of a root.

        Returns:
            ``{"centroids_list": [[x, y, z] nm...], "l2_path": [...], "failed_l2_ids": []}``.
        """
        r = self._root(root_id)
        sva = self.find_sv_in_node(root_id, pos_a_voxel)
        svb = self.find_sv_in_node(root_id, pos_b_voxel)
        l2a, l2b = self._map_at_seq(self.sv_index([sva, svb]), r.created_seq, 2)
        g = nx.Graph()
        g.add_nodes_from(int(x) for x in np.unique(self._map_at_seq(r.members, r.created_seq, 2)))
        g.add_edges_from(tuple(e) for e in self.level2_graph(root_id))
        path = nx.shortest_path(g, int(l2a), int(l2b))
        attrs = self.l2_attributes(path, ["rep_coord_nm"])
        return {
            "centroids_list": [attrs[str(p)]["rep_coord_nm"] for p in path],
            "l2_path": path,
            "failed_l2_ids": [],
        }

    # ---------------------------------------------------------------- L2 cache attributes
    L2_ATTRIBUTES: dict[str, str] = {
        "area_nm2": "uint32",
        "chunk_intersect_count": "uint16",
        "max_dt_nm": "uint16",
        "mean_dt_nm": "float16",
        "pca": "float16",
        "pca_val": "float32",
        "rep_coord_nm": "uint64",
        "size_nm3": "uint32",
    }

    def l2_attributes(
        self, l2_ids: Iterable[int], attribute_names: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """L2-cache attributes derived from the cells of each L2 node; ``{}`` for unknown ids."""
        names = list(attribute_names or self.L2_ATTRIBUTES)
        for name in names:
            if name not in self.L2_ATTRIBUTES:
                raise KeyError(name)
        out: dict[str, dict[str, Any]] = {}
        voxel_nm3 = float(np.prod(self.resolution))
        cell_nm = self.cell_size * self.resolution
        for lid in l2_ids:
            lid = int(lid)
            info = self.l2s.get(lid)
            if info is None:
                out[str(lid)] = {}
                continue
            cells = np.concatenate(
                [
                    self.sv_cells[self.sv_cell_offsets[i] : self.sv_cell_offsets[i + 1]]
                    for i in info.members
                ]
            )
            member_labels = set(int(i) + 1 for i in info.members)
            area = 0.0
            face_area = [cell_nm[1] * cell_nm[2], cell_nm[0] * cell_nm[2], cell_nm[0] * cell_nm[1]]
            for c in cells:
                for k, d in enumerate(_DIRS):
                    nb = c + d
                    inside = np.all(nb >= 0) and np.all(nb < np.asarray(self.grid_shape))
                    if not inside or int(self.labels[tuple(nb)]) not in member_labels:
                        area += face_area[k // 2]
            centers = (cells + 0.5) * cell_nm
            chunk_lo = np.asarray(info.chunk) * self.chunk_size // self.cell_size
            chunk_hi = chunk_lo + self.chunk_size // self.cell_size - 1
            values: dict[str, Any] = {
                "size_nm3": int(min(len(cells) * np.prod(self.cell_size) * voxel_nm3, 2**32 - 1)),
                "area_nm2": int(min(area, 2**32 - 1)),
                "max_dt_nm": int(min(cell_nm) / 2),
                "mean_dt_nm": float(np.float16(min(cell_nm) / 4)),
                "rep_coord_nm": [int(v) for v in centers[0]],
                "chunk_intersect_count": [
                    [int(v) for v in (cells == chunk_lo).sum(axis=0)],
                    [int(v) for v in (cells == chunk_hi).sum(axis=0)],
                ],
            }
            if len(cells) >= 3:
                cov = np.cov((centers - centers.mean(axis=0)).T)
                vals, vecs = np.linalg.eigh(cov)
                order = np.argsort(vals)[::-1]
                values["pca"] = [[float(np.float16(x)) for x in vecs[:, j]] for j in order]
                values["pca_val"] = [float(np.float32(vals[j])) for j in order]
            out[str(lid)] = {k: values[k] for k in names if k in values}
        return out

    # ---------------------------------------------------------------- edits
    def _next_ts(self, timestamp: float | None) -> float:
        ts = time.time() if timestamp is None else float(timestamp)
        return max(ts, self._op_ts[-1] + 0.001)

    def merge(
        self,
        points: Sequence[Sequence[float]],
        user_id: int,
        timestamp: float | None = None,
    ) -> Operation:
        """Merge two objects: ``points = [[node_id, x, y, z], [node_id, x, y, z]]`` in voxels.

        Raises:
            PCGError: 400 for bad input, points too far apart (> 3 chunks), or same object.
        """
        if len(points) != 2 or any(len(p) != 4 for p in points):
            raise PCGError(400, "merge needs exactly two points [node_id, x, y, z]")
        with self._lock:
            sva = self.find_sv_in_node(int(points[0][0]), points[0][1:])
            svb = self.find_sv_in_node(int(points[1][0]), points[1][1:])
            a, b = (int(i) for i in self.sv_index([sva, svb]))
            if np.abs(self.sv_chunk[a] - self.sv_chunk[b]).max() > 3:
                raise PCGError(400, "Chebyshev distance between merge points exceeds 3 chunks")
            meta = {
                "source_ids": [sva],
                "sink_ids": [svb],
                "source_coords": [list(map(float, points[0][1:]))],
                "sink_coords": [list(map(float, points[1][1:]))],
            }
            return self._merge_svs(a, b, self._next_ts(timestamp), user_id, meta)

    def _merge_svs(
        self, a: int, b: int, ts: float, user_id: int, meta: dict[str, Any]
    ) -> Operation:
        if self.cur_root[a] == self.cur_root[b]:
            raise PCGError(
                400, "Supervoxels must belong to different objects. Merge precondition failed."
            )
        meta = dict(meta)
        meta.setdefault("source_ids", [int(self.sv_ids[a])])
        meta.setdefault("sink_ids", [int(self.sv_ids[b])])
        return self._apply("merge", [(a, b)], [], ts, user_id, meta)

    def _split_plan(
        self, sources: Sequence[int], sinks: Sequence[int], mincut: bool
    ) -> tuple[list[tuple[int, int]], list[list[int]]]:
        """Edges to remove and resulting components (source comp, sink comp, others)."""
        src = sorted({int(i) for i in sources})
        snk = sorted({int(i) for i in sinks})
        if not src or not snk:
            raise PCGError(400, "split needs at least one source and one sink")
        if set(src) & set(snk):
            raise PCGError(400, "Supervoxels exist in both sink and source")
        roots = {int(self.cur_root[i]) for i in src + snk}
        if len(roots) != 1:
            raise PCGError(400, "Sources and sinks must belong to the same root object")
        members = self.roots[roots.pop()].members
        sub = self.graph.subgraph(int(i) for i in members)
        if mincut:
            h = nx.DiGraph()
            for u, v, d in sub.edges(data=True):
                h.add_edge(u, v, capacity=d["affinity"])
                h.add_edge(v, u, capacity=d["affinity"])
            for s in src:
                h.add_edge("__source__", s)
            for t in snk:
                h.add_edge(t, "__sink__")
            _, (reach, _other) = nx.minimum_cut(h, "__source__", "__sink__")
            cut = [(u, v) for u, v in sub.edges() if (u in reach) != (v in reach)]
        else:
            ss, tt = set(src), set(snk)
            cut = [(u, v) for u, v in sub.edges() if (u in ss and v in tt) or (u in tt and v in ss)]
        h2 = nx.Graph(sub)
        h2.remove_edges_from(cut)
        comps = [sorted(c) for c in nx.connected_components(h2)]
        src_comp = next(c for c in comps if src[0] in c)
        snk_comp = next(c for c in comps if snk[0] in c)
        others = [c for c in comps if c is not src_comp and c is not snk_comp]
        ordered = [src_comp] + ([snk_comp] if snk_comp is not src_comp else []) + others
        return [(min(u, v), max(u, v)) for u, v in cut], ordered

    def split(
        self,
        sources: Sequence[Sequence[float]],
        sinks: Sequence[Sequence[float]],
        user_id: int,
        mincut: bool = True,
        timestamp: float | None = None,
    ) -> Operation:
        """Split by min cut between source and sink points ``[node_id, x, y, z]`` (voxels).

        Raises:
            PCGError: 400 on bad input or failed preconditions.
        """
        with self._lock:
            src_sv, snk_sv = self._resolve_split_points(sources, sinks)
            meta = {
                "source_ids": src_sv,
                "sink_ids": snk_sv,
                "source_coords": [list(map(float, p[1:])) for p in sources],
                "sink_coords": [list(map(float, p[1:])) for p in sinks],
                "bb_offset": [240, 240, 24],
            }
            return self._split_svs(
                [int(i) for i in self.sv_index(src_sv)],
                [int(i) for i in self.sv_index(snk_sv)],
                self._next_ts(timestamp),
                user_id,
                meta,
                mincut=mincut,
            )

    def _resolve_split_points(
        self, sources: Sequence[Sequence[float]], sinks: Sequence[Sequence[float]]
    ) -> tuple[list[int], list[int]]:
        if not sources or not sinks:
            raise PCGError(400, "split needs sources and sinks")
        for p in list(sources) + list(sinks):
            if len(p) != 4:
                raise PCGError(400, "split points must be [node_id, x, y, z]")
        src = [self.find_sv_in_node(int(p[0]), p[1:]) for p in sources]
        snk = [self.find_sv_in_node(int(p[0]), p[1:]) for p in sinks]
        return src, snk

    def preview_split(
        self, sources: Sequence[Sequence[float]], sinks: Sequence[Sequence[float]]
    ) -> dict[str, Any]:
        """Connected components a split would produce, without applying it."""
        with self._lock:
            src_sv, snk_sv = self._resolve_split_points(sources, sinks)
            _, comps = self._split_plan(
                [int(i) for i in self.sv_index(src_sv)],
                [int(i) for i in self.sv_index(snk_sv)],
                True,
            )
            return {
                "supervoxel_connected_components": [
                    [int(self.sv_ids[i]) for i in c] for c in comps
                ],
                "illegal_split": len(comps) < 2,
            }

    def _split_svs(
        self,
        src: list[int],
        snk: list[int],
        ts: float,
        user_id: int,
        meta: dict[str, Any],
        mincut: bool = True,
    ) -> Operation:
        cut, _ = self._split_plan(src, snk, mincut)
        if not cut:
            raise PCGError(400, "Split precondition failed: sources and sinks are not connected")
        meta = dict(meta)
        meta.setdefault("source_ids", [int(self.sv_ids[i]) for i in src])
        meta.setdefault("sink_ids", [int(self.sv_ids[i]) for i in snk])
        meta.setdefault("bb_offset", [240, 240, 24])
        return self._apply("split", [], cut, ts, user_id, meta)

    def undo(self, operation_id: int, user_id: int, timestamp: float | None = None) -> Operation:
        """Undo an operation as a new operation (new root ids; old ids never revive)."""
        return self._toggle(operation_id, user_id, timestamp, undo=True)

    def redo(self, operation_id: int, user_id: int, timestamp: float | None = None) -> Operation:
        """Redo an undone operation as a new operation."""
        return self._toggle(operation_id, user_id, timestamp, undo=False)

    def _toggle(
        self, operation_id: int, user_id: int, timestamp: float | None, *, undo: bool
    ) -> Operation:
        """Undo (reverse the edges) or redo (re-apply them) as a new operation.

        The edges that already match the graph are dropped, so an operation whose effect a later
        edit superseded cannot be toggled.
        """
        kind, done = ("undo", "undone") if undo else ("redo", "redone")
        with self._lock:
            target = self.get_operation(operation_id)
            if target.undone == undo:
                state = "is already undone" if undo else "has not been undone"
                raise PCGError(400, f"Operation {operation_id} {state}")
            add, remove = (
                (target.removed_edges, target.added_edges)
                if undo
                else (target.added_edges, target.removed_edges)
            )
            added = [e for e in map(self._sv_edge, add) if not self.graph.has_edge(*e)]
            removed = [e for e in map(self._sv_edge, remove) if self.graph.has_edge(*e)]
            if not added and not removed:
                raise PCGError(400, f"Operation {operation_id} cannot be {done}: state superseded")
            op = self._apply(
                kind,
                added,
                removed,
                self._next_ts(timestamp),
                user_id,
                {f"{kind}_operation_id": int(operation_id)},
            )
            target.undone = undo
            return op

    def _sv_edge(self, edge: Any) -> tuple[int, int]:
        a, b = self.sv_index(edge)
        return int(a), int(b)

    def replay(self, record: OperationRecord) -> Operation:
        """Re-apply a persisted operation (used when a restarted server rebuilds the world)."""
        with self._lock:
            added = [self._sv_edge(e) for e in record.added]
            removed = [self._sv_edge(e) for e in record.removed]
            persist, self._persist = self._persist, False
            try:
                op = self._apply(
                    record.kind, added, removed, record.ts, record.user_id, record.meta
                )
            finally:
                self._persist = persist
            target = record.meta.get("undo_operation_id") or record.meta.get("redo_operation_id")
            if target:
                self.get_operation(int(target)).undone = record.kind == "undo"
            return op

    def _apply(
        self,
        kind: str,
        added: list[tuple[int, int]],
        removed: list[tuple[int, int]],
        ts: float,
        user_id: int,
        meta: dict[str, Any],
    ) -> Operation:
        """Apply edge changes (supervoxel indices) as operation ``seq``; mint roots and L2s."""
        seq = len(self._op_ts)
        endpoints = np.unique(np.asarray([i for e in added + removed for i in e], dtype=np.int64))
        old_roots = [int(r) for r in np.unique(self.cur_root[endpoints])]
        old_l2 = [int(x) for x in np.unique(self.cur_l2[endpoints])]
        for a, b in added:
            key = (min(a, b), max(a, b))
            e = self._edges.get(key)
            if e is None:
                e = {"affinity": MERGE_AFFINITY, "area": 1, "intervals": []}
                self._edges[key] = e
                self._neighbor_cache = None
            e["intervals"].append([ts, None])
            self.graph.add_edge(*key, affinity=e["affinity"], area=e["area"])
        for a, b in removed:
            key = (min(a, b), max(a, b))
            e = self._edges[key]
            e["intervals"][-1][1] = ts
            if self.graph.has_edge(*key):
                self.graph.remove_edge(*key)
        affected = np.unique(np.concatenate([self.roots[r].members for r in old_roots]))
        sub = self.graph.subgraph(int(i) for i in affected)
        comps = sorted((sorted(c) for c in nx.connected_components(sub)), key=lambda c: c[0])
        new_roots: list[int] = []
        for component in comps:
            members = np.asarray(component, dtype=np.int64)
            rid = self._mint_root()
            self.roots[rid] = RootInfo(
                rid, seq, ts, members, former=list(old_roots), op_created=seq
            )
            self.cur_root[members] = rid
            new_roots.append(rid)
        for r in old_roots:
            info = self.roots[r]
            info.new = list(new_roots)
            info.op_superseded = seq
            info.superseded_seq = seq
            info.superseded_ts = ts
        # L2 nodes touching the edited edges are replaced by their new in-chunk pieces.
        l2_members = np.unique(np.concatenate([self.l2s[x].members for x in old_l2]))
        for x in old_l2:
            self.l2s[x].superseded_seq = seq
        for comp in sorted(self._chunk_components(int(i) for i in l2_members), key=min):
            members = np.asarray(sorted(comp), dtype=np.int64)
            chunk = tuple(int(v) for v in self.sv_chunk[members[0]])
            lid = self._mint(2, chunk)  # type: ignore[arg-type]
            self.l2s[lid] = L2Info(lid, chunk, members, seq, ts)  # type: ignore[arg-type]
            self.cur_l2[members] = lid
        touched = np.unique(np.concatenate([affected, l2_members]))
        self._rec.append((touched, seq, self.cur_root[touched].copy(), self.cur_l2[touched].copy()))
        self._lookup_cache = None
        self._op_ts.append(ts)
        op = Operation(
            id=seq,
            kind=kind,
            ts=ts,
            user_id=int(user_id),
            added_edges=[(int(self.sv_ids[a]), int(self.sv_ids[b])) for a, b in added],
            removed_edges=[(int(self.sv_ids[a]), int(self.sv_ids[b])) for a, b in removed],
            old_roots=old_roots,
            new_roots=new_roots,
            meta=dict(meta),
        )
        self.operations.append(op)
        if self._persist and self.on_operation is not None:
            self.on_operation(
                OperationRecord(
                    seq=seq,
                    kind=kind,
                    ts=ts,
                    user_id=int(user_id),
                    added=[list(e) for e in op.added_edges],
                    removed=[list(e) for e in op.removed_edges],
                    meta=op.meta,
                )
            )
        return op

    # ---------------------------------------------------------------- info
    def info(self) -> dict[str, Any]:
        """CloudVolume-style ``info`` of the PCG table (reference §1.6 ``info``)."""
        size = [int(v) for v in self.bounds_voxel]
        return {
            "@type": "neuroglancer_multiscale_volume",
            "app": {"supported_api_versions": [0, 1]},
            "chunks_start_at_voxel_offset": True,
            "data_dir": f"gs://neurodata-sandbox/{self.table_id}/ws",
            "data_type": "uint64",
            "graph": {
                "bounding_box": size,
                "chunk_size": [int(v) for v in self.chunk_size],
                "cv_mip": 0,
                "n_bits_for_layer_id": LAYER_ID_BITS,
                "n_layers": self.n_layers,
                "spatial_bit_masks": {str(k): v for k, v in self.bits.items()},
            },
            "mesh": "graphene_meshes",
            "mesh_dir": "graphene_meshes",
            "num_channels": 1,
            "scales": [
                {
                    "chunk_sizes": [[int(v) for v in self.cell_size * 4]],
                    "compressed_segmentation_block_size": [8, 8, 8],
                    "encoding": "compressed_segmentation",
                    "key": "_".join(str(int(v)) for v in self.resolution),
                    "locked": True,
                    "resolution": [float(v) for v in self.resolution],
                    "size": size,
                    "voxel_offset": [0, 0, 0],
                }
            ],
            "sharded_mesh": True,
            "type": "segmentation",
            "verify_mesh": False,
        }
