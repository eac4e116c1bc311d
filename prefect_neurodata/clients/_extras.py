"""Optional dependencies, installed per backend with the package's extras.

A CAVE-only user installs ``prefect-neurodata`` (or ``prefect-neurodata[cave]``); DocumentDB
over SSH and the Postgres export need ``prefect-neurodata[aind]`` (pymongo, sshtunnel,
psycopg2). Those modules are imported where they are used, through :func:`import_extra`, so a
missing one fails with the command that installs it rather than a bare ``ModuleNotFoundError``.

Example:
    ```python
    from prefect_neurodata.clients._extras import import_extra

    sshtunnel = import_extra("sshtunnel", extra="aind")
    ```
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def missing_extra(module: str, extra: str) -> MissingExtraError:
    """The error for ``module`` missing: names it and the extra that installs it."""
    return MissingExtraError(
        f"{module} is not installed; it comes with the {extra!r} extra: "
        f"pip install 'prefect-neurodata[{extra}]'"
    )


def import_extra(module: str, *, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the module exists but one of *its* imports is broken: show that
        raise missing_extra(module, extra) from exc
