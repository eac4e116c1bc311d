"""Read secrets from AWS Secrets Manager and parameters from SSM Parameter Store.

Same functions as ``aind_data_access_api.secrets``. Clients come from boto3's default chain
(environment, shared config, instance role) and honour ``AWS_ENDPOINT_URL`` (and the
per-service ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` / ``AWS_ENDPOINT_URL_SSM``), so a local
stand-in such as moto works without code changes.

Example:
    ```python
    from prefect_neurodata.clients.aind.secrets import get_parameter, get_secret

    credentials = get_secret("/aind/prod/docdb/credentials")   # {"username": ..., ...}
    host = get_parameter("/aind/prod/docdb/host")
    ```
"""

from __future__ import annotations

import json
from typing import Any

import boto3


def _client(service: str) -> Any:
    # boto3 itself resolves AWS_ENDPOINT_URL(_<SERVICE>) from the environment.
    return boto3.client(service)


def get_secret(secret_name: str) -> dict:
    """Retrieve a JSON secret from AWS Secrets Manager.

    Args:
        secret_name: The name or ARN of the secret.

    Returns:
        The secret's ``SecretString`` parsed as JSON.

    Raises:
        botocore.exceptions.ClientError: For example ``ResourceNotFoundException`` or
            ``AccessDeniedException``.
        ValueError: The secret is not a JSON object (the secret's value is not shown).
    """
    client = _client("secretsmanager")
    try:
        response = client.get_secret_value(SecretId=secret_name)
    finally:
        client.close()
    try:
        value = json.loads(response["SecretString"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"secret {secret_name!r} does not hold a JSON SecretString") from None
    if not isinstance(value, dict):
        raise ValueError(f"secret {secret_name!r} holds JSON but not an object")
    return value


def get_parameter(parameter_name: str, with_decryption=False) -> str:
    """Retrieve a parameter's value from AWS Systems Manager Parameter Store.

    Args:
        parameter_name: The name of the parameter.
        with_decryption: Decrypt ``SecureString`` parameters.

    Returns:
        The parameter's value as stored (not parsed).

    Raises:
        botocore.exceptions.ClientError: For example ``ParameterNotFound``.
    """
    client = _client("ssm")
    try:
        response = client.get_parameter(Name=parameter_name, WithDecryption=with_decryption)
    finally:
        client.close()
    return response["Parameter"]["Value"]
