"""Flow-run names a person can read: which asset, bucket or table a run is about.

Prefect calls a flow's ``flow_run_name`` callable at the start of each run; these read the run's
``request`` parameter (a dict from the UI, a deployment or an event, or the request model when
called from Python) through :func:`request_value`.

Example:
    ```python
    from prefect import flow

    from prefect_neurodata.flows._names import request_value


    def _run_name() -> str:
        return f"sync s3://{request_value('bucket')}"


    @flow(flow_run_name=_run_name)
    def sync(request: dict) -> None: ...
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def request_value(key: str, default: Any = None) -> Any:
    """``request[key]`` of the current flow run (dict or model), or ``default``."""
    from prefect.runtime import flow_run

    request = flow_run.parameters.get("request")
    if isinstance(request, dict):
        return request.get(key, default)
    return getattr(request, key, default)


def first_and_count(items: Sequence[str], noun: str) -> str:
    """``"a"``, ``"a (+2 more)"`` or ``"no <noun>"`` for a list of labels."""
    if not items:
        return f"no {noun}"
    more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
    return f"{items[0]}{more}"
