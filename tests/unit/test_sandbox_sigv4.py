"""SigV4 verification of the sandbox (API Gateway's 403 messages), signed with botocore."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from prefect_neurodata.sandbox.sigv4 import SignatureError, SigV4Verifier

URL = "http://127.0.0.1:8080/v1/metadata_index/data_assets/update_one"
BODY = b'{"filter": {"_id": "a"}, "update": {"$set": {"x": 1}}, "upsert": "True"}'
NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.timezone.utc)


def _signed_headers(
    *, key: str = "AKID", secret: str = "s3cr3t", token: str | None = None, at: dt.datetime = NOW
) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url=URL, data=BODY, headers={"Content-Type": "application/json"}
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.replace(tzinfo=None)):
        SigV4Auth(Credentials(key, secret, token), "execute-api", "us-west-2").add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = "127.0.0.1:8080"
    return headers


def _verify(verifier: SigV4Verifier, headers: dict[str, str], body: bytes = BODY, **kw) -> None:
    verifier.verify(
        "POST", "http", "/v1/metadata_index/data_assets/update_one", b"", headers, body, **kw
    )


def _message(verifier: SigV4Verifier, headers: dict[str, str], **kw) -> str:
    with pytest.raises(SignatureError) as info:
        _verify(verifier, headers, **kw)
    return info.value.message


VERIFIER = SigV4Verifier("AKID", "s3cr3t", "us-west-2")


def test_valid_signature_passes_within_skew() -> None:
    _verify(VERIFIER, _signed_headers(), now=NOW)
    _verify(VERIFIER, _signed_headers(), now=NOW + dt.timedelta(minutes=4, seconds=59))


def test_missing_authorization() -> None:
    assert _message(VERIFIER, {"host": "h"}, now=NOW) == "Missing Authentication Token"


def test_expired_and_not_yet_current() -> None:
    msg = _message(VERIFIER, _signed_headers(), now=NOW + dt.timedelta(minutes=6))
    assert msg == (
        "Signature expired: 20261122T120000Z is now earlier than 20261122T120100Z"
        " (20261122T120600Z - 5 min.)"
    )
    msg = _message(VERIFIER, _signed_headers(), now=NOW - dt.timedelta(minutes=6))
    assert msg.startswith("Signature not yet current: 20261122T120000Z is still later than")


def test_wrong_secret_shows_canonical_request() -> None:
    msg = _message(VERIFIER, _signed_headers(secret="other"), now=NOW)
    assert msg.startswith("The request signature we calculated does not match")
    assert "POST\n/v1/metadata_index/data_assets/update_one\n" in msg
    assert "content-type;host;x-amz-date" in msg


def test_body_change_fails() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        _verify(VERIFIER, _signed_headers(), body=BODY + b" ", now=NOW)


def test_session_token_rules() -> None:
    # Static keys have no token: a request carrying one is refused, and vice versa.
    msg = _message(VERIFIER, _signed_headers(token="tok"), now=NOW)
    assert msg == "The security token included in the request is invalid."
    with_token = SigV4Verifier("AKID", "s3cr3t", "us-west-2", session_token="tok")
    _verify(with_token, _signed_headers(token="tok"), now=NOW)
    assert "security token" in _message(with_token, _signed_headers(), now=NOW)


def test_malformed_headers() -> None:
    headers = _signed_headers()
    headers["x-amz-date"] = "2026-11-22"
    assert _message(VERIFIER, headers, now=NOW).startswith("Date must be in ISO-8601")
    headers = _signed_headers()
    del headers["x-amz-date"]
    msg = _message(VERIFIER, headers, now=NOW)
    assert "requires existence of either a 'X-Amz-Date' or a 'Date' header" in msg
    headers = _signed_headers()
    headers["authorization"] = headers["authorization"].replace("SignedHeaders=", "Signed=")
    assert "requires 'SignedHeaders' parameter" in _message(VERIFIER, headers, now=NOW)


def test_scope_date_mismatch() -> None:
    headers = _signed_headers()
    headers["authorization"] = headers["authorization"].replace("/20261122/", "/20261121/")
    msg = _message(VERIFIER, headers, now=NOW)
    assert msg.startswith("Date in Credential scope does not match YYYYMMDD")


def test_repr_hides_secret() -> None:
    assert "s3cr3t" not in repr(VERIFIER)
