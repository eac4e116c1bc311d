"""Shared helpers of the AIND flow tests: blocks pointed at the sandbox, small test assets.

Each test works in its own fresh bucket of the sandbox's S3 stand-in (the ``bucket`` fixture in
``tests/fixtures/aind_flows.py``), so tests neither see nor disturb each other's (or the seeded)
data, and compares DocDB state by content.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters

from prefect_neurodata.blocks import DocDbApiCredentials

FAULTS_20 = {
    "rate": 0.2,
    "statuses": [429, 500, 502, 503, 504],
    "latency_ms": 5,
    "seed": 11,
    "retry_after": 0,
}


def aws_credentials(env: dict[str, str]) -> AwsCredentials:
    """AWS credentials for the sandbox's moto server (they also sign DocDB writes)."""
    return AwsCredentials(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-west-2"),
        aws_client_parameters=AwsClientParameters(endpoint_url=env["AWS_ENDPOINT_URL"]),
    )


def docdb_block(env: dict[str, str], version: str = "v1") -> DocDbApiCredentials:
    """A DocDB block for the sandbox's stand-in."""
    return DocDbApiCredentials(
        host=env["NEURODATA_DOCDB_HOST"], version=version, aws_credentials=aws_credentials(env)
    )


def s3_client(sandbox: Any) -> Any:
    """A boto3 S3 client for the sandbox's moto server."""
    return aws_credentials(sandbox.env).get_s3_client()


def new_bucket(sandbox: Any, name: str | None = None) -> str:
    """Create a bucket in the S3 stand-in (a fresh ``test-...`` name unless ``name``)."""
    name = name or f"test-{uuid.uuid4().hex[:12]}"
    s3_client(sandbox).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"}
    )
    return name


def asset_name(index: int, platform: str = "ecephys") -> str:
    """A raw asset name in AIND's convention."""
    return f"{platform}_{700000 + index}_2025-03-{1 + index % 28:02d}_10-{index % 60:02d}-00"


def core_files(name: str, index: int) -> dict[str, dict[str, Any]]:
    """Small but realistic aind-data-schema 1.x core files of one raw asset."""
    subject_id = name.split("_")[1]
    modality = {"name": "Extracellular electrophysiology", "abbreviation": "ecephys"}
    return {
        "subject": {
            "describedBy": "https://example.org/subject.py",
            "schema_version": "1.0.3",
            "subject_id": subject_id,
            "sex": "Female" if index % 2 else "Male",
            "date_of_birth": "2024-10-01",
            "genotype": "wt/wt",
            "species": {"name": "Mus musculus", "registry": "NCBI", "registry_identifier": "10090"},
        },
        "data_description": {
            "describedBy": "https://example.org/data_description.py",
            "schema_version": "1.0.4",
            "name": name,
            "subject_id": subject_id,
            "creation_time": "2025-03-01T10:00:00Z",
            "data_level": "raw",
            "project_name": "Test project",
            "modality": [modality],
            "platform": {"name": "Electrophysiology platform", "abbreviation": "ecephys"},
            "institution": {"name": "Allen Institute for Neural Dynamics", "abbreviation": "AIND"},
            "license": "CC-BY-4.0",
        },
        "procedures": {
            "subject_id": subject_id,
            "subject_procedures": [
                {"procedure_type": "Surgery", "start_date": "2025-02-01", "iacuc_protocol": "2109"}
            ],
            "specimen_procedures": [],
        },
        "processing": {
            "processing_pipeline": {
                "data_processes": [
                    {
                        "name": "Compression",
                        "software_version": "1.0.0",
                        "start_date_time": "2025-03-01T11:00:00Z",
                        "end_date_time": "2025-03-01T11:30:00Z",
                        "parameters": {"index": index},
                    }
                ],
                "processor_full_name": "Test Person",
            }
        },
    }


def write_asset(
    s3: Any, bucket: str, name: str, files: dict[str, Any], *, last: str | None = None
) -> None:
    """Upload an asset folder's JSON files (``last`` is uploaded after the others)."""
    order = sorted(files, key=lambda k: k == last)
    for key in order:
        s3.put_object(
            Bucket=bucket,
            Key=f"{name}/{key}.json",
            Body=json.dumps(files[key], indent=2).encode(),
            ContentType="application/json",
        )


def write_assets(s3: Any, bucket: str, count: int, start: int = 0) -> list[str]:
    """Upload ``count`` asset folders; returns their names."""
    names = []
    for index in range(start, start + count):
        name = asset_name(index)
        write_asset(s3, bucket, name, core_files(name, index))
        names.append(name)
    return names


def records_in(env: dict[str, str], bucket: str, version: str = "v1") -> list[dict[str, Any]]:
    """Every DocDB record located in ``bucket``, sorted by location."""
    with docdb_block(env, version).get_client() as client:
        records = client.retrieve_docdb_records(
            filter_query={"location": {"$regex": f"^s3://{bucket}/"}}
        )
    return sorted(records, key=lambda r: r["location"])


VOLATILE = {"_id", "created", "last_modified", "_last_modified", "location", "external_links"}


def comparable(records: list[dict[str, Any]], bucket: str) -> list[dict[str, Any]]:
    """Records without server-chosen ids/stamps and with the bucket name factored out."""
    out = []
    for record in records:
        item = {k: v for k, v in record.items() if k not in VOLATILE}
        item["location"] = record["location"].replace(f"s3://{bucket}/", "s3://BUCKET/")
        out.append(item)
    return sorted(out, key=lambda r: r["location"])
