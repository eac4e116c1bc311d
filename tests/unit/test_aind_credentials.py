"""Credentials of the AIND clients: source precedence from arguments and the environment.

Secrets Manager sources are exercised against moto in tests/integration/test_aind_aws.py.
"""

from __future__ import annotations

import pydantic
import pytest
from pydantic import SecretStr

from prefect_neurodata.clients.aind.credentials import CoreCredentials
from prefect_neurodata.clients.aind.document_db_ssh import (
    DocumentDbSSHClient,
    DocumentDbSSHCredentials,
    _host_key,
)
from prefect_neurodata.clients.aind.rds_tables import Client, RDSCredentials

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.upper().startswith(("RDS_", "DOC_DB_")) or key.upper() in {
            "USERNAME",
            "PASSWORD",
            "HOST",
            "PORT",
            "DATABASE",
        }:
            monkeypatch.delenv(key)


def test_core_credentials_from_env_without_prefix(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("USERNAME", "envuser")
    monkeypatch.setenv("PASSWORD", SECRET)
    monkeypatch.setenv("HOST", "envhost")
    monkeypatch.setenv("PORT", "5439")
    creds = CoreCredentials(host="inithost")
    assert (creds.username, creds.host, creds.port) == ("envuser", "inithost", 5439)
    assert isinstance(creds.password, SecretStr)
    assert creds.password.get_secret_value() == SECRET
    assert SECRET not in repr(creds) and SECRET not in str(creds)


def test_core_credentials_forbid_extra_without_echoing_values():
    with pytest.raises(pydantic.ValidationError) as info:
        CoreCredentials(username="u", password=SECRET, host="h", port=1, passwrd=SECRET)
    assert SECRET not in str(info.value)
    assert "passwrd" in str(info.value)


def test_rds_credentials_env_prefix_aliases_and_dbname(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("USERNAME", "windows-user")  # a bare USERNAME must not win
    monkeypatch.setenv("RDS_USER", "rds_user")
    monkeypatch.setenv("RDS_PASSWORD", SECRET)
    monkeypatch.setenv("RDS_host", "rds-host")  # mixed case is honoured
    monkeypatch.setenv("RDS_DBNAME", "dev")
    creds = RDSCredentials()
    assert (creds.username, creds.host, creds.port, creds.database) == (
        "rds_user",
        "rds-host",
        5432,
        "dev",
    )
    monkeypatch.setenv("RDS_USERNAME", "rds_username")
    assert RDSCredentials().username == "rds_username"
    assert RDSCredentials(username="init").username == "init"
    assert RDSCredentials(database="prod").database == "prod"
    monkeypatch.delenv("RDS_DBNAME")
    with pytest.raises(pydantic.ValidationError, match="database or dbname"):
        RDSCredentials()


def test_rds_client_url_quotes_password_but_repr_hides_it():
    creds = RDSCredentials(username="u", password="p@ss/w:rd", host="h", database="dev")
    client = Client(creds)
    url = client._url
    assert url.render_as_string(hide_password=False) == "postgresql://u:p%40ss%2Fw%3Ard@h:5432/dev"
    assert "p@ss" not in repr(client) and "p@ss" not in str(url)


def test_docdb_ssh_credentials_defaults_and_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOC_DB_HOST", "docdb.cluster")
    monkeypatch.setenv("DOC_DB_USERNAME", "mongo")
    monkeypatch.setenv("DOC_DB_PASSWORD", SECRET)
    monkeypatch.setenv("DOC_DB_SSH_HOST", "bastion")
    monkeypatch.setenv("DOC_DB_SSH_USERNAME", "ec2-user")
    monkeypatch.setenv("DOC_DB_SSH_PASSWORD", SECRET)
    monkeypatch.setenv("DOC_DB_UNRELATED", "ignored")  # extra="ignore"
    creds = DocumentDbSSHCredentials()
    assert (creds.port, creds.database, creds.collection) == (
        27017,
        "metadata_index",
        "data_assets",
    )
    assert (creds.ssh_port, creds.ssh_local_bind_address) == (22, "localhost")
    assert SECRET not in repr(creds)
    assert SECRET not in repr(DocumentDbSSHClient(creds))


def test_docdb_ssh_credentials_need_password_or_key():
    base = dict(host="h", username="u", password="p", ssh_host="s", ssh_username="su")
    with pytest.raises(pydantic.ValidationError, match="ssh_password or ssh_pkey"):
        DocumentDbSSHCredentials(**base)
    assert DocumentDbSSHCredentials(**base, ssh_pkey="/k").ssh_password is None


def test_host_key_parsing():
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    base = dict(host="h", username="u", password="p", ssh_host="s", ssh_username="su",
                ssh_password="x")  # fmt: skip
    key = _host_key(DocumentDbSSHCredentials(**base, ssh_host_key=line))
    assert key.get_name() == "ssh-ed25519"
    key2 = _host_key(DocumentDbSSHCredentials(**base, ssh_host_key=f"[s]:2222 {line}"))
    assert key2 == key
    assert _host_key(DocumentDbSSHCredentials(**base)) is None
    with pytest.raises(ValueError, match="ssh_host_key"):
        _host_key(DocumentDbSSHCredentials(**base, ssh_host_key="garbage"))
