"""Bounded concurrency for independent pages or partitions (`imap_bounded`, `map_bounded`).

Example:
    ```python
    from prefect_neurodata.clients.concurrency import map_bounded

    assert map_bounded(lambda x: x * 2, range(5), max_workers=2) == [0, 2, 4, 6, 8]
    ```
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

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
