"""Pytest plugin that makes ``import caveclient`` / ``import aind_data_access_api`` load ours.

Loaded with ``pytest -p compat.alias_plugin``: before any test module is collected it puts a finder
at the front of ``sys.meta_path`` that answers every import of an official module name, submodules
included, with the module object of ours (``caveclient.chunkedgraph`` *is*
``prefect_neurodata.clients.cave.chunkedgraph``), so a test's ``mocker.patch("caveclient.x.Y")``
patches our class exactly as it would patch theirs. Nothing else in the official test suites is
changed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

ALIASES: dict[str, str] = {
    "caveclient": "prefect_neurodata.clients.cave",
    "aind_data_access_api": "prefect_neurodata.clients.aind",
}


def target_name(official_name: str) -> str | None:
    """Our module name for an official one, or None when the name is not aliased.

    Example:
        >>> target_name("caveclient.chunkedgraph")
        'prefect_neurodata.clients.cave.chunkedgraph'
        >>> target_name("caveclientx") is None
        True
    """
    for official, ours in ALIASES.items():
        if official_name == official or official_name.startswith(official + "."):
            return ours + official_name[len(official) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Returns our already-imported module instead of executing anything."""

    def __init__(self, ours: str) -> None:
        self.ours = ours

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.ours)

    def exec_module(self, module: ModuleType) -> None:
        # The module was executed when it was imported under our name.
        return None


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds official module names and hands back ours."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        ours = target_name(fullname)
        if ours is None:
            return None
        our_spec = importlib.util.find_spec(ours)
        if our_spec is None:
            return None
        is_package = our_spec.submodule_search_locations is not None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ours), is_package=is_package)


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(finder, AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
    for name in [n for n in sys.modules if target_name(n) is not None]:
        del sys.modules[name]


install()
