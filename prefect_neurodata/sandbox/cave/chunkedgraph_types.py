"""The chunkedgraph model's vocabulary: world parameters, node and operation records, id layout.

These are plain values with no behaviour of the model itself: :class:`WorldParams` (what the
world stand-in persists to rebuild a world), the records the model keeps per root, L2 node and
operation, the uint64 node id layout and the conversions every part of the model applies to its
inputs (timestamps, node id arrays). They live apart from the model so that the world
persistence, the routes and each part of the model share one definition.

Node ids are uint64 ``[layer:8][x:b][y:b][z:b][segment]`` with PyChunkedGraph's bit widths.
Layer 1 = supervoxels, layer 2 = L2 nodes (one per connected component of a root's supervoxels
inside a chunk), layer ``n_layers`` = roots (chunk (0, 0, 0)); the root's children are its L2
nodes (a skip connection, as PyChunkedGraph allows).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from .errors import PCGError

LAYER_ID_BITS = 8
SPATIAL_BITS = 10
FANOUT = 2
# The six face neighbours of a cell: the steps of a neurite's random walk and the faces whose
# area the L2 cache counts.
FACE_DIRECTIONS = np.array(
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


def as_uint64(ids: Any) -> np.ndarray:
    """Node ids as a flat uint64 array; float ids are a client error (400), as in PyChunkedGraph."""
    arr = np.asarray(ids)
    if arr.dtype == np.uint64:
        return arr.reshape(-1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if arr.dtype.kind == "f":
        raise PCGError(400, "node ids must be integers")
    return arr.astype(np.uint64).reshape(-1)
