"""The chunkedgraph model's operation history: lineage of roots and the operation log.

:class:`ChunkedGraphHistory` answers how roots came to be: the lineage graph around roots, past
ids, roots created in a time window, a root's change log (summary, tabular, merges) and single
operations. These read only the records the edits leave behind (roots' former/new ids and the
operation log), not the supervoxel graph, which is why they live apart from the other reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import networkx as nx
import numpy as np

from .chunkedgraph_reads import ChunkedGraphReads
from .chunkedgraph_types import Operation, RootInfo, as_uint64, to_posix
from .errors import PCGError


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


class ChunkedGraphHistory(ChunkedGraphReads):
    """Lineage and operation-log queries (what the edits recorded)."""

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
        for rid in as_uint64(root_ids):
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
        for rid in as_uint64(root_ids):
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
