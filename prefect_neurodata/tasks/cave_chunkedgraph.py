"""CAVE chunkedgraph tasks: root ids of supervoxels and the lineage of roots, one batch each.

Example:
    ```python
    from prefect_neurodata.tasks.cave_chunkedgraph import get_roots

    roots = get_roots("neurodata-cave", "minnie65_public", [864691135000000001])
    ```
"""

from __future__ import annotations

import datetime as dt

from prefect import task

from prefect_neurodata.tasks.cave_common import LIVE_OPTIONS, Cave, cave_client


# ------------------------------------------------------------------------------ chunkedgraph
@task(name="get-roots", tags=["cave"], **LIVE_OPTIONS)
def get_roots(
    cave: Cave,
    datastack: str,
    supervoxel_ids: list[int],
    timestamp: dt.datetime | None = None,
) -> list[int]:
    """Root ids of a batch of supervoxels at ``timestamp`` (now when None)."""
    client = cave_client(cave, datastack)
    return [int(x) for x in client.chunkedgraph.get_roots(supervoxel_ids, timestamp=timestamp)]


@task(name="get-latest-roots", tags=["cave"], **LIVE_OPTIONS)
def get_latest_roots(cave: Cave, datastack: str, root_id: int) -> list[int]:
    """The current root ids that descend from ``root_id`` (after merges and splits)."""
    client = cave_client(cave, datastack)
    return [int(x) for x in client.chunkedgraph.get_latest_roots(root_id)]


@task(name="is-latest-roots", tags=["cave"], **LIVE_OPTIONS)
def is_latest_roots(
    cave: Cave, datastack: str, root_ids: list[int], timestamp: dt.datetime | None = None
) -> list[bool]:
    """Whether each root id is current at ``timestamp`` (now when None)."""
    client = cave_client(cave, datastack)
    return [bool(x) for x in client.chunkedgraph.is_latest_roots(root_ids, timestamp=timestamp)]
