"""Against moto (the sandbox's AWS stand-in): an unknown bucket is named in the error and fails
a task at once, without task retries (a typo used to cost four retries, ~20 s)."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.orchestration import get_client

from prefect_neurodata.tasks import s3 as s3_tasks
from tests.flows.aind_helpers import aws_credentials

TYPO = "aind-open-dta-does-not-exist"


@pytest.mark.parametrize(
    "call",
    [
        lambda aws: s3_tasks.list_asset_prefixes(aws, TYPO, return_state=True),
        lambda aws: s3_tasks.inspect_asset_folders(
            aws, [f"s3://{TYPO}/asset_1"], ["subject.json"], return_state=True
        ),
    ],
    ids=["list-asset-prefixes", "inspect-asset-folders"],
)
def test_unknown_bucket_fails_at_once_naming_it(sandbox: Any, prefect_api: str, call: Any) -> None:
    state = call(aws_credentials(sandbox.env))
    assert state.is_failed()
    with pytest.raises(s3_tasks.UnknownBucketError, match=TYPO):
        state.result()
    # No task retry ran (each would first wait TASK_RETRY_DELAYS: ~18 s in all).
    with get_client(sync_client=True) as client:
        task_run = client.read_task_run(state.state_details.task_run_id)
    assert task_run.run_count == 1


def test_unknown_bucket_helpers_name_the_bucket(sandbox: Any) -> None:
    s3 = aws_credentials(sandbox.env).get_s3_client()
    for call in (
        lambda: s3_tasks.list_prefixes(s3, TYPO),
        lambda: s3_tasks.list_folder_files(s3, TYPO, ["a", "b"]),
        lambda: s3_tasks.read_json(s3, TYPO, "a/b.json"),
        lambda: s3_tasks.put_bytes(s3, TYPO, "a/b.json", b"{}"),
    ):
        with pytest.raises(s3_tasks.UnknownBucketError, match=TYPO):
            call()
