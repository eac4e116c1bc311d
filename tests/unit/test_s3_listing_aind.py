"""Ranged listing of asset folders (moto S3): every folder of a batch is seen, whatever the
characters in its name do to S3's key order."""

from __future__ import annotations

import boto3
from moto import mock_aws

from prefect_neurodata.tasks.s3 import list_folder_files, list_prefixes


@mock_aws
def test_ranged_listing_sees_folders_whose_keys_sort_out_of_name_order() -> None:
    s3 = boto3.client("s3", region_name="us-west-2")
    s3.create_bucket(Bucket="bkt", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    folders = ["abc", "abc-d", "abc.e", "abc_f", "abd", "zz"]
    for folder in folders:
        for name in ("subject.json", "data_description.json"):
            s3.put_object(Bucket="bkt", Key=f"{folder}/{name}", Body=b"{}")
        s3.put_object(Bucket="bkt", Key=f"{folder}/original_metadata/x.json", Body=b"{}")
    s3.put_object(Bucket="bkt", Key=".neurodata/metadata-sync/x/state.json", Body=b"{}")

    assert list_prefixes(s3, "bkt") == folders
    for batch in (folders[:2], folders[:4], folders[1:3], ["abc", "zz"], folders):
        listing = list_folder_files(s3, "bkt", batch)
        assert set(listing) == set(batch)
        for folder in batch:
            assert set(listing[folder]) == {"subject.json", "data_description.json"}, (
                batch,
                folder,
            )


@mock_aws
def test_ranged_listing_follows_continuation_pages() -> None:
    s3 = boto3.client("s3", region_name="us-west-2")
    s3.create_bucket(Bucket="bkt", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    folders = [f"asset_{i:04d}" for i in range(400)]
    for folder in folders:
        for name in ("a.json", "b.json", "c.json"):
            s3.put_object(Bucket="bkt", Key=f"{folder}/{name}", Body=b"{}")
    listing = list_folder_files(s3, "bkt", folders[5:395])
    assert len(listing) == 390 and all(len(files) == 3 for files in listing.values())
