"""Credentials of the AIND databases, read from arguments, the environment or Secrets Manager.

Same classes and source precedence as ``aind_data_access_api.credentials``:

* when ``aws_secrets_name`` is passed to the constructor, values come from the constructor
  arguments first and then from that AWS Secrets Manager secret (a JSON object whose keys are
  the field names); the environment is not read;
* otherwise they come from the constructor arguments first and then from environment variables
  (no prefix on `CoreCredentials`; ``RDS_`` and ``DOC_DB_`` on the subclasses).

Passwords are `pydantic.SecretStr`: they never appear in a repr, and validation errors do not
echo input values.

Example:
    ```python
    from prefect_neurodata.clients.aind.credentials import CoreCredentials

    creds = CoreCredentials(username="u", password="p", host="db.example.org", port=5432)
    creds.password.get_secret_value()
    ```
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any

from pydantic import Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class JsonConfigSettingsSource(PydanticBaseSettingsSource, ABC):
    """A settings source whose values come from one JSON object (by field name).

    Args:
        settings_cls: The settings class being built.
        config_file_location: Where the JSON lives (a secret name, a path...).
    """

    def __init__(self, settings_cls: type[BaseSettings], config_file_location: Any) -> None:
        self.config_file_location = config_file_location
        super().__init__(settings_cls)

    @abstractmethod
    def _retrieve_contents(self) -> dict[str, Any]:
        """Load the JSON object."""

    @cached_property
    def _json_contents(self) -> dict[str, Any]:
        return self._retrieve_contents()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Gets the value, the key for model creation, and a flag to determine whether the
        value is complex.

        Args:
            field: The field.
            field_name: The field name.

        Returns:
            ``(value, key, is_complex)``; the value is None when the JSON lacks the field.
        """
        return self._json_contents.get(field_name), field_name, False

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        """Prepares the value of a field (returned unchanged).

        Args:
            field_name: The field name.
            field: The field.
            value: The value read from the JSON.
            value_is_complex: Whether the value is complex.

        Returns:
            The prepared value.
        """
        return value

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, is_complex = self.get_field_value(field, field_name)
            value = self.prepare_field_value(field_name, field, value, is_complex)
            if value is not None:
                values[key] = value
        return values


class AWSConfigSettingsSource(JsonConfigSettingsSource):
    """Settings from a JSON secret in AWS Secrets Manager (fetched once per instance).

    Args:
        settings_cls: The settings class being built.
        config_file_location: The secret's name or ARN.
    """

    def _retrieve_contents(self) -> dict[str, Any]:
        from prefect_neurodata.clients.aind.secrets import get_secret

        return get_secret(self.config_file_location)


_CONFIG = SettingsConfigDict(
    env_prefix="",
    extra="forbid",
    arbitrary_types_allowed=True,
    case_sensitive=False,
    hide_input_in_errors=True,
)


class CoreCredentials(BaseSettings):
    """Core credentials for most of our databases.

    Attributes:
        aws_secrets_name: Name of a Secrets Manager secret to read missing values from.
        username: The user name.
        password: The password.
        host: The database host.
        port: The database port.
        database: The database name.
    """

    model_config = _CONFIG

    aws_secrets_name: str | None = Field(default=None, repr=False)
    username: str
    password: SecretStr
    host: str
    port: int
    database: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Choose the sources: init arguments, then Secrets Manager when ``aws_secrets_name``
        was passed to the constructor, else the environment.

        Args:
            settings_cls: Top level class.
            init_settings: The settings in the init arguments.
            env_settings: The settings pulled from environment variables.
            dotenv_settings: Settings from .env files (not used).
            file_secret_settings: Settings from secret files (not used).

        Returns:
            The sources in priority order.
        """
        init_kwargs = (
            init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        )
        secret_name = init_kwargs.get("aws_secrets_name")
        if secret_name:
            return init_settings, AWSConfigSettingsSource(settings_cls, secret_name)
        return init_settings, env_settings
