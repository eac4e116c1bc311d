"""The tagging flow, offline: against the neurodata sandbox, through a real Prefect API."""

from __future__ import annotations

import uuid

import pytest
from synapse_tagging import tag_top_presynaptic
from synapse_tagging.flow import TAG_PREFIX


def unique_table() -> str:
    return f"top_pre_{uuid.uuid4().hex[:8]}"


def expected_tags(client, version: int, top_n: int) -> list[str]:
    """The tags computed here from one direct query, independently of the flow's tasks."""
    df = client.materialize.query_table("synapses", materialization_version=version)
    counts = df[df["pre_pt_root_id"] != 0]["pre_pt_root_id"].value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
    return [f"{TAG_PREFIX}:v{version}:{root}:{n}" for root, n in ranked]


def table_tags(client, table: str) -> list[str]:
    import datetime as dt

    rows = client.materialize.live_live_query(table, dt.datetime.now(dt.timezone.utc))
    return sorted(rows["tag"])


def test_tags_the_strongest_presynaptic_neurons(neurodata_cave_block, neurodata_cave_client):
    table = unique_table()
    summary = tag_top_presynaptic(neurodata_cave_block, table, top_n=3)

    version = neurodata_cave_client.materialize.most_recent_version()
    assert summary.version == version
    assert summary.tags == expected_tags(neurodata_cave_client, version, 3)
    assert (summary.uploaded, summary.already_present) == (3, 0)
    assert table_tags(neurodata_cave_client, table) == sorted(summary.tags)


def test_a_rerun_uploads_nothing_twice(neurodata_cave_block, neurodata_cave_client):
    table = unique_table()
    first = tag_top_presynaptic(neurodata_cave_block, table, top_n=3)
    again = tag_top_presynaptic(neurodata_cave_block, table, top_n=3)

    assert again.tags == first.tags
    assert (again.uploaded, again.already_present) == (0, 3)
    assert table_tags(neurodata_cave_client, table) == sorted(first.tags)


def test_same_result_under_injected_faults(
    neurodata_sandbox, neurodata_cave_block, neurodata_cave_client
):
    table = unique_table()
    version = neurodata_cave_client.materialize.most_recent_version()
    wanted = expected_tags(neurodata_cave_client, version, 3)

    # One request in five answers 502/503 (seeded); the plugin switches it off after the test.
    faults = neurodata_sandbox.faults("cave", rate=0.2, statuses=[502, 503], seed=11)
    summary = tag_top_presynaptic(neurodata_cave_block, table, top_n=3)

    assert sum(faults.stats()["faults"].values()) > 0, "no fault injected: proves nothing"
    assert summary.tags == wanted
    assert table_tags(neurodata_cave_client, table) == sorted(wanted)  # nothing lost, no dupes


def test_a_split_shows_up_in_the_next_version(neurodata_sandbox, neurodata_cave_block):
    client = neurodata_sandbox.cave_client()
    before = tag_top_presynaptic(neurodata_cave_block, unique_table(), top_n=1)
    strongest = int(before.tags[0].split(":")[2])

    new_roots = neurodata_sandbox.split(strongest)
    version = neurodata_sandbox.materialize()

    assert version == before.version + 1
    assert strongest not in [int(r) for r in new_roots]
    after = tag_top_presynaptic(neurodata_cave_block, unique_table(), top_n=1, version=version)
    assert after.version == version
    df = client.materialize.query_table("synapses", materialization_version=version)
    assert strongest not in set(df["pre_pt_root_id"])  # the old root is gone from the version
    assert after.tags == expected_tags(client, version, 1)


def test_bad_input_fails_before_any_request(neurodata_cave_block):
    with pytest.raises(ValueError, match="top_n must be >= 1, got 0"):
        tag_top_presynaptic(neurodata_cave_block, unique_table(), top_n=0)
