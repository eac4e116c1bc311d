"""In-memory chunkedgraph model of the CAVE stand-in (PyChunkedGraph semantics, reference §3).

The world is a voxel volume (resolution ``(4, 4, 40)`` nm) cut into a grid of chunks. Neurons
are branching random walks through a coarse grid of *cells* (``cell_size`` voxels each); runs of
up to ``sv_cells`` consecutive cells inside one chunk form a supervoxel. Consecutive
supervoxels along a neurite are joined by atomic edges (high affinity). The world starts
over-segmented (some true edges missing) and with false merges (low-affinity edges between
touching neurons); the generated edit history then merges the fragments and splits the false
merges (min cut), followed by one undo and one redo. Everything is deterministic given
:class:`WorldParams`.

This module generates the world (neurons, supervoxels, the edit history); the model's other
parts live in their own modules, each a layer :class:`ChunkedGraph` inherits:
:mod:`.chunkedgraph_types` (parameters, records, the node id layout), :mod:`.chunkedgraph_index`
(state and primitive lookups), :mod:`.chunkedgraph_reads` (roots, leaves, graphs, L2 info),
:mod:`.chunkedgraph_history` (lineage and the operation log) and :mod:`.chunkedgraph_edits`
(merge, split, undo, redo and replay). Generation sits on top because it plays its history
through the same edits as the API.

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

from collections.abc import Sequence

import networkx as nx
import numpy as np

from . import DEFAULT_PCG_TABLE, VOXEL_RESOLUTION
from .chunkedgraph_edits import ChunkedGraphEdits
from .chunkedgraph_types import (
    FACE_DIRECTIONS,
    FALSE_AFFINITY,
    TRUE_AFFINITY,
    L2Info,
    RootInfo,
    WorldParams,
)
from .errors import PCGError


class ChunkedGraph(ChunkedGraphEdits):
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
                        nxt = cell + FACE_DIRECTIONS[dd]
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
