"""Thread helpers of the clients: bounded concurrency for independent pages or partitions
(`imap_bounded`, `map_bounded`), a lock that survives pickling (`PicklableLock`) and a
thread-safe expiring memo (`TTLMemo`).

Example:
    ```python
    from prefect_neurodata.clients.concurrency import map_bounded

    assert map_bounded(lambda x: x * 2, range(5), max_workers=2) == [0, 2, 4, 6, 8]
    ```
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import cachetools

T = TypeVar("T")
R = TypeVar("R")


def imap_bounded(fn: Callable[[T], R], items: Iterable[T], max_workers: int = 4) -> Iterator[R]:
    """Apply ``fn`` to ``items`` with at most ``max_workers`` calls in flight, yielding in order.

    Results are yielded as soon as the next one in order is ready, and no more than
    ``max_workers`` results are held at once, so a consumer that writes each result away keeps
    memory bounded however many items there are.

    Args:
        fn: The function; it must be safe to call from several threads.
        items: The inputs, consumed lazily.
        max_workers: Calls in flight; 1 runs everything in the calling thread.

    Raises:
        Exception: The first exception raised by ``fn``, in input order; pending calls are
            cancelled.
    """
    if max_workers <= 1:
        for item in items:
            yield fn(item)
        return
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="neurodata") as pool:
        window: deque[Future[R]] = deque()
        try:
            for item in iterator:
                window.append(pool.submit(fn, item))
                if len(window) >= max_workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


def map_bounded(fn: Callable[[T], R], items: Iterable[T], max_workers: int = 4) -> list[R]:
    """Like `imap_bounded` but returns a list."""
    return list(imap_bounded(fn, items, max_workers))


class PicklableLock:
    """A re-entrant lock that survives `pickle` and `copy.deepcopy` as a fresh, unlocked lock.

    Clients guard lazily built state with a lock, and a `threading.RLock` cannot be pickled,
    which would make the whole client unpicklable (Dask and multiprocessing pickle clients).
    A lock protects one process's threads only, so a copy needs a new lock, not the state of
    the old one.

    Example:
        ```python
        import pickle

        lock = PicklableLock()
        with lock:
            copy = pickle.loads(pickle.dumps(lock))
        with copy:
            pass
        ```
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __getstate__(self) -> dict[str, object]:
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._lock = threading.RLock()


class TTLMemo:
    """A thread-safe, bounded memo whose entries expire (`cachetools.TTLCache` under a lock).

    Callers get deep copies, so mutating a returned value never alters the cached one.

    Args:
        ttl: Seconds an entry stays valid.
        maxsize: Entries kept at most (the least recently used go first).

    Example:
        ```python
        memo = TTLMemo(ttl=60)
        versions = memo.get(("versions", True), lambda: [1, 2, 3])
        ```
    """

    def __init__(self, ttl: float, maxsize: int = 256) -> None:
        self.ttl = ttl
        self._cache: cachetools.TTLCache[Hashable, Any] = cachetools.TTLCache(maxsize, ttl)
        self._lock = PicklableLock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value of ``key``, computing (outside the lock) and storing it if absent."""
        with self._lock:
            if key in self._cache:
                return copy.deepcopy(self._cache[key])
        value = compute()
        with self._lock:
            self._cache[key] = value
        return copy.deepcopy(value)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._cache.clear()
