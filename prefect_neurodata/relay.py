"""Relay S3 upload notifications from SQS to a self-hosted Prefect server as events.

S3 sends ``s3:ObjectCreated:*`` notifications to an SQS queue (the sandbox configures this for
new ``data_description.json`` files). Prefect's open-source server has no webhooks, so this
small consumer turns each notification into a ``neurodata.asset.uploaded`` event whose
resource id is the asset's S3 location, ``s3://<bucket>/<prefix>`` (the key's folder), and
POSTs it to ``<PREFECT_API_URL>/events``. A `DeploymentEventTrigger` on that event starts the
registration deployment.

Delivery rules:

* ``s3:TestEvent`` messages (sent when a notification is configured) are deleted unrelayed.
* Object keys are URL-decoded as S3 encodes them (``+`` is a space, ``%2B`` a plus).
* The key's folder must pass the asset-location rule the registration flow applies
  (``clients/aind/utils.parse_s3_location``); a record that does not is logged, not relayed.
* A message is deleted only after the Prefect API accepted its events; otherwise it becomes
  visible again after the queue's visibility timeout and is retried (send poison messages to a
  dead-letter queue with a redrive policy).
* Event ids are derived from bucket, key and the S3 sequencer, so a redelivered message
  produces the same event id.

Example:
    ```bash
    neurodata events relay --env-file .sandbox/sandbox.env
    ```
    or from Python:
    ```python
    relay = EventRelay(sqs_client, queue_url, "http://127.0.0.1:4200/api")
    relay.poll_once()
    ```
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from prefect_neurodata.clients.aind.utils import get_s3_location, parse_s3_location
from prefect_neurodata.clients.http import HttpClient, RetryPolicy, redact_url
from prefect_neurodata.settings import NeurodataSettings

logger = logging.getLogger("prefect_neurodata.relay")

EVENT_NAME = "neurodata.asset.uploaded"
_ID_NAMESPACE = uuid.UUID("6d1c3c1e-2f4b-4c39-9d43-6b7e0e1c2a10")


def events_from_message(body: str) -> list[dict[str, Any]]:
    """The Prefect events of one SQS message body (S3 notification, possibly SNS-wrapped).

    Returns:
        One event per ``ObjectCreated`` record whose key lies in a folder; ``[]`` for
        ``s3:TestEvent`` and other event types.

    Raises:
        ValueError: The body is not an S3 notification.
    """
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"message body is not JSON: {exc}") from exc
    if isinstance(document, dict) and document.get("Type") == "Notification":
        document = json.loads(document.get("Message") or "{}")  # SNS -> SQS fan-out
    if not isinstance(document, dict):
        raise ValueError("message body is not an S3 notification object")
    if document.get("Event") == "s3:TestEvent":
        return []
    if "Records" not in document:
        raise ValueError("message body has no 'Records' (not an S3 notification)")
    events: list[dict[str, Any]] = []
    for record in document["Records"]:
        name = str(record.get("eventName", ""))
        if not name.startswith("ObjectCreated"):
            continue
        s3 = record.get("s3", {})
        bucket = s3.get("bucket", {}).get("name")
        obj = s3.get("object", {})
        key = unquote_plus(obj.get("key", ""))
        if not bucket or "/" not in key:
            continue
        try:
            # The asset is the key's folder, held to the same location rule as registration.
            asset = parse_s3_location(get_s3_location(bucket, key.rsplit("/", 1)[0]))
        except ValueError as exc:
            logger.warning("not relaying %s: %s", EVENT_NAME, exc)
            continue
        location, prefix = asset.uri, asset.prefix
        marker = obj.get("sequencer") or obj.get("eTag") or record.get("eventTime", "")
        events.append(
            {
                "id": str(uuid.uuid5(_ID_NAMESPACE, f"{bucket}/{key}/{marker}")),
                "occurred": record.get("eventTime")
                or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event": EVENT_NAME,
                "resource": {
                    "prefect.resource.id": location,
                    "prefect.resource.name": prefix,
                    "bucket": bucket,
                    "prefix": prefix,
                },
                "payload": {
                    "bucket": bucket,
                    "key": key,
                    "size": obj.get("size"),
                    "etag": obj.get("eTag"),
                    "s3_event": name,
                },
                "related": [],
            }
        )
    return events


@dataclasses.dataclass
class RelayStats:
    """Counters of a relay."""

    messages: int = 0
    events: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0


class EventRelay:
    """Moves S3 notifications from an SQS queue to the Prefect events API.

    Args:
        sqs: A boto3 SQS client.
        queue_url: The queue receiving the bucket's notifications.
        api_url: Prefect API base URL, e.g. ``http://127.0.0.1:4200/api``.
        http: HTTP client for the Prefect API (timeouts and retries of the shared core).
        headers: Extra headers for the Prefect API (e.g. authorization).
        wait_seconds: SQS long-poll wait.
        max_messages: Messages per receive (1-10).
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        api_url: str,
        *,
        http: HttpClient | None = None,
        headers: Mapping[str, str] | None = None,
        wait_seconds: int = 10,
        max_messages: int = 10,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.events_url = api_url.rstrip("/") + "/events"
        self.http = http or HttpClient(timeout=(5, 30), retry=RetryPolicy(max_retries=3))
        self.headers = dict(headers or {})
        self.wait_seconds = wait_seconds
        self.max_messages = max(1, min(10, max_messages))
        self.stats = RelayStats()

    def __repr__(self) -> str:
        return f"EventRelay(queue={self.queue_url!r}, api={redact_url(self.events_url)!r})"

    def poll_once(self, wait_seconds: int | None = None) -> int:
        """Receive one round of messages and relay them.

        Returns:
            Events accepted by Prefect in this round.
        """
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.max_messages,
            WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
        )
        sent = 0
        for message in response.get("Messages", []):
            self.stats.messages += 1
            try:
                events = events_from_message(message["Body"])
            except ValueError as exc:
                # Left in the queue: after maxReceiveCount it goes to the dead-letter queue.
                logger.warning("not an S3 notification (message %s): %s", message["MessageId"], exc)
                self.stats.skipped += 1
                continue
            if events:
                try:
                    self.http.request(
                        "POST",
                        self.events_url,
                        json=events,
                        headers=self.headers,
                        idempotent=True,  # event ids are deterministic: a resend is a duplicate
                    )
                except Exception as exc:  # noqa: BLE001 - the message stays queued
                    logger.warning("Prefect did not accept events, will retry: %s", exc)
                    self.stats.failed += 1
                    continue
                sent += len(events)
                self.stats.events += len(events)
                for event in events:
                    logger.info(
                        "relayed %s for %s", EVENT_NAME, event["resource"]["prefect.resource.id"]
                    )
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            self.stats.deleted += 1
        return sent

    def run(self, stop: threading.Event | None = None) -> RelayStats:
        """Relay until ``stop`` is set (or forever)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - keep relaying through outages
                logger.warning("relay round failed: %s", exc)
                stop.wait(2.0)
        return self.stats


def prefect_api_headers(settings: NeurodataSettings | None = None) -> dict[str, str]:
    """Authorization headers for the Prefect API from Prefect's own settings variables.

    Example:
        >>> prefect_api_headers(NeurodataSettings(PREFECT_API_KEY="pnu_x"))
        {'Authorization': 'Bearer pnu_x'}
    """
    settings = settings or NeurodataSettings()
    if settings.prefect_api_key:
        return {"Authorization": f"Bearer {settings.prefect_api_key.get_secret_value()}"}
    if settings.prefect_api_auth_string:
        auth = settings.prefect_api_auth_string.get_secret_value()
        return {"Authorization": f"Basic {base64.b64encode(auth.encode()).decode()}"}
    return {}


def build_relay(args: argparse.Namespace) -> EventRelay:
    """An `EventRelay` from CLI options, an env file and the environment."""
    import boto3

    settings = NeurodataSettings.load(args.env_file)
    queue_url = args.queue_url or settings.neurodata_sqs_queue_url
    api_url = args.api_url or settings.prefect_api_url
    if not queue_url:
        raise SystemExit("no queue: pass --queue-url or set NEURODATA_SQS_QUEUE_URL")
    if not api_url:
        raise SystemExit("no Prefect API: pass --api-url or set PREFECT_API_URL")
    secret, token = settings.aws_secret_access_key, settings.aws_session_token
    sqs = boto3.client(
        "sqs",
        endpoint_url=args.endpoint_url or settings.aws_endpoint_url,
        region_name=args.region or settings.aws_default_region or "us-west-2",
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        aws_session_token=token.get_secret_value() if token else None,
    )
    headers = prefect_api_headers(settings)
    return EventRelay(sqs, queue_url, api_url, headers=headers, wait_seconds=args.wait_seconds)


def _relay_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    relay = build_relay(args)
    if args.once:
        relay.poll_once()
        print(json.dumps(dataclasses.asdict(relay.stats)))
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"relaying {relay.queue_url} -> {redact_url(relay.events_url)} (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        relay.run(stop)
    print(json.dumps(dataclasses.asdict(relay.stats)))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``events`` command group (``neurodata events relay``) to the CLI."""
    group = subparsers.add_parser(
        "events",
        help="relay S3 upload notifications to Prefect",
        description="Prefect events from outside Prefect (a self-hosted server has no webhooks).",
    )
    commands = group.add_subparsers(dest="events_command", metavar="COMMAND")
    relay = commands.add_parser(
        "relay",
        help="turn S3 ObjectCreated notifications from SQS into Prefect events",
        description=f"Turn S3 ObjectCreated notifications from SQS into {EVENT_NAME} events "
        "(resource id: the asset's s3:// folder) on the Prefect API; SIGTERM or Ctrl-C stops.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    relay.add_argument("--queue-url", help="SQS queue URL (default $NEURODATA_SQS_QUEUE_URL)")
    relay.add_argument("--api-url", help="Prefect API URL (default $PREFECT_API_URL)")
    relay.add_argument("--endpoint-url", help="AWS endpoint (default $AWS_ENDPOINT_URL)")
    relay.add_argument("--region", help="AWS region (default $AWS_DEFAULT_REGION)")
    relay.add_argument("--env-file", help="KEY=VALUE file to read, e.g. .sandbox/sandbox.env")
    relay.add_argument("--wait-seconds", type=int, default=10, help="SQS long-poll seconds")
    relay.add_argument("--once", action="store_true", help="relay one round and exit")
    relay.set_defaults(func=_relay_command)
