"""The CAVE flows take their S3 storage from a prefect-aws `AwsCredentials` block (issue 14.5).

The AWS environment variables are removed for these tests, so S3 is reachable only through the
block (its keys, region and ``aws_client_parameters.endpoint_url`` pointing at the stand-in).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect_aws import AwsCredentials

from prefect_neurodata.flows.annotation_upload import AnnotationUploadRequest, upload_annotations
from prefect_neurodata.flows.materialization_snapshot import (
    SnapshotRequest,
    snapshot_materialization,
)
from tests.flows.cave_helpers import client_for, table_name
from tests.flows.test_annotation_upload import SYNAPSE, synapse_rows

pytestmark = pytest.mark.flows


@pytest.fixture
def s3_through_a_block(
    sandbox: Any, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str, Any]:
    """``(block name, bucket, boto3 client)`` with no AWS variables left in the environment."""
    env = sandbox.env
    for key in [k for k in list(os.environ) if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    block = AwsCredentials(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_client_parameters={"endpoint_url": env["AWS_ENDPOINT_URL"]},
    )
    block.save("test-cave-aws", overwrite=True)
    s3 = block.get_s3_client()
    bucket = f"cave-block-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": env["AWS_DEFAULT_REGION"]}
    )
    return "test-cave-aws", bucket, s3


def test_snapshot_to_s3_through_an_aws_block(
    saved_cave_block: str, s3_through_a_block: tuple[str, str, Any]
) -> None:
    aws_block, bucket, s3 = s3_through_a_block
    summary = snapshot_materialization(
        SnapshotRequest(destination=f"s3://{bucket}/snaps", tables=["neuron_tags"]),
        cave_block=saved_cave_block,
        aws_block=aws_block,
    )
    key = summary.manifest.split(f"s3://{bucket}/", 1)[1]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    (item,) = manifest["tables"]["neuron_tags"]["files"]
    assert item["rows"] == manifest["tables"]["neuron_tags"]["expected_rows"] > 0


def test_upload_from_s3_through_an_aws_block(
    sandbox: Any, saved_cave_block: str, s3_through_a_block: tuple[str, str, Any]
) -> None:
    aws_block, bucket, s3 = s3_through_a_block
    rows = synapse_rows(40, seed=41)
    frame = pa.table(
        {
            "pre_pt_position": [[int(v) for v in r[0].split(",")] for r in rows],
            "ctr_pt_position": [[r[1], r[2], r[3]] for r in rows],
            "post_pt_position": [json.loads(r[4]) for r in rows],
            "size": [float(r[5]) for r in rows],
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(frame, sink)
    s3.put_object(Bucket=bucket, Key="in/syn.parquet", Body=sink.getvalue().to_pybytes())
    table = table_name("up_block")
    summary = upload_annotations(
        AnnotationUploadRequest(
            table=table, source=f"s3://{bucket}/in/syn.parquet", create=SYNAPSE
        ),
        cave_block=saved_cave_block,
        aws_block=aws_block,
    )
    assert summary.rows == 40 and summary.ledger.startswith(f"s3://{bucket}/in/")
    assert client_for(sandbox.env).annotation.get_annotation_count(table) == 40
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert any(k.endswith("chunk-000000.json") for k in keys)
    assert any(k.endswith("id_map.csv") for k in keys)
