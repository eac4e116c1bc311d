"""Configuration of the DocDB REST stand-in, read from ``NEURODATA_SANDBOX_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_PREFIX = "NEURODATA_SANDBOX_"

# A Lambda proxy response is capped at 6 MB *including* the envelope, and the JSON page travels
# as an escaped string inside that envelope (every quote costs a backslash), so a server has to
# stop well below 6 MB of raw JSON. 5 MB keeps ~500 records of ~10 KB per page, like production.
DEFAULT_PAGE_BYTES = 5_000_000
# API Gateway's payload limit: 10 MB including headers.
DEFAULT_REQUEST_BYTES = 10 * 1024 * 1024
# Encoded whole documents the stand-in keeps in memory per collection, as a real DocumentDB keeps
# its working set (see ``id_index.IdList.docs``).
DEFAULT_DOC_CACHE_BYTES = 1_500_000_000


@dataclass(frozen=True)
class DocDBConfig:
    """Settings of one DocDB stand-in process.

    Attributes:
        mongo_uri: any MongoDB URI (the launcher starts a SecantusDB daemon).
        aws_endpoint_url: S3 endpoint used by ``assets/register`` (moto); None = real AWS.
        aws_region: region expected in SigV4 credential scopes and used for S3.
        access_key_id: the only access key whose signatures are accepted.
        secret_access_key: its secret (never logged).
        session_token: optional token signed requests must carry.
        page_bytes: byte budget of one ``find`` page.
        request_bytes: request size cap (body plus headers).
        doc_cache_bytes: memory budget of encoded whole documents kept per collection
            (``NEURODATA_SANDBOX_DOC_CACHE_BYTES``; 1 effectively turns the cache off).
    """

    mongo_uri: str = "mongodb://127.0.0.1:27017/"
    aws_endpoint_url: str | None = None
    aws_region: str = "us-west-2"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    session_token: str | None = None
    page_bytes: int = DEFAULT_PAGE_BYTES
    request_bytes: int = DEFAULT_REQUEST_BYTES
    doc_cache_bytes: int = DEFAULT_DOC_CACHE_BYTES

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return (
            f"DocDBConfig(mongo_uri={self.mongo_uri!r}, aws_endpoint_url={self.aws_endpoint_url!r},"
            f" aws_region={self.aws_region!r}, access_key_id={self.access_key_id!r},"
            f" page_bytes={self.page_bytes}, request_bytes={self.request_bytes})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DocDBConfig:
        """Build from ``NEURODATA_SANDBOX_*`` variables; unset ones keep the defaults.

        Raises:
            ValueError: a numeric variable is not a positive integer (message names it).
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        def positive_int(name: str, default: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(float(raw))
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None
            if value <= 0:
                raise ValueError(f"{ENV_PREFIX}{name} must be > 0, got {raw!r}")
            return value

        defaults = cls()
        return cls(
            mongo_uri=get("MONGO_URI") or defaults.mongo_uri,
            aws_endpoint_url=get("AWS_ENDPOINT_URL"),
            aws_region=get("AWS_REGION") or defaults.aws_region,
            access_key_id=get("ACCESS_KEY_ID") or defaults.access_key_id,
            secret_access_key=get("SECRET_ACCESS_KEY") or defaults.secret_access_key,
            session_token=get("SESSION_TOKEN"),
            page_bytes=positive_int("PAGE_BYTES", DEFAULT_PAGE_BYTES),
            request_bytes=positive_int("REQUEST_BYTES", DEFAULT_REQUEST_BYTES),
            doc_cache_bytes=positive_int("DOC_CACHE_BYTES", DEFAULT_DOC_CACHE_BYTES),
        )
