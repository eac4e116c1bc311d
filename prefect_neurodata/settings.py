"""The package's environment knobs, read in one place (pydantic-settings).

Every environment variable the library itself reads is a field of `NeurodataSettings`, under
the name its owner defines: ``NEURODATA_*`` for ours, the AWS SDK's and Prefect's own names for
theirs, so an environment that configures boto3 or the Prefect CLI configures us the same way.
Empty values count as unset, as ``os.environ.get(name) or default`` did before.

Not here: the official clients' credential settings (``DocumentDbSSHCredentials``,
``RDSCredentials`` in ``clients/aind``), which keep the seed's own classes and prefixes, and the
sandbox stand-ins' configuration (``NEURODATA_SANDBOX_*``, read by ``sandbox/``), because the
sandbox imports no other part of the package.

Example:
    ```python
    from prefect_neurodata.settings import NeurodataSettings

    settings = NeurodataSettings()  # the process environment
    print(settings.neurodata_ledger_dir)
    relay_settings = NeurodataSettings.load(".sandbox/sandbox.env")  # the file's values win
    print(relay_settings.neurodata_sqs_queue_url)
    ```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_ledger_dir() -> Path:
    return Path.home() / ".neurodata" / "ledgers"


class NeurodataSettings(BaseSettings):
    """Environment knobs of prefect-neurodata; each field reads the variable of its name in
    upper case (``neurodata_ledger_dir`` is ``NEURODATA_LEDGER_DIR``).

    Attributes:
        neurodata_ledger_dir: Annotation-upload ledgers for sources without a folder of their own.
        neurodata_sqs_queue_url: The queue the event relay reads upload notifications from.
        prefect_api_url: The Prefect API the event relay posts events to.
        prefect_api_key: Prefect Cloud key, sent by the relay as a bearer token (secret).
        prefect_api_auth_string: ``user:password`` of a self-hosted server's basic auth (secret).
        aws_endpoint_url: Endpoint of every AWS service (moto in the sandbox).
        aws_endpoint_url_s3: Endpoint of S3 alone; wins over ``aws_endpoint_url``.
        aws_region: AWS region; ``aws_default_region`` when unset.
        aws_default_region: The AWS CLI's older region variable.
        aws_access_key_id: Access key id of S3 filesystems built without a block.
        aws_secret_access_key: Its secret key (secret).
        aws_session_token: Session token of temporary credentials (secret).
    """

    model_config = SettingsConfigDict(
        env_ignore_empty=True, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    neurodata_ledger_dir: Path = Field(default_factory=_default_ledger_dir)
    """Where the annotation upload keeps its ledgers when the source has no folder of its own
    (default ``~/.neurodata/ledgers``)."""

    neurodata_sqs_queue_url: str | None = None
    """The SQS queue receiving the bucket's upload notifications (event relay)."""

    # Prefect's own variables, for the event relay (a process outside any flow run).
    prefect_api_url: str | None = None
    prefect_api_key: SecretStr | None = None
    prefect_api_auth_string: SecretStr | None = None

    # The AWS SDK's own variables, for S3 and SQS clients built without a prefect-aws block.
    aws_endpoint_url: str | None = None
    aws_endpoint_url_s3: str | None = None
    aws_region: str | None = None
    aws_default_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None

    @property
    def s3_endpoint_url(self) -> str | None:
        """The S3 endpoint: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``."""
        return self.aws_endpoint_url_s3 or self.aws_endpoint_url

    @property
    def region(self) -> str | None:
        """The AWS region: ``AWS_REGION``, else ``AWS_DEFAULT_REGION``."""
        return self.aws_region or self.aws_default_region

    @classmethod
    def load(cls, env_file: str | Path | None = None) -> NeurodataSettings:
        """The settings from the environment, with ``env_file``'s values winning.

        The file (``KEY=VALUE`` lines, parsed by python-dotenv like the sandbox's own env file)
        names the services to use, so it overrides stale exports in the shell.

        Example:
            >>> NeurodataSettings.load(None) == NeurodataSettings()
            True
        """
        values = dotenv_values(env_file) if env_file else {}
        # Keyword arguments win over the environment; empty values count as unset there too.
        overrides: dict[str, Any] = {key.lower(): value for key, value in values.items() if value}
        return cls(**overrides)


__all__ = ["NeurodataSettings"]
