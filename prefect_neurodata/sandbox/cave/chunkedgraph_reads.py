"""The read side of the chunkedgraph model: points, roots, leaves, timestamps, graphs, L2 info.

:class:`ChunkedGraphReads` answers everything the chunkedgraph and L2 cache routes read about
the segmentation as of a time: supervoxels under points, roots and L2 ancestors, leaves and
children, root timestamps and validity, supervoxel and L2 graphs with paths between points, L2
cache attributes and the table's ``info``. None of it changes the world; the edits
(:mod:`.chunkedgraph_edits`) build on these reads to resolve their points.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import networkx as nx
import numpy as np

from .chunkedgraph_index import ChunkedGraphIndex
from .chunkedgraph_types import FACE_DIRECTIONS, LAYER_ID_BITS, RootInfo, as_uint64, to_posix
from .errors import PCGError


class ChunkedGraphReads(ChunkedGraphIndex):
    """Read-only queries on the world (the part of the model that never edits it)."""

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
        ids = as_uint64(node_ids)
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
        ids = as_uint64(root_ids)
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
        for nid in as_uint64(node_ids):
            ts = self.node_created_ts(int(nid))
            if ts is not None and lo <= ts <= hi:
                out.append(int(nid))
        return np.asarray(out, dtype=np.uint64)

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
                for k, d in enumerate(FACE_DIRECTIONS):
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
