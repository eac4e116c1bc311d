"""secrets and credentials against a moto server (Secrets Manager, SSM) over HTTP."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import boto3
import botocore.exceptions
import pytest
from moto.server import ThreadedMotoServer

from prefect_neurodata.clients.aind.credentials import CoreCredentials
from prefect_neurodata.clients.aind.document_db_ssh import DocumentDbSSHCredentials
from prefect_neurodata.clients.aind.rds_tables import RDSCredentials
from prefect_neurodata.clients.aind.secrets import get_parameter, get_secret

SECRET = "Rds-Secret-Pa55"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3's default chain at moto through AWS_ENDPOINT_URL only."""
    import os

    for key in list(os.environ):
        if key.upper().startswith(("RDS_", "DOC_DB_", "AWS_")) or key.upper() in {
            "USERNAME",
            "PASSWORD",
            "HOST",
            "PORT",
            "DATABASE",
        }:
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return moto_url


def put_secret(name: str, value: dict) -> None:
    client = boto3.client("secretsmanager")
    try:
        client.create_secret(Name=name, SecretString=json.dumps(value))
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=name, SecretString=json.dumps(value))


def test_get_secret_and_parameter_through_aws_endpoint_url(aws: str):
    put_secret("docdb/creds", {"username": "u", "password": SECRET})
    assert get_secret("docdb/creds") == {"username": "u", "password": SECRET}
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/aind/host", Value='{"host": "h"}', Type="String", Overwrite=True)
    ssm.put_parameter(Name="/aind/token", Value="tok", Type="SecureString", Overwrite=True)
    assert get_parameter("/aind/host") == '{"host": "h"}'
    assert get_parameter("/aind/token", with_decryption=True) == "tok"
    with pytest.raises(botocore.exceptions.ClientError, match="ResourceNotFound"):
        get_secret("missing")
    with pytest.raises(botocore.exceptions.ClientError, match="ParameterNotFound"):
        get_parameter("/missing")


def test_secret_that_is_not_a_json_object(aws: str):
    boto3.client("secretsmanager").create_secret(Name="plain", SecretString="not-json " + SECRET)
    with pytest.raises(ValueError, match="plain") as info:
        get_secret("plain")
    assert SECRET not in str(info.value)


def test_credentials_from_secrets_manager_init_args_win_env_ignored(
    aws: str, monkeypatch: pytest.MonkeyPatch
):
    put_secret("rds/creds", {
        "username": "secret_user", "password": SECRET, "host": "secret-host", "port": 5439,
        "dbname": "dev", "engine": "redshift",
    })  # fmt: skip
    monkeypatch.setenv("RDS_HOST", "env-host")  # ignored when a secret name is given
    creds = RDSCredentials(aws_secrets_name="rds/creds", host="init-host")
    assert (creds.username, creds.host, creds.port, creds.database) == (
        "secret_user",
        "init-host",
        5439,
        "dev",
    )
    assert creds.password.get_secret_value() == SECRET
    assert SECRET not in repr(creds) and "rds/creds" not in repr(creds)

    core = CoreCredentials(aws_secrets_name="rds/creds", database="other")
    assert (core.host, core.port, core.database) == ("secret-host", 5439, "other")


def test_env_name_of_secret_does_not_trigger_a_lookup(aws: str, monkeypatch: pytest.MonkeyPatch):
    put_secret("rds/creds2", {"username": "u", "password": "p", "host": "h", "dbname": "d"})
    monkeypatch.setenv("RDS_AWS_SECRETS_NAME", "rds/creds2")
    with pytest.raises(Exception, match="username|password|host"):
        RDSCredentials()


def test_docdb_ssh_credentials_from_two_secrets(aws: str, monkeypatch: pytest.MonkeyPatch):
    put_secret("docdb", {"host": "docdb.cluster", "port": 27017, "username": "m",
                         "password": SECRET, "engine": "mongo", "admin_secrets": "x"})  # fmt: skip
    put_secret("ssh", {"host": "bastion", "username": "ec2-user", "password": "sshpw"})
    monkeypatch.setenv("DOC_DB_COLLECTION", "from_env")
    creds = DocumentDbSSHCredentials.from_secrets_manager("docdb", "ssh")
    assert (creds.host, creds.ssh_host, creds.ssh_username) == (
        "docdb.cluster",
        "bastion",
        "ec2-user",
    )
    assert creds.ssh_password.get_secret_value() == "sshpw"
    assert creds.collection == "from_env"
    assert SECRET not in repr(creds) and "sshpw" not in repr(creds)
