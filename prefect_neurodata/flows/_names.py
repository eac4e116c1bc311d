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

from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from prefect import Flow, flow
from prefect.task_runners import ThreadPoolTaskRunner


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


P = ParamSpec("P")
R = TypeVar("R")


def neurodata_flow(
    name: str, run_name: Callable[[], str], max_workers: int
) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """The ``@flow`` options every thread-pooled neurodata flow shares, in one place.

    Parameters are validated against the flow's signature (a bad request fails before any task
    runs), runs are named by ``run_name`` and tasks run on a thread pool of ``max_workers``.

    Example:
        ```python
        from prefect_neurodata.flows._names import neurodata_flow, request_value


        def _run_name() -> str:
            return f"sync s3://{request_value('bucket')}"


        @neurodata_flow("bucket-sync", _run_name, max_workers=2)
        def sync(request: dict) -> None: ...
        ```
    """
    return flow(
        name=name,
        flow_run_name=run_name,
        task_runner=ThreadPoolTaskRunner(max_workers=max_workers),  # type: ignore[arg-type]  # Prefect: generic infers Never
        validate_parameters=True,
    )
