"""Offline testing for code that talks to CAVE and the AIND metadata services.

The local sandbox (strict stand-ins of every service) as a handle for your own tests,
:class:`NeurodataSandbox`, and as pytest fixtures (:mod:`prefect_neurodata.testing.pytest_plugin`,
registered automatically when ``prefect-neurodata[sandbox]`` is installed). See
``docs/testing.md`` for a complete example.

Example:
    ```python
    def test_my_query(neurodata_cave_client):
        df = neurodata_cave_client.materialize.query_table("synapses", limit=10)
        assert len(df) == 10
    ```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_neurodata.testing.sandbox import (
        FaultInjection,
        NeurodataSandbox,
        SandboxConfig,
        SandboxExtraMissing,
    )

__all__ = ["FaultInjection", "NeurodataSandbox", "SandboxConfig", "SandboxExtraMissing"]


def __getattr__(name: str) -> Any:
    # Lazy: pytest imports this package for the plugin in every suite, most of which never
    # touch the sandbox and should not pay for importing it.
    if name in __all__:
        from prefect_neurodata.testing import sandbox

        return getattr(sandbox, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
