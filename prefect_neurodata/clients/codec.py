"""JSON encoding and decoding shared by every client (orjson, with this package's extensions).

`dumps` understands what scientific callers pass in bodies (UUIDs, datetimes, numpy arrays and
scalars, pandas values, sets, Decimals, paths, enums, pydantic models) and names the field it
cannot serialise; `encode_default` is the ``default=`` hook behind it, public so that a wire
format with its own rules (the DocDB one in ``clients/aind/_wire.py``) can extend it instead of
copying it. `collection_paused` keeps the cyclic garbage collector out of bulk decoding.

Example:
    ```python
    import numpy as np
    from prefect_neurodata.clients.codec import dumps, loads

    assert loads(dumps({"ids": np.array([1, 2], dtype=np.uint64)})) == {"ids": [1, 2]}
    ```
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import gc
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import orjson

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
"""The orjson options every body is encoded with."""


def encode_default(value: Any) -> Any:
    """Encode the types orjson leaves to us (the ``default=`` hook of `dumps`).

    Raises:
        TypeError: The value has no JSON form.
    """
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    type_module = type(value).__module__
    if type_module.startswith(("numpy", "pandas")):
        # Non-contiguous or object arrays, pandas Series/Index/arrays, numpy scalars orjson
        # refuses, and pandas' missing-value markers.
        if hasattr(value, "tolist"):
            return value.tolist()
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if type(value).__name__ in {"NAType", "NaTType"}:
            return None
        if hasattr(value, "item"):
            return value.item()
    raise TypeError(f"type {type(value).__name__} is not JSON serialisable")


def dumps(value: Any, *, what: str = "body") -> bytes:
    """Serialise ``value`` to JSON bytes with orjson.

    Handles str/int/float/bool/None, dicts (non-string keys are stringified), lists, tuples,
    UUIDs, datetimes and dates (ISO 8601), dataclasses, enums, Decimals, sets, paths, pydantic
    models, numpy arrays and scalars, and pandas values. NaN and infinity become ``null``.

    Args:
        value: What to serialise.
        what: The name used for the root of ``value`` in error messages.

    Returns:
        UTF-8 JSON.

    Raises:
        TypeError: A value cannot be serialised; the message gives its path, e.g.
            ``records[3].subject.weight``, and its type.
    """
    try:
        return orjson.dumps(value, default=encode_default, option=JSON_OPTIONS)
    except TypeError as exc:
        path, bad = _find_unserialisable(value, what)
        if path is None:
            raise TypeError(f"cannot serialise {what} to JSON: {exc}") from exc
        raise TypeError(
            f"cannot serialise {path} to JSON: value of type {type(bad).__name__} is not supported"
        ) from exc


def _find_unserialisable(value: Any, path: str) -> tuple[str | None, Any]:
    """Depth-first search for the first leaf orjson cannot encode."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                try:
                    orjson.dumps({key: None}, default=encode_default, option=JSON_OPTIONS)
                except TypeError:
                    return f"{path} key {key!r}", key
            found = _find_unserialisable(item, f"{path}.{key}")
            if found[0] is not None:
                return found
        return None, None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_unserialisable(item, f"{path}[{index}]")
            if found[0] is not None:
                return found
        return None, None
    try:
        orjson.dumps(value, default=encode_default, option=JSON_OPTIONS)
    except TypeError:
        return path, value
    return None, None


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON with orjson."""
    return orjson.loads(data)


_pause_lock = threading.Lock()
_pause_depth = 0
_resume_collection = False
PROMOTE_AFTER = 100_000
"""Tracked objects that must have been created during a pause for `collection_paused` to
move the young generations to the oldest one when it ends. About one full DocDB page holds
that many. A smaller read leaves them young, so its few objects are collected as usual."""


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Pause CPython's automatic cyclic garbage collection while a bulk read builds its result.

    Decoding a large JSON result creates millions of lists and dicts that all survive. Each one
    counts toward the collector's thresholds, so the collector runs again and again while they
    are built and every full collection re-examines everything decoded so far. Reading 15,000
    DocDB records (213 MB of JSON) spent 4-5 of its 6-7 CPU seconds in those collections. The
    decoded result is plain JSON data with no reference cycles, so none of that work can free
    anything.

    How it works:

    * On entry, automatic collection is switched off (`gc.disable`) unless it already is.
      Reference counting still frees everything as usual.
    * Pauses nest and may overlap across threads. Collection resumes when the last one ends,
      and only if it was on when the first one began.
    * On resume after a big read (at least `PROMOTE_AFTER` tracked objects created), every
      tracked object goes to the oldest generation (`gc.freeze` then `gc.unfreeze`, which only
      splices lists). The result then counts as the long-lived data it is, and the next young
      collection does not walk all of it again. Small reads skip this, so a program that makes
      many small reads keeps its usual young collections. It is also skipped when the process
      has frozen objects of its own (for example before a fork), because `gc.unfreeze` would
      release them too.

    Costs: while a read runs, cyclic garbage made by other threads waits until collection
    resumes. After a big read, objects that were young when collection resumed wait for the
    next full collection.

    Example:
        >>> import gc
        >>> with collection_paused():
        ...     paused = gc.isenabled()
        >>> paused, gc.isenabled()
        (False, True)
    """
    global _pause_depth, _resume_collection
    with _pause_lock:
        if _pause_depth == 0:
            _resume_collection = gc.isenabled()
            gc.disable()
        _pause_depth += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pause_depth -= 1
            if _pause_depth == 0 and _resume_collection:
                if gc.get_count()[0] >= PROMOTE_AFTER and gc.get_freeze_count() == 0:
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()
