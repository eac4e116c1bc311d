"""Artifacts the flows publish: tables and markdown a person reads instead of logs."""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from pydantic import BaseModel

MAX_TABLE_ROWS = 2000
"""Rows shown in one table artifact; larger tables are cut with a note (the UI chokes)."""


def in_flow_run() -> bool:
    """Whether we run inside a flow run (artifacts need one)."""
    return FlowRunContext.get() is not None


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], description: str) -> None:
    """Publish ``rows`` as a table artifact under ``key`` (kept as versions of that key)."""
    if not in_flow_run():
        return
    shown = [dict(row) for row in rows[:MAX_TABLE_ROWS]]
    if len(rows) > MAX_TABLE_ROWS:
        description += f"\n\nShowing the first {MAX_TABLE_ROWS} of {len(rows)} rows."
    create_table_artifact(table=shown, key=key, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Publish a markdown artifact under ``key``."""
    if not in_flow_run():
        return
    create_markdown_artifact(markdown=markdown, key=key, description=description)


def markdown_counts(title: str, counts: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """A small markdown report: a title, a two-column table of counts, then notes."""
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in counts.items()]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


class Progress:
    """A progress bar on the flow run (a Prefect progress artifact) updated as work completes."""

    def __init__(self, key: str, total: int, description: str) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._id: UUID | None = None
        if in_flow_run():
            # Called from synchronous code, where Prefect's sync_compatible returns the UUID.
            self._id = cast(
                UUID, create_progress_artifact(progress=0.0, key=key, description=description)
            )

    def advance(self, amount: int = 1) -> None:
        """Count ``amount`` more units as done."""
        self.done += amount
        if self._id is not None:
            update_progress_artifact(self._id, progress=min(100.0, 100.0 * self.done / self.total))


_SHORT = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxdict = 5


def shorten(value: Any) -> str:
    """``repr(value)`` cut to about 80 characters, for messages that quote user input.

    Example:
        ```python
        shorten("x" * 20_000)  # "'xxxxxxxx...xxxxxxxx'", about 80 characters in all
        ```
    """
    return _SHORT.repr(value)


@dataclass
class FailureReport:
    """What a failure artifact says besides the error, filled in while the run learns it.

    Attributes:
        inputs: What the run was about (block names, datastack, table, chunk...); the body adds
            what it resolves on the way (e.g. the version it picked), so a failure names it.
        sections: Extra markdown blocks shown before "What to do" (e.g. table owner notices).
        advice: Turns the error into what to do next; None (or a None answer) falls back to
            the generic advice of `publish_failure`.
    """

    inputs: dict[str, Any]
    sections: list[str] = field(default_factory=list)
    advice: Callable[[BaseException], str | None] | None = None


@contextmanager
def failure_report(
    key: str,
    title: str,
    inputs: Mapping[str, Any],
    advice: Callable[[BaseException], str | None] | None = None,
) -> Iterator[FailureReport]:
    """Publish a failure artifact (`publish_failure`) when the body raises, then re-raise.

    Example:
        ```python
        with failure_report("snapshot", "Snapshot", {"cave_block": "x"}) as report:
            report.inputs["version"] = 943  # learned on the way: named if a later step fails
            ...  # validate, plan, do, report
        ```
    """
    report = FailureReport(dict(inputs), advice=advice)
    try:
        yield report
    except Exception as exc:
        action = report.advice(exc) if report.advice is not None else None
        publish_failure(key, title, exc, report.inputs, sections=report.sections, action=action)
        raise


def request_inputs(request: BaseModel, **block_names: str | None) -> dict[str, Any]:
    """The inputs a failure report names for a flow that takes one request model and blocks.

    The request shows only what the caller set (defaults left out, so the report stays short
    and points at the choices that were made); blocks are named, never loaded, so no secret
    reaches the artifact.

    Example:
        ```python
        with failure_report(KEY, "QC attachment", request_inputs(request, docdb_block=name)):
            ...
        ```
    """
    return {"request": request.model_dump(exclude_defaults=True), **block_names}


def publish_failure(
    key: str,
    title: str,
    error: BaseException,
    inputs: Mapping[str, Any],
    *,
    sections: Sequence[str] = (),
    action: str | None = None,
) -> None:
    """Publish what failed, for which inputs, and what to do, as a markdown artifact.

    Args:
        key: Artifact key of the flow; the failure is published under ``<key>-failure``.
        title: The flow's human name, e.g. ``"Asset registration"``.
        error: What was raised.
        inputs: Named inputs of the run (values are shortened; pass block names, never secrets).
        sections: Extra markdown blocks, shown before "What to do".
        action: What to do; by default bad input (`ValueError`) is reported as "nothing was
            written, fix and rerun", anything else as "rerun: the flow finishes the work and
            repeats nothing".
    """
    if not in_flow_run():
        return
    if action is None and isinstance(error, ValueError):
        action = (
            "The input named above is invalid, or a backend could not be reached with the "
            "given blocks; this run stopped before its first write. Fix it and run again."
        )
    elif action is None:
        action = (
            "Run the flow again with the same parameters: it skips what already landed and "
            "finishes the rest. If it fails the same way, the message above names the cause."
        )
    message = str(error)
    if len(message) > 4000:
        message = message[:4000] + f"\n... ({len(message):,} characters; the rest is in the logs)"
    lines = [f"# {title} failed", "", f"**{type(error).__name__}**", "", "```", message, "```"]
    lines += ["", "## Inputs", ""]
    lines += [f"- {name}: `{shorten(value)}`" for name, value in inputs.items()]
    for section in sections:
        lines += ["", section.rstrip("\n")]
    lines += ["", "## What to do", "", action]
    create_markdown_artifact(
        markdown="\n".join(lines) + "\n", key=f"{key}-failure", description=f"{title} failed"
    )


def location_text(uri: str) -> str:
    """A location for a report: a link when a browser can open it, else the path as code."""
    if uri.startswith(("http://", "https://")):
        return f"[{uri}]({uri})"
    return f"`{uri}`"
