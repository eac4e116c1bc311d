"""The plugin's saved-block fixtures, loaded back through a real Prefect API.

Our own session has the plugin loaded from its entry point like any user's; ``prefect_api``
(tests/fixtures/prefect.py) points the session at a real Prefect server, where the fixtures
save the blocks.
"""

from __future__ import annotations

import pytest
from prefect_aws import AwsCredentials

from prefect_neurodata.blocks import CaveCredentials, DocDbApiCredentials


@pytest.mark.flows
def test_saved_blocks_load_and_reach_the_sandbox(
    prefect_api: str,
    neurodata_sandbox,
    neurodata_sandbox_config,
    neurodata_docdb_block: str,
    neurodata_aws_credentials_block: str,
    neurodata_cave_block: str,
) -> None:
    docdb = DocDbApiCredentials.load(neurodata_docdb_block).get_client()
    ids = docdb.retrieve_docdb_records(filter_query={}, projection={"_id": 1})
    assert len(ids) == neurodata_sandbox_config.records // 2  # the v1 half

    s3 = AwsCredentials.load(neurodata_aws_credentials_block).get_s3_client()
    listing = s3.list_objects_v2(Bucket=neurodata_sandbox.bucket)
    assert listing["KeyCount"] > 0

    cave = CaveCredentials.load(neurodata_cave_block)
    assert cave.datastack_name == neurodata_sandbox_config.datastack
    assert cave.get_client().materialize.most_recent_version() == 3

    # The tokens are saved as secrets: nothing in the block's repr shows them.
    assert neurodata_sandbox.cave_env["NEURODATA_CAVE_TOKEN"] not in repr(cave)


def test_the_handle_repr_holds_no_secret(neurodata_sandbox) -> None:
    env = {**neurodata_sandbox.cave_env, **neurodata_sandbox.aind_env}
    secrets = [v for k, v in env.items() if "TOKEN" in k or "SECRET" in k]
    assert len(secrets) >= 4  # three CAVE tokens and the AWS secret key
    text = repr(neurodata_sandbox)
    assert [s for s in secrets if s in text] == []
