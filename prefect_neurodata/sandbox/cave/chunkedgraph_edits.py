"""Edits of the chunkedgraph model: merge, split, undo, redo, and the replay of persisted ones.

:class:`ChunkedGraphEdits` turns a client's edit into supervoxel edge changes and applies them as
one operation: new root and L2 ids are minted, the per-supervoxel change records grow, and
:attr:`~.chunkedgraph.ChunkedGraph.on_operation` receives an :class:`OperationRecord` so the
world stand-in can persist it. :meth:`~ChunkedGraphEdits.replay` applies such a record again
when a restarted server rebuilds the world, and the generated history goes through the same
path, so every edit changes the world in exactly one way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import networkx as nx
import numpy as np

from .chunkedgraph_history import ChunkedGraphHistory
from .chunkedgraph_types import MERGE_AFFINITY, L2Info, Operation, OperationRecord, RootInfo
from .errors import PCGError


class ChunkedGraphEdits(ChunkedGraphHistory):
    """Edits through the API (and the generated history): each one is a new operation."""

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
