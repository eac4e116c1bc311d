"""One retry budget: one classifier of what is transient, one task-options helper, no layer
multiplying another's retries.

The budget tests run the package's real tasks through a real Prefect API, with the DocDB
service answered by `responses`: every request is counted, so the worst case per item in an
outage is measured, not assumed.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import psycopg2
import pytest
import requests
import responses
from botocore.exceptions import ClientError, EndpointConnectionError
from prefect_aws import AwsCredentials
from sqlalchemy import exc as sa_exc

from prefect_neurodata.blocks.docdb import DocDbApiCredentials
from prefect_neurodata.clients.aind.document_db import DEFAULT_RETRY
from prefect_neurodata.clients.http import ServiceError
from prefect_neurodata.tasks import docdb as docdb_tasks
from prefect_neurodata.tasks import rds as rds_tasks
from prefect_neurodata.tasks import s3 as s3_tasks
from prefect_neurodata.tasks.retries import (
    TASK_RETRIES,
    TransientBatchError,
    is_transient_error,
    retry_transient_only,
    task_options,
)

HOST = "http://docdb.test"


def _service_error(status: int) -> ServiceError:
    return ServiceError(status_code=status, method="GET", url=HOST, server_message="x")


def _aws_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "ListObjectsV2",
    )


def _pg_error(message: str, orig: Exception | None = None) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, orig or psycopg2.OperationalError(message))


TRANSIENT = {
    "http 503": _service_error(503),
    "http 429": _service_error(429),
    "http 500": _service_error(500),
    "connection refused": requests.ConnectionError("refused"),
    "read timeout": requests.ReadTimeout("slow"),
    "aws SlowDown": _aws_error("SlowDown", 503),
    "aws Throttling": _aws_error("Throttling", 400),
    "aws InternalError": _aws_error("InternalError", 500),
    "aws RequestTimeout": _aws_error("RequestTimeout", 400),
    "aws endpoint down": EndpointConnectionError(endpoint_url="http://s3.test"),
    "pg could not connect": _pg_error('could not connect to server: Connection refused\n\tIs "x"'),
    "pg server closed": _pg_error("server closed the connection unexpectedly"),
    "sa disconnect": sa_exc.DisconnectionError("gone"),
    "batch": TransientBatchError("2 of 5 items"),
}

PERMANENT = {
    "http 404": _service_error(404),
    "http 400": _service_error(400),
    "http 401": _service_error(401),
    "aws NoSuchBucket": _aws_error("NoSuchBucket", 404),
    "aws AccessDenied": _aws_error("AccessDenied", 403),
    "unknown bucket": s3_tasks.UnknownBucketError("aind-open-dta"),
    "pg wrong password": _pg_error('FATAL:  password authentication failed for user "neuro"'),
    "pg unknown database": _pg_error('FATAL:  database "nope" does not exist'),
    "sa integrity": sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
    "validation": ValueError("bad location"),
    "bug": KeyError("x"),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_transient_errors_are_retried(name: str) -> None:
    assert is_transient_error(TRANSIENT[name])


@pytest.mark.parametrize("name", sorted(PERMANENT))
def test_permanent_errors_are_not_retried(name: str) -> None:
    assert not is_transient_error(PERMANENT[name])


def test_an_error_raised_from_a_transient_one_is_transient() -> None:
    try:
        try:
            raise _service_error(503)
        except ServiceError as inner:
            raise RuntimeError("while exporting") from inner
    except RuntimeError as outer:
        assert is_transient_error(outer)


def test_a_group_is_transient_only_when_every_member_is() -> None:
    class Batch(Exception):
        def __init__(self, errors: list[Exception]) -> None:
            super().__init__("batch")
            self.errors = errors

    assert is_transient_error(Batch([_service_error(503), requests.Timeout()]))
    assert not is_transient_error(Batch([_service_error(503), _service_error(404)]))


def test_task_options_carry_the_one_rule() -> None:
    options = task_options(tags=["docdb", "write"], timeout_seconds=30)
    assert options["retries"] == TASK_RETRIES
    assert options["retry_condition_fn"] is retry_transient_only
    assert options["tags"] == ["docdb", "write"]
    assert options["timeout_seconds"] == 30
    assert 0 < options["retry_jitter_factor"] < 1


@pytest.mark.parametrize(
    "task",
    [
        docdb_tasks.lookup_locations,
        docdb_tasks.register_asset_batch,
        docdb_tasks.attach_qc_batch,
        s3_tasks.inspect_asset_folders,
        s3_tasks.list_asset_prefixes,
        rds_tasks.export_rows,
    ],
    ids=lambda t: t.name,
)
def test_every_task_retries_only_transient_errors(task: Any) -> None:
    assert task.retry_condition_fn is retry_transient_only
    assert task.retries == TASK_RETRIES


# -------------------------------------------------------------------------- measured budgets
def _block() -> DocDbApiCredentials:
    return DocDbApiCredentials(
        host=HOST,
        aws_credentials=AwsCredentials(
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret-example",
            region_name="us-west-2",
        ),
    )


def _outage(rsps: responses.RequestsMock, counts: Counter[str], ok_paths: set[str]) -> None:
    """Answer 503 (``Retry-After: 0``, so backoffs cost nothing) to every request except POSTs
    to ``ok_paths``, which answer an empty result; count requests by path."""

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        path = request.path_url.split("?")[0].rsplit("/", 1)[-1]
        counts[path] += 1
        if path in ok_paths:
            return 200, {"Content-Type": "application/json"}, "[]"
        return 503, {"Retry-After": "0"}, '{"message": "down"}'

    for method in ("GET", "POST", "PUT", "DELETE"):
        rsps.add_callback(method, re.compile(re.escape(HOST) + ".*"), callback=answer)


def test_reads_in_an_outage_cost_core_attempts_times_task_attempts(prefect_api: str) -> None:
    counts: Counter[str] = Counter()
    task = docdb_tasks.lookup_locations.with_options(retry_delay_seconds=0)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _outage(rsps, counts, ok_paths=set())
        state = task(_block(), ["s3://bucket/asset_1"], return_state=True)
    assert state.is_failed()
    core_attempts = DEFAULT_RETRY.max_retries + 1
    task_attempts = TASK_RETRIES + 1
    assert sum(counts.values()) == core_attempts * task_attempts  # 6 x 5 = 30, not 150


def test_a_write_in_an_outage_is_sent_once_per_task_attempt(prefect_api: str) -> None:
    counts: Counter[str] = Counter()
    task = docdb_tasks.register_asset_batch.with_options(retry_delay_seconds=0)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _outage(rsps, counts, ok_paths={"aggregate"})
        state = task(_block(), [{"location": "s3://bucket/asset_1"}], return_state=True)
    assert state.is_failed()
    task_attempts = TASK_RETRIES + 1
    # The POST is not idempotent: the core does not resend it after a 503 and the item loop
    # does not either; only the task retries the batch (whose lookup would skip a landed item).
    assert counts["register"] == task_attempts
    # Per attempt: the batch lookup and one check whether the lost write landed.
    assert counts["aggregate"] == 2 * task_attempts


def test_a_permanent_error_fails_at_once(prefect_api: str) -> None:
    counts: Counter[str] = Counter()
    task = docdb_tasks.lookup_locations.with_options(retry_delay_seconds=0)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:

        def forbidden(request: Any) -> tuple[int, dict[str, str], str]:
            counts["any"] += 1
            return 403, {}, '{"message": "Forbidden"}'

        rsps.add_callback("POST", re.compile(re.escape(HOST) + ".*"), callback=forbidden)
        state = task(_block(), ["s3://bucket/asset_1"], return_state=True)
    assert state.is_failed()
    assert counts["any"] == 1
