"""Timing of client stages (seed: ``caveclient.timeit``).

Example:
    ```python
    from prefect_neurodata.clients.cave.timeit import TimeIt

    with TimeIt("query materialize"):
        ...
    ```
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

logger = logging.getLogger("prefect_neurodata.cave.timeit")


class TimeIt:
    """Context manager logging ``start <message>`` and ``end <message> -- <seconds>`` at DEBUG.

    Args:
        message: What is being timed.
        *args: Extra values appended to the log lines.

    Attributes:
        elapsed: Seconds spent inside the block (set on exit).
    """

    def __init__(self, message: str = "", *args: Any) -> None:
        self.message = message
        self.args = args
        self.elapsed: float | None = None
        self._start = 0.0

    def _label(self) -> str:
        return " ".join([self.message, *(str(a) for a in self.args)]).strip()

    def __enter__(self) -> TimeIt:
        self._start = time.perf_counter()
        logger.debug("start %s", self._label())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.elapsed = time.perf_counter() - self._start
        logger.debug("end %s -- %.4f s", self._label(), self.elapsed)


MyTimeIt = TimeIt
"""caveclient's older name for `TimeIt`."""
