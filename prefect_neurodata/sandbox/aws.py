"""AWS stand-ins for the sandbox: a moto server with S3, SQS, Secrets Manager and SSM.

The launcher runs moto as its own process (``python -m moto.server``); this module builds that
command and provisions what the rest of the project expects to find there: the asset bucket,
an SQS queue that receives the bucket's ``s3:ObjectCreated:*`` notifications for new
``data_description.json`` files (the "a new asset landed" signal), a Secrets Manager secret and
an SSM parameter shaped like the AIND indexer's settings.

Example:
    >>> from prefect_neurodata.sandbox.aws import AwsTarget, provision  # doctest: +SKIP
    >>> target = AwsTarget(endpoint_url="http://127.0.0.1:5055")  # doctest: +SKIP
    >>> names = provision(target, bucket="aind-open-data")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

DEFAULT_REGION = "us-west-2"
DEFAULT_BUCKET = "aind-open-data"
DEFAULT_QUEUE = "neurodata-asset-events"
DEFAULT_NOTIFY_SUFFIX = "data_description.json"
DEFAULT_SECRET_NAME = "neurodata/sandbox/docdb"
DEFAULT_SSM_PARAMETER = "/neurodata/sandbox/indexer_settings"
NOTIFICATION_ID = "neurodata-asset-uploaded"


def moto_command(host: str, port: int) -> list[str]:
    """Return the command line that serves moto on ``host:port`` with this interpreter.

    Args:
        host: Interface to bind (the sandbox always uses 127.0.0.1).
        port: TCP port.

    Returns:
        The argv list for ``subprocess.Popen``.
    """
    return [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]


@dataclass(frozen=True)
class AwsTarget:
    """Where and as whom to talk to the AWS stand-in.

    Attributes:
        endpoint_url: Base URL of the moto server, e.g. ``http://127.0.0.1:5055``.
        region: AWS region name.
        access_key_id: Access key id (moto accepts any).
        secret_access_key: Secret access key (moto accepts any).
    """

    endpoint_url: str
    region: str = DEFAULT_REGION
    access_key_id: str = "testing"
    secret_access_key: str = "testing"

    def __repr__(self) -> str:
        return f"AwsTarget(endpoint_url={self.endpoint_url!r}, region={self.region!r})"

    def client(self, service: str, *, max_pool_connections: int = 10) -> Any:
        """Build a boto3 client for ``service`` pointed at the stand-in.

        Args:
            service: boto3 service name (``s3``, ``sqs``, ``secretsmanager``, ``ssm``).
            max_pool_connections: urllib3 pool size; raise it for threaded uploads.

        Returns:
            A boto3 client.
        """
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(
                max_pool_connections=max_pool_connections,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )


def notification_config(queue_arn: str, suffix: str = DEFAULT_NOTIFY_SUFFIX) -> dict[str, Any]:
    """Bucket notification that sends ``ObjectCreated`` events for ``*suffix`` keys to a queue."""
    return {
        "QueueConfigurations": [
            {
                "Id": NOTIFICATION_ID,
                "QueueArn": queue_arn,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": suffix}]}},
            }
        ]
    }


def provision(
    target: AwsTarget,
    *,
    bucket: str = DEFAULT_BUCKET,
    queue: str = DEFAULT_QUEUE,
    notify_suffix: str = DEFAULT_NOTIFY_SUFFIX,
    secret_name: str = DEFAULT_SECRET_NAME,
    secret_value: dict[str, Any] | None = None,
    ssm_parameter: str = DEFAULT_SSM_PARAMETER,
    ssm_value: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Create the bucket, queue, bucket-to-queue notification, secret and SSM parameter.

    Idempotent: existing resources are reused and the notification is (re)applied. As on real
    S3, applying the notification makes the queue receive one ``s3:TestEvent`` message, which
    consumers skip.

    Args:
        target: The moto endpoint.
        bucket: Asset bucket name.
        queue: SQS queue name for the bucket's ObjectCreated notifications.
        notify_suffix: Key suffix that triggers a notification.
        secret_name: Secrets Manager secret to create.
        secret_value: JSON body of the secret.
        ssm_parameter: SSM parameter (String, JSON value) to create.
        ssm_value: JSON value of the parameter.

    Returns:
        ``{"bucket", "queue_url", "queue_arn", "secret_name", "ssm_parameter"}``.
    """
    s3 = target.client("s3")
    sqs = target.client("sqs")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if target.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": target.region}
        s3.create_bucket(**kwargs)
    queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    # Real SQS refuses S3 deliveries without this policy; moto does not check, but keep the
    # setup the same as one would write it for AWS.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration=notification_config(queue_arn, notify_suffix),
    )

    sm = target.client("secretsmanager")
    body = json.dumps(secret_value or {})
    try:
        sm.create_secret(Name=secret_name, SecretString=body)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=secret_name, SecretString=body)
    ssm = target.client("ssm")
    ssm.put_parameter(
        Name=ssm_parameter, Value=json.dumps(ssm_value or {}), Type="String", Overwrite=True
    )
    return {
        "bucket": bucket,
        "queue_url": queue_url,
        "queue_arn": queue_arn,
        "secret_name": secret_name,
        "ssm_parameter": ssm_parameter,
    }


def suspend_notifications(target: AwsTarget, bucket: str) -> dict[str, Any]:
    """Remove the bucket's notification configuration and return it for :func:`restore`.

    Seeding uses this so that historical assets do not flood the event queue.
    """
    s3 = target.client("s3")
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    return current


def restore_notifications(target: AwsTarget, bucket: str, config: dict[str, Any]) -> None:
    """Re-apply a configuration returned by :func:`suspend_notifications`."""
    target.client("s3").put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration=config
    )


def s3_event_keys(message_body: str) -> list[str]:
    """Decoded object keys of an S3 event notification body; ``[]`` for ``s3:TestEvent``.

    Args:
        message_body: The SQS message body.

    Returns:
        The object keys, URL-decoded as S3 encodes them (``a%2Fb`` -> ``a/b``, ``+`` -> space).
    """
    from urllib.parse import unquote_plus

    body = json.loads(message_body)
    return [unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])]
