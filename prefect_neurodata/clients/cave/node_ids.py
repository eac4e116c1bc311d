"""Node ids (supervoxels, L2 nodes, roots) going to and coming from the CAVE services.

PyChunkedGraph ids travel as uint64 (little-endian bytes or JSON integers), but every id a
chunkedgraph hands out is below 2**63 and the materialization engine stores them in int64
columns (`SEGMENT_ID_RANGE`). caveclient 5.25 returns most id lists as int64
(`get_leaves`, `get_latest_roots`, `get_delta_roots`, ...), so they concatenate with
`query_table`'s root-id columns without a float detour that would round 18-digit ids.

Ids a caller passes are checked against `SEGMENT_ID_RANGE` before any request: caveclient
converts them unchecked (a negative id in an int64 array wraps to a huge uint64 one). Floats
are refused too (an id above 2**53 is not exact as a float). What is sent is what caveclient
sends: the same uint64 bytes or JSON integers.

Example:
    ```python
    from prefect_neurodata.clients.cave.node_ids import int64_ids, valid_node_id, valid_node_ids

    valid_node_ids([864691135000000001, 5], "supervoxel_ids")  # array([...], dtype=uint64)
    valid_node_id(-1, "root_id")  # ValueError: root_id must be a non-negative node id ..., got -1
    int64_ids([864691135000000001])  # array([864691135000000001]) (int64)
    ```
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .annotation_rows import SEGMENT_ID_RANGE

__all__ = ["int64_ids", "valid_node_id", "valid_node_ids"]

_STOP = SEGMENT_ID_RANGE.stop


def _out_of_range(name: str, value: int) -> ValueError:
    return ValueError(
        f"{name} must be a non-negative node id below 2**63, got {value}: CAVE stores node "
        "ids as int64"
    )


def valid_node_id(value: Any, name: str = "node_id") -> int:
    """One id as an exact Python int in [0, 2**63).

    Accepts Python and numpy integers and decimal strings (caveclient accepts both).

    Raises:
        ValueError: ``value`` is a float, bool, None or unparsable, or outside [0, 2**63);
            the message names ``name`` and the value.

    Example:
        ```python
        valid_node_id("864691135000000001", "root_id")  # 864691135000000001
        ```
    """
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise ValueError(f"{name} must be an integer id, got {value!r}")
    if isinstance(value, (float, np.floating)):
        raise ValueError(f"{name} must be an integer id, got float {value!r}")
    if isinstance(value, bytes):
        value = value.decode()
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer id, got {value!r}") from None
    if number not in SEGMENT_ID_RANGE:
        raise _out_of_range(name, number)
    return number


def valid_node_ids(values: Any, name: str = "node_ids") -> np.ndarray:
    """Ids as a 1-d ``np.uint64`` array (the wire form), each checked to be in [0, 2**63).

    Args:
        values: A scalar, list, tuple, range, numpy array, Series or Index of ids.
        name: The caller's argument name, used in error messages.

    Raises:
        ValueError: A float, missing or unparsable value, or an id outside [0, 2**63); the
            message names ``name``, the position and the value.

    Example:
        ```python
        valid_node_ids(pd.Series([3, 4]), "root_ids").tolist()  # [3, 4]
        ```
    """
    if isinstance(values, (pd.Series, pd.Index)):
        if values.hasnans:
            raise ValueError(f"{name} contains missing values")
        values = values.to_numpy()
    if not isinstance(values, (list, tuple, range)):
        arr = np.asarray(values).reshape(-1)
        kind = arr.dtype.kind
        if kind in "iu":
            outside = np.flatnonzero(arr >= _STOP) if kind == "u" else np.flatnonzero(arr < 0)
            if outside.size:
                first = int(outside[0])
                raise _out_of_range(f"{name}[{first}]", int(arr[first]))
            return arr.astype(np.uint64, copy=False)
        if arr.size and kind == "f":
            raise ValueError(
                f"{name} must be integers, got floats ({arr.dtype}); ids above 2**53 cannot "
                "be represented exactly as floats"
            )
        if arr.size and kind not in "OUS":
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
        values = arr
    # One by one: np.asarray would turn a list mixing ids >= 2**63 with small ids into float64.
    return np.array(
        [valid_node_id(v, f"{name}[{i}]") for i, v in enumerate(values)], dtype=np.uint64
    )


def int64_ids(values: Iterable[Any] | None) -> np.ndarray:
    """Ids a service answered (exact JSON ints, or lists of them) as an ``np.int64`` array,
    caveclient's type.

    None gives an empty int64 array (caveclient's ``np.array([])`` would be float64).

    Raises:
        ValueError: The service answered an id that does not fit in an int64.

    Example:
        ```python
        int64_ids([864691135000000001, 864691135000000002]).dtype  # dtype('int64')
        ```
    """
    if values is None:
        return np.array([], dtype=np.int64)
    ids = list(values)
    try:
        return np.array(ids, dtype=np.int64)
    except OverflowError:
        flat = np.asarray(ids, dtype=object).ravel()  # nested lists too (edge lists)
        first = next(int(v) for v in flat if int(v) not in SEGMENT_ID_RANGE)
        raise ValueError(
            f"the server answered node id {first}, which does not fit in an int64"
        ) from None
