"""The real backends start and answer: a failure here explains failures elsewhere."""

from __future__ import annotations

import pymongo
import sqlalchemy as sa
from sshtunnel import SSHTunnelForwarder

from tests.fixtures.backends import SshMongo


def test_postgres_answers(postgres_url: str):
    engine = sa.create_engine(postgres_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("select 40 + 2")).scalar_one() == 42
    engine.dispose()


def test_mongo_is_reachable_through_the_ssh_tunnel(ssh_mongo: SshMongo):
    with SSHTunnelForwarder(
        (ssh_mongo.ssh_host, ssh_mongo.ssh_port),
        ssh_username=ssh_mongo.ssh_username,
        ssh_pkey=ssh_mongo.ssh_pkey_path,
        remote_bind_address=(ssh_mongo.mongo_host, ssh_mongo.mongo_port),
        local_bind_address=("127.0.0.1", 0),
        allow_agent=False,
        host_pkey_directories=[],
    ) as tunnel:
        client = pymongo.MongoClient(
            "127.0.0.1",
            tunnel.local_bind_port,
            directConnection=True,
            serverSelectionTimeoutMS=5000,
        )
        client.test.items.insert_one({"_id": "a", "n": 1})
        assert client.test.items.find_one({"_id": "a"}) == {"_id": "a", "n": 1}
        assert client.address == ("127.0.0.1", tunnel.local_bind_port)
        client.close()
