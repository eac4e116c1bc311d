"""The S3 -> Prefect event relay: message parsing and delivery rules (real moto SQS)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
import responses
from moto import mock_aws

from prefect_neurodata.relay import EVENT_NAME, EventRelay, events_from_message

API = "http://prefect.test/api"


def notification(key: str, bucket: str = "aind-open-data", name: str = "ObjectCreated:Put") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventTime": "2026-11-22T03:00:00.000Z",
                    "eventName": name,
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {"key": key, "size": 321, "eTag": "abc", "sequencer": "0A1B"},
                    },
                }
            ]
        }
    )


def test_object_created_becomes_an_asset_event() -> None:
    (event,) = events_from_message(
        notification("ecephys_1_2025-01-01_10-00-00/data_description.json")
    )
    assert event["event"] == EVENT_NAME
    assert event["resource"]["prefect.resource.id"] == (
        "s3://aind-open-data/ecephys_1_2025-01-01_10-00-00"
    )
    assert event["payload"]["key"] == "ecephys_1_2025-01-01_10-00-00/data_description.json"
    assert event["occurred"] == "2026-11-22T03:00:00.000Z"
    again = events_from_message(notification("ecephys_1_2025-01-01_10-00-00/data_description.json"))
    assert again[0]["id"] == event["id"]


def test_keys_are_url_decoded() -> None:
    (event,) = events_from_message(notification("my+asset%2Bv2/data_description.json"))
    assert event["resource"]["prefect.resource.id"] == "s3://aind-open-data/my asset+v2"


def test_asset_folder_follows_the_shared_location_rule() -> None:
    # The registration flow's rule (parse_s3_location): a canonical location, and folders it
    # would reject (a '..' segment, a bucket name AWS no longer allows) are not relayed.
    (event,) = events_from_message(notification("/nested/asset/data_description.json"))
    assert event["resource"]["prefect.resource.id"] == "s3://aind-open-data/nested/asset"
    assert event["resource"]["prefix"] == "nested/asset"
    assert events_from_message(notification("a/../b/data_description.json")) == []
    assert events_from_message(notification("a/x.json", bucket="Legacy_Bucket")) == []


def test_test_events_and_other_event_types_relay_nothing() -> None:
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})
    assert events_from_message(test_event) == []
    assert events_from_message(notification("a/b.json", name="ObjectRemoved:Delete")) == []
    assert events_from_message(notification("top-level.json")) == []


def test_sns_wrapped_notifications_are_unwrapped() -> None:
    body = json.dumps({"Type": "Notification", "Message": notification("x/data_description.json")})
    assert (
        events_from_message(body)[0]["resource"]["prefect.resource.id"] == "s3://aind-open-data/x"
    )


def test_garbage_is_rejected() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        events_from_message("{nope")
    with pytest.raises(ValueError, match="no 'Records'"):
        events_from_message(json.dumps({"hello": 1}))


@pytest.fixture
def queue() -> Any:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-west-2")
        url = sqs.create_queue(QueueName="q", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
        yield sqs, url


def _remaining(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"
    ]
    return int(attrs["ApproximateNumberOfMessages"])


@responses.activate
def test_messages_are_deleted_only_after_prefect_accepts(queue: Any) -> None:
    sqs, url = queue
    sqs.send_message(QueueUrl=url, MessageBody=notification("a/data_description.json"))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Event": "s3:TestEvent", "Bucket": "b"}))
    responses.post(f"{API}/events", status=500)
    relay = EventRelay(sqs, url, API, wait_seconds=0)
    relay.http.retry = relay.http.retry.none()
    relay.poll_once()
    assert relay.stats.failed == 1 and relay.stats.events == 0
    assert _remaining(sqs, url) == 1  # the test event went, the asset event stays queued

    responses.replace(responses.POST, f"{API}/events", status=204)
    assert relay.poll_once() == 1
    assert _remaining(sqs, url) == 0
    body = json.loads(responses.calls[-1].request.body)
    assert body[0]["resource"]["prefect.resource.id"] == "s3://aind-open-data/a"
    assert {"id", "occurred", "event", "resource", "payload"} <= set(body[0])


def test_cli_group_registers_events_relay() -> None:
    import argparse

    from prefect_neurodata.relay import register

    parser = argparse.ArgumentParser(prog="neurodata")
    register(parser.add_subparsers(dest="group"))
    args = parser.parse_args(
        ["events", "relay", "--queue-url", "http://q", "--api-url", "http://a/api", "--once"]
    )
    assert args.func.__name__ == "_relay_command"
    assert (args.queue_url, args.api_url, args.once, args.wait_seconds) == (
        "http://q",
        "http://a/api",
        True,
        10,
    )
