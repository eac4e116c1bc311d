"""The root of this package's exceptions.

Every exception class defined by `prefect_neurodata` derives from `NeurodataError`, so a caller
can catch "anything this package raised on purpose" in one clause, while each class keeps the
standard base its callers already expect (`requests.HTTPError` for client HTTP errors,
`ValueError` for bad input, `PermissionError` for refused access, ...).

Example:
    ```python
    from prefect_neurodata.errors import NeurodataError
    from prefect_neurodata.clients.cave import CAVEclient

    try:
        CAVEclient("no_such_datastack", server_address="http://127.0.0.1:9")
    except NeurodataError as exc:
        print("prefect-neurodata refused or failed:", exc)
    ```
"""

from __future__ import annotations


class NeurodataError(Exception):
    """Base class of every exception raised on purpose by `prefect_neurodata`.

    Subclasses combine it with the built-in or library base their callers expect, e.g.
    ``class ServiceError(requests.HTTPError, NeurodataError)``.
    """


class NeurodataInputError(NeurodataError, ValueError):
    """A value given to this package is invalid; the message names the field and the value."""


__all__ = ["NeurodataError", "NeurodataInputError"]
