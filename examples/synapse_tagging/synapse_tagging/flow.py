"""A user's own flow: read a frozen synapse table, upload one tag per top presynaptic neuron.

The flow reads the ``synapses`` table of a materialization version through the CAVE client of
a saved ``CaveCredentials`` block, ranks presynaptic neurons by their number of output
synapses, and uploads a ``bound_tag`` annotation for each of the ``top_n`` strongest (at the
position of one of its synapses) into a table it creates when missing.

The upload is safe to retry: it first reads which tags the table already holds (a live query)
and posts only the missing ones, so a task retry after a failed request never duplicates a tag.

Example:
    ```python
    from synapse_tagging import tag_top_presynaptic

    summary = tag_top_presynaptic("my-cave-block", "top_presynaptic", top_n=5)
    ```
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from prefect import flow, task
from pydantic import BaseModel

from prefect_neurodata.blocks import CaveCredentials

TAG_PREFIX = "top-presynaptic"


class TaggingSummary(BaseModel):
    """What a run did."""

    version: int
    table: str
    tags: list[str]
    uploaded: int
    already_present: int


def _client(cave_block: str) -> Any:
    return CaveCredentials.load(cave_block).get_client()


@task(retries=3, retry_delay_seconds=0)
def latest_version(cave_block: str) -> int:
    """The newest valid materialization version."""
    return int(_client(cave_block).materialize.most_recent_version())


@task(retries=3, retry_delay_seconds=0)
def top_presynaptic(cave_block: str, version: int, top_n: int) -> list[dict[str, Any]]:
    """The ``top_n`` presynaptic roots with the most output synapses in ``version``.

    Returns:
        ``[{"root_id", "synapses", "position"}]``, strongest first (ties by root id); the
        position (voxels) is that of the root's synapse with the smallest id.
    """
    client = _client(cave_block)
    df = client.materialize.query_table(
        "synapses",
        materialization_version=version,
        select_columns=["id", "pre_pt_root_id", "pre_pt_position"],
    )
    df = df[df["pre_pt_root_id"] != 0].sort_values("id")
    counts = df.groupby("pre_pt_root_id").size().rename("synapses").reset_index()
    counts = counts.sort_values(["synapses", "pre_pt_root_id"], ascending=[False, True]).head(top_n)
    first = df.drop_duplicates("pre_pt_root_id").set_index("pre_pt_root_id")["pre_pt_position"]
    return [
        {
            "root_id": int(row.pre_pt_root_id),
            "synapses": int(row.synapses),
            "position": [int(v) for v in first[row.pre_pt_root_id]],
        }
        for row in counts.itertuples()
    ]


@task(retries=3, retry_delay_seconds=0)
def ensure_tag_table(cave_block: str, table: str) -> None:
    """Create the ``bound_tag`` table unless it exists."""
    annotation = _client(cave_block).annotation
    if table not in annotation.get_tables():
        annotation.create_table(
            table,
            "bound_tag",
            "Strongest presynaptic neurons per materialization version (synapse_tagging).",
            voxel_resolution=[4, 4, 40],
        )


@task(retries=3, retry_delay_seconds=0)
def upload_missing_tags(cave_block: str, table: str, rows: list[dict[str, Any]]) -> tuple[int, int]:
    """Post the tags the table does not hold yet; returns ``(uploaded, already_present)``."""
    client = _client(cave_block)
    present = client.materialize.live_live_query(
        table, dt.datetime.now(dt.timezone.utc), allow_missing_lookups=True
    )
    have = set(present["tag"]) if len(present) else set()
    missing = [r for r in rows if r["tag"] not in have]
    if missing:
        df = pd.DataFrame(
            {"pt_position": [r["position"] for r in missing], "tag": [r["tag"] for r in missing]}
        )
        client.annotation.post_annotation_df(table, df, position_columns=["pt_position"])
    return len(missing), len(rows) - len(missing)


@flow(name="tag-top-presynaptic")
def tag_top_presynaptic(
    cave_block: str, table: str, top_n: int = 5, version: int | None = None
) -> TaggingSummary:
    """Tag the ``top_n`` strongest presynaptic neurons of a version (default: the newest)."""
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n!r}")
    version = version if version is not None else latest_version(cave_block)
    top = top_presynaptic(cave_block, version, top_n)
    rows = [
        {
            "tag": f"{TAG_PREFIX}:v{version}:{t['root_id']}:{t['synapses']}",
            "position": t["position"],
        }
        for t in top
    ]
    ensure_tag_table(cave_block, table)
    uploaded, present = upload_missing_tags(cave_block, table, rows)
    return TaggingSummary(
        version=version,
        table=table,
        tags=[r["tag"] for r in rows],
        uploaded=uploaded,
        already_present=present,
    )
