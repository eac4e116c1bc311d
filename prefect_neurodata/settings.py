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
    print(settings.ledger_dir)
    relay_settings = NeurodataSettings.load(".sandbox/sandbox.env")  # the file's values win
    print(relay_settings.sqs_queue_url)
    ```
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


def _default_ledger_dir() -> Path:
    return Path.home() / ".neurodata" / "ledgers"


class NeurodataSettings(BaseSettings):
    """Environment knobs of prefect-neurodata (each field names its variable)."""

    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True
    )

    ledger_dir: Path = Field(
        default_factory=_default_ledger_dir,
        validation_alias="NEURODATA_LEDGER_DIR",
        description=(
            "Where the annotation upload keeps its ledgers when the source has no folder of its "
            "own (default ``~/.neurodata/ledgers``)."
        ),
    )
    sqs_queue_url: str | None = Field(
        default=None,
        validation_alias="NEURODATA_SQS_QUEUE_URL",
        description="The SQS queue receiving the bucket's upload notifications (event relay).",
    )
    prefect_api_url: str | None = Field(
        default=None,
        validation_alias="PREFECT_API_URL",
        description="Prefect API the event relay posts to (Prefect's own variable).",
    )
    prefect_api_key: SecretStr | None = Field(
        default=None,
        validation_alias="PREFECT_API_KEY",
        description="Prefect Cloud API key, sent as a bearer token (Prefect's own variable).",
    )
    prefect_api_auth_string: SecretStr | None = Field(
        default=None,
        validation_alias="PREFECT_API_AUTH_STRING",
        description="``user:password`` of a self-hosted server's basic auth (Prefect's own).",
    )
    aws_endpoint_url: str | None = Field(
        default=None,
        validation_alias="AWS_ENDPOINT_URL",
        description="Endpoint of every AWS service (the AWS SDK's variable; moto in the sandbox).",
    )
    aws_endpoint_url_s3: str | None = Field(
        default=None,
        validation_alias="AWS_ENDPOINT_URL_S3",
        description="Endpoint of S3 only; wins over ``AWS_ENDPOINT_URL`` (the AWS SDK's rule).",
    )
    aws_region: str | None = Field(
        default=None, validation_alias="AWS_REGION", description="AWS region (AWS SDK)."
    )
    aws_default_region: str | None = Field(
        default=None,
        validation_alias="AWS_DEFAULT_REGION",
        description="AWS region when ``AWS_REGION`` is unset (AWS SDK).",
    )
    aws_access_key_id: str | None = Field(
        default=None, validation_alias="AWS_ACCESS_KEY_ID", description="AWS access key id."
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias="AWS_SECRET_ACCESS_KEY", description="AWS secret key."
    )
    aws_session_token: SecretStr | None = Field(
        default=None,
        validation_alias="AWS_SESSION_TOKEN",
        description="AWS session token of temporary credentials.",
    )

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
            >>> NeurodataSettings.load(None).ledger_dir == NeurodataSettings().ledger_dir
            True
        """
        # `_env_file` is BaseSettings' own init argument; the synthesized signature omits it.
        return cls(_env_file=env_file)  # type: ignore[call-arg]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # An env file given on purpose (``load``) wins over the shell's exports.
        return init_settings, dotenv_settings, env_settings, file_secret_settings


__all__ = ["NeurodataSettings"]
