"""Local paths and ``s3://`` URIs behind one small interface (pyarrow filesystems).

The CAVE flows read sources and write snapshots, manifests and ledgers to either a local
directory or S3. S3 goes through `pyarrow.fs.S3FileSystem`. Its credentials come from a
prefect-aws `AwsCredentials` block when one is given (``aws=``; its boto3 session resolves keys,
profiles and region, and its ``aws_client_parameters.endpoint_url`` points at MinIO or a
stand-in), as in the AIND flows; without a block, from the standard AWS environment
(credentials chain, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``).

Example:
    ```python
    from prefect_neurodata.tasks.storage import join, write_bytes_atomic, read_bytes

    uri = join("s3://bucket/snapshots", "manifest.json")
    write_bytes_atomic(uri, b"{}")
    assert read_bytes(uri) == b"{}"
    ```
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
from prefect_aws import AwsCredentials
from pydantic import BaseModel, ConfigDict
from typing_extensions import Self

from prefect_neurodata.clients.http import dumps, loads
from prefect_neurodata.settings import NeurodataSettings
from prefect_neurodata.tasks.common import block_or_saved

CHUNK_BYTES = 4 * 1024 * 1024


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an ``s3://`` URI."""
    return str(uri).startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join path segments to a local path or an S3 URI."""
    if is_s3(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return str(Path(base, *parts))


def load_aws(block: str | AwsCredentials | None) -> AwsCredentials | None:
    """The `AwsCredentials` block itself, the saved block of that name, or None (environment)."""
    return None if block is None else block_or_saved(AwsCredentials, block)


def _endpoint_kwargs(endpoint: str | None) -> dict[str, object]:
    if not endpoint:
        return {}
    parsed = urlparse(endpoint)
    return {"endpoint_override": parsed.netloc or parsed.path, "scheme": parsed.scheme or "https"}


def s3_filesystem(aws: AwsCredentials | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem from an `AwsCredentials` block, else from the AWS environment."""
    settings = NeurodataSettings()
    kwargs: dict[str, object] = {}
    if aws is not None:
        session = aws.get_boto3_session()
        frozen = session.get_credentials()
        if frozen is not None:
            keys = frozen.get_frozen_credentials()
            kwargs.update(access_key=keys.access_key, secret_key=keys.secret_key)
            if keys.token:
                kwargs["session_token"] = keys.token
        if session.region_name:
            kwargs["region"] = session.region_name
        endpoint = aws.aws_client_parameters.endpoint_url or settings.aws_endpoint_url
        kwargs.update(_endpoint_kwargs(endpoint))
        return pafs.S3FileSystem(**kwargs)
    kwargs.update(_endpoint_kwargs(settings.s3_endpoint_url))
    if settings.region:
        kwargs["region"] = settings.region
    secret = settings.aws_secret_access_key
    if settings.aws_access_key_id and secret:
        kwargs["access_key"] = settings.aws_access_key_id
        kwargs["secret_key"] = secret.get_secret_value()
        if settings.aws_session_token:
            kwargs["session_token"] = settings.aws_session_token.get_secret_value()
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, aws: AwsCredentials | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a local path or ``s3://bucket/key``."""
    if is_s3(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError(f"{uri!r} has no bucket (expected s3://bucket/key)")
        return s3_filesystem(aws), f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def exists(uri: str, aws: AwsCredentials | None = None) -> bool:
    """Whether a file exists at ``uri``."""
    fs, path = resolve(uri, aws)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(uri: str, aws: AwsCredentials | None = None) -> bytes:
    """The whole content of a (small) file."""
    fs, path = resolve(uri, aws)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def ensure_dir(uri: str) -> None:
    """Create a local directory (S3 has no directories)."""
    if not is_s3(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)


def write_bytes_atomic(uri: str, data: bytes, aws: AwsCredentials | None = None) -> None:
    """Write ``data`` so that readers see the old or the new content, never a partial file.

    Locally the file is written next to its target and renamed; an S3 PUT is atomic already.
    """
    fs, path = resolve(uri, aws)
    if is_s3(uri):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)


def publish_file(local_path: str | Path, uri: str, aws: AwsCredentials | None = None) -> None:
    """Move a finished local file to ``uri`` (rename locally, stream upload to S3)."""
    fs, path = resolve(uri, aws)
    if not is_s3(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local_path, path)
        return
    with open(local_path, "rb") as src, fs.open_output_stream(path) as out:
        while block := src.read(CHUNK_BYTES):
            out.write(block)
    os.unlink(local_path)


def sha256_file(uri: str, aws: AwsCredentials | None = None) -> str:
    """Hex sha256 of a file, read in blocks (constant memory)."""
    fs, path = resolve(uri, aws)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while block := stream.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def sha256_local(path: str | Path) -> str:
    """Hex sha256 of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def scratch_dir(target_uri: str) -> Path:
    """Where to build a file before publishing it to ``target_uri``.

    Next to the target for local destinations (so the final rename stays on one filesystem),
    else the system temporary directory.
    """
    if not is_s3(target_uri):
        parent = Path(target_uri).absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        return parent
    import tempfile

    return Path(tempfile.gettempdir())


class JsonDocument(BaseModel):
    """A typed JSON document kept whole in one file, local or ``s3://``.

    The one home of the rules the flows' checkpoints (snapshot manifests, annotation ledgers)
    share: unknown keys are kept (a document written by a newer version still reads, and
    rewrites with them), a missing file reads as None, and a write replaces the file atomically
    (`write_bytes_atomic`), so a run killed midway leaves the previous document.

    Example:
        ```python
        class Progress(JsonDocument):
            done: int = 0

        Progress(done=3).write_document("/tmp/progress.json")
        assert Progress.read_document("/tmp/progress.json") == Progress(done=3)
        ```
    """

    model_config = ConfigDict(extra="allow")

    @classmethod
    def coerce(cls, value: Self | Mapping[str, Any]) -> Self:
        """``value`` itself when it is one, else a mapping validated as one.

        Raises:
            pydantic.ValidationError: The mapping is not a valid document.
        """
        return value if isinstance(value, cls) else cls.model_validate(dict(value))

    @classmethod
    def parse_document(cls, data: bytes) -> Self:
        """The document encoded as JSON in ``data``.

        Raises:
            ValueError: ``data`` is not JSON, or not a valid document (pydantic's
                ``ValidationError`` is a ``ValueError``).
        """
        return cls.model_validate(loads(data))

    @classmethod
    def read_document(cls, uri: str, aws: AwsCredentials | None = None) -> Self | None:
        """The document stored at ``uri``, or None when there is no file there."""
        if not exists(uri, aws):
            return None
        return cls.parse_document(read_bytes(uri, aws))

    def write_document(
        self, uri: str, aws: AwsCredentials | None = None, *, exclude_none: bool = False
    ) -> str:
        """Replace the file at ``uri`` with this document atomically; return ``uri``.

        Args:
            uri: Local path or ``s3://`` URI of the file.
            aws: Credentials for S3; None for the AWS environment.
            exclude_none: Leave out the fields that are None (smaller files when most are).
        """
        payload = self.model_dump(mode="json", exclude_none=exclude_none)
        write_bytes_atomic(uri, dumps(payload), aws)
        return uri
