"""DocumentDbSSHClient through a real sshd to a SecantusDB (MongoDB wire) server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import paramiko
import pymongo
import pytest

from prefect_neurodata.clients.aind.document_db_ssh import (
    DocumentDbSSHClient,
    DocumentDbSSHCredentials,
)

MONGO_USER, MONGO_PASSWORD = "docdb_user", "docdb-Pa55word"


@pytest.fixture(scope="module")
def mongo_user(ssh_mongo: Any) -> str:
    """A SCRAM user on the server (created directly; the server runs without --auth)."""
    direct = pymongo.MongoClient(ssh_mongo.mongo_host, ssh_mongo.mongo_port, directConnection=True)
    try:
        admin = direct["admin"]
        existing = admin.command("usersInfo", MONGO_USER).get("users", [])
        if not existing:
            admin.command(
                "createUser", MONGO_USER, pwd=MONGO_PASSWORD, roles=["root"],
                mechanisms=["SCRAM-SHA-1", "SCRAM-SHA-256"],
            )  # fmt: skip
        collection = direct["metadata_index"]["data_assets"]
        collection.delete_many({})
        collection.insert_many([{"_id": f"id{i}", "name": f"asset_{i}"} for i in range(5)])
    finally:
        direct.close()
    return MONGO_USER


def credentials(ssh_mongo: Any, **overrides: Any) -> DocumentDbSSHCredentials:
    values: dict[str, Any] = {
        "host": ssh_mongo.mongo_host,
        "port": ssh_mongo.mongo_port,
        "username": MONGO_USER,
        "password": MONGO_PASSWORD,
        "ssh_host": ssh_mongo.ssh_host,
        "ssh_port": ssh_mongo.ssh_port,
        "ssh_username": ssh_mongo.ssh_username,
        "ssh_password": ssh_mongo.ssh_password,
        "ssh_local_bind_address": "127.0.0.1",
        "ssh_local_bind_port": 0,
    }
    values.update(overrides)
    return DocumentDbSSHCredentials(**values)


def server_host_key(ssh_mongo: Any) -> str:
    transport = paramiko.Transport((ssh_mongo.ssh_host, ssh_mongo.ssh_port))
    try:
        transport.start_client(timeout=10)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    finally:
        transport.close()


def test_password_auth_tunnel_reads_through_the_tunnel(ssh_mongo: Any, mongo_user: str):
    client = DocumentDbSSHClient(credentials(ssh_mongo))
    with client:
        names = sorted(d["name"] for d in client.collection.find({}, {"name": 1}))
        assert names == [f"asset_{i}" for i in range(5)]
        local_port = client._ssh_server.local_bind_port
        assert local_port != ssh_mongo.mongo_port
        # directConnection=True: the driver talks to the tunnel's end, not the real server.
        assert client._client.address == ("127.0.0.1", local_port)
    assert client._client is None and client._ssh_server is None


def test_key_auth_and_host_key_checking(ssh_mongo: Any, mongo_user: str, tmp_path: Path):
    host_key = server_host_key(ssh_mongo)
    creds = credentials(
        ssh_mongo, ssh_password=None, ssh_pkey=ssh_mongo.ssh_pkey_path, ssh_host_key=host_key
    )
    with DocumentDbSSHClient(creds) as client:
        assert client.collection.count_documents({}) == 5

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{ssh_mongo.ssh_host}]:{ssh_mongo.ssh_port} {host_key}\n")
    creds = credentials(ssh_mongo, ssh_known_hosts=str(known_hosts))
    with DocumentDbSSHClient(creds) as client:
        assert client.collection.find_one({"_id": "id3"})["name"] == "asset_3"


def test_wrong_host_key_is_refused(ssh_mongo: Any, mongo_user: str):
    other = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    if other is None:
        other_line = (
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        )
    else:
        other_line = f"{other.get_name()} {other.get_base64()}"
    creds = credentials(ssh_mongo, ssh_host_key=other_line)
    client = DocumentDbSSHClient(creds)
    with pytest.raises(Exception) as info:
        client.start()
    assert ssh_mongo.ssh_password not in str(info.value)
    assert client._ssh_server is None


def test_wrong_mongo_password_fails_without_leaking_it(ssh_mongo: Any, mongo_user: str):
    client = DocumentDbSSHClient(credentials(ssh_mongo, password="wrong-Pa55"))
    with pytest.raises(pymongo.errors.OperationFailure) as info:
        client.start()
    assert "wrong-Pa55" not in str(info.value)
    assert client._ssh_server is None  # the tunnel was stopped again
