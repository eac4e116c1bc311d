"""Verify AWS SigV4 (``execute-api``) request signatures the way API Gateway does.

The expected signature is recomputed with botocore's own signer over exactly the headers the
client listed in ``SignedHeaders``, so a client that signs with botocore (as the official DocDB
client does) verifies byte for byte. Failures raise :class:`SignatureError` carrying API
Gateway's 403 message for that case:

* no ``Authorization`` header -> ``Missing Authentication Token``
* unparsable header -> ``Authorization header requires 'Credential' parameter. ...``
* unknown access key or unexpected session token -> ``The security token included in the
  request is invalid.``
* wrong region/service/date in the credential scope -> ``Credential should be scoped to ...``
* more than 5 minutes of clock skew -> ``Signature expired: ...`` / ``Signature not yet
  current: ...``
* anything else -> ``The request signature we calculated does not match ...`` with the
  canonical request and string-to-sign, like AWS, so a client author can see what differs.

Example:
    >>> v = SigV4Verifier("AKID", "secret", "us-west-2")
    >>> try:
    ...     v.verify("GET", "http", "/v1/x", b"", {"host": "h"}, b"")
    ... except SignatureError as e:
    ...     print(e.message)
    Missing Authentication Token
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = dt.timedelta(minutes=5)
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_PARAM_RE = re.compile(r"\s*([A-Za-z]+)\s*=\s*([^,\s]*)\s*")


class SignatureError(Exception):
    """A request failed signature verification; ``message`` is the gateway's 403 text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _FixedHeadersSigV4(SigV4Auth):
    """botocore signer restricted to the headers named by the client."""

    def __init__(self, credentials: Credentials, service: str, region: str, names: list[str]):
        super().__init__(credentials, service, region)
        self._names = names

    def headers_to_sign(self, request: AWSRequest):
        header_map = super().headers_to_sign(request)
        for name in list(header_map.keys()):
            if name not in self._names:
                del header_map[name]
        return header_map


class SigV4Verifier:
    """Check SigV4 signatures for one access key / secret / region.

    Args:
        access_key_id: the only access key accepted.
        secret_access_key: its secret.
        region: region expected in the credential scope (``us-west-2`` in production).
        service: service expected in the scope (API Gateway: ``execute-api``).
        session_token: if set, requests must carry it in ``X-Amz-Security-Token``; if unset,
            requests carrying a token are refused (static keys have none).
        max_skew: allowed difference between ``X-Amz-Date`` and the server clock.
    """

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        *,
        service: str = "execute-api",
        session_token: str | None = None,
        max_skew: dt.timedelta = MAX_SKEW,
    ) -> None:
        self.access_key_id = access_key_id
        self._secret = secret_access_key
        self.region = region
        self.service = service
        self._token = session_token
        self.max_skew = max_skew

    def __repr__(self) -> str:  # never show the secret
        return f"SigV4Verifier(access_key_id={self.access_key_id!r}, region={self.region!r})"

    def verify(
        self,
        method: str,
        scheme: str,
        path: str,
        query_string: bytes,
        headers: Mapping[str, str],
        body: bytes,
        *,
        now: dt.datetime | None = None,
    ) -> None:
        """Raise :class:`SignatureError` unless the request is validly signed.

        Args:
            method: HTTP method.
            scheme: ``http`` or ``https`` as seen by the server.
            path: decoded request path (botocore re-encodes it like the client did).
            query_string: raw query string as received.
            headers: request headers, names lower-case.
            body: exact request body.
            now: clock override (tests).
        """
        auth = headers.get("authorization")
        if not auth:
            raise SignatureError("Missing Authentication Token")
        params = _parse_authorization(auth)
        amz_date = headers.get("x-amz-date")
        missing = [
            f"Authorization header requires '{key}' parameter."
            for key in ("Credential", "Signature", "SignedHeaders")
            if key not in params
        ]
        if not amz_date:
            missing.append(
                "Authorization header requires existence of either a 'X-Amz-Date' or a"
                " 'Date' header."
            )
        if not auth.startswith(ALGORITHM + " ") or missing:
            if not missing:
                missing = ["Authorization header requires 'Credential' parameter."]
            raise SignatureError(" ".join(missing) + f" Authorization={auth}")
        assert amz_date  # a missing date is one of the ``missing`` reasons raised above

        scope = params["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise SignatureError(
                f"Credential should be scoped to a valid region, not '{params['Credential']}'. "
            )
        access_key, scope_date, scope_region, scope_service, _ = scope
        token = headers.get("x-amz-security-token")
        if access_key != self.access_key_id or (token or None) != self._token:
            raise SignatureError("The security token included in the request is invalid.")
        if scope_region != self.region:
            raise SignatureError(
                f"Credential should be scoped to a valid region, not '{scope_region}'. "
            )
        if scope_service != self.service:
            raise SignatureError(
                f"Credential should be scoped to correct service: '{self.service}'. "
            )
        try:
            signed_at = dt.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise SignatureError(
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See"
                " http://en.wikipedia.org/wiki/ISO_8601"
            ) from None
        if scope_date != amz_date[:8]:
            raise SignatureError(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of"
                f" date from HTTP: '{scope_date}' != '{amz_date[:8]}', from '{amz_date}'."
            )
        current = now or dt.datetime.now(dt.timezone.utc)
        if signed_at < current - self.max_skew:
            raise SignatureError(
                f"Signature expired: {amz_date} is now earlier than"
                f" {(current - self.max_skew).strftime(_AMZ_DATE)}"
                f" ({current.strftime(_AMZ_DATE)} - 5 min.)"
            )
        if signed_at > current + self.max_skew:
            raise SignatureError(
                f"Signature not yet current: {amz_date} is still later than"
                f" {(current + self.max_skew).strftime(_AMZ_DATE)}"
                f" ({current.strftime(_AMZ_DATE)} + 5 min.)"
            )

        names = [n.strip().lower() for n in params["SignedHeaders"].split(";") if n.strip()]
        if "host" not in names:
            raise SignatureError(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
            )
        query = query_string.decode("latin-1")
        url = f"{scheme}://{headers.get('host', '')}{path}" + (f"?{query}" if query else "")
        request = AWSRequest(
            method=method.upper(),
            url=url,
            headers={n: headers[n] for n in names if n in headers},
            data=body,
        )
        request.context["timestamp"] = amz_date
        signer = _FixedHeadersSigV4(
            Credentials(self.access_key_id, self._secret, self._token),
            self.service,
            self.region,
            names,
        )
        canonical = signer.canonical_request(request)
        string_to_sign = signer.string_to_sign(request, canonical)
        expected = signer.signature(string_to_sign, request)
        if not hmac.compare_digest(expected, params["Signature"]):
            raise SignatureError(
                "The request signature we calculated does not match the signature you"
                " provided. Check your AWS Secret Access Key and signing method. Consult the"
                " service documentation for details.\n\nThe Canonical String for this request"
                f" should have been\n'{canonical}'\n\nThe String-to-Sign should have been\n"
                f"'{string_to_sign}'\n"
            )


def _parse_authorization(value: str) -> dict[str, str]:
    """Split ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``."""
    _, _, rest = value.partition(" ")
    params: dict[str, str] = {}
    for part in rest.split(","):
        match = _PARAM_RE.fullmatch(part)
        if match:
            params[match.group(1)] = match.group(2)
    return params
