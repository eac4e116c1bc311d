"""CAVE clients with the `caveclient` 5.x surface (``from caveclient import CAVEclient`` becomes
``from prefect_neurodata.clients.cave import CAVEclient``).

Example:
    ```python
    from prefect_neurodata.clients.cave import CAVEclient

    client = CAVEclient("my_datastack", server_address="http://127.0.0.1:8080",
                        auth_token="0123456789abcdef0123456789abcdef")
    roots = client.chunkedgraph.get_roots([97557743795364048])
    ```

Names are imported lazily so that importing one module (e.g. ``.base``) does not pull in every
subclient.
"""

from __future__ import annotations

import importlib
from typing import Any

from .session_config import get_session_defaults, set_session_defaults

__all__ = [
    "CAVEclient",
    "CAVEclientFull",
    "CAVEclientGlobal",
    "GlobalClientError",
    "AuthException",
    "ServerIncompatibilityError",
    "QueryLimitError",
    "AnnotationUploadError",
    "get_session_defaults",
    "set_session_defaults",
]

_LAZY = {
    "CAVEclient": "frameworkclient",
    "CAVEclientFull": "frameworkclient",
    "CAVEclientGlobal": "frameworkclient",
    "GlobalClientError": "frameworkclient",
    "AuthException": "base",
    "ServerIncompatibilityError": "base",
    "QueryLimitError": "_partition",
    "AnnotationUploadError": "annotationengine",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
