"""Pytest plugin that writes each test's outcome to the JSON file named by ``COMPAT_OUTCOMES``.

Loaded into both runs of an official suite (official package and ours) so that ``compat/run.py``
compares the two by test id; it needs nothing but the standard library, because it also runs in
the official clients' virtualenv.
"""

from __future__ import annotations

import json
import os
from typing import Any

_outcomes: dict[str, str] = {}
_collection_errors: list[str] = []


def pytest_runtest_logreport(report: Any) -> None:
    """Keep the worst outcome of each test's setup, call and teardown."""
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and report.when in ("setup", "call"):
        _outcomes.setdefault(report.nodeid, "skipped")
    elif report.passed and report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_collectreport(report: Any) -> None:
    """Remember modules that could not be imported (their tests count as failed)."""
    if report.failed:
        _collection_errors.append(report.nodeid)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """Write ``{"outcomes": {nodeid: outcome}, "collection_errors": [...]}``."""
    path = os.environ.get("COMPAT_OUTCOMES")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"outcomes": _outcomes, "collection_errors": _collection_errors}, handle)
