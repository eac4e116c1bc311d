"""The CAVE credentials block: Prefect's block standards, validation, secrecy, its client."""

from __future__ import annotations

import pickle
from typing import Any
from urllib.parse import urlparse

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from prefect_neurodata.blocks import CaveCredentials
from prefect_neurodata.clients.cave.frameworkclient import CAVEclientFull, CAVEclientGlobal

TOKEN = "0123456789abcdef0123456789abcdef"


class TestCaveBlockAdheresToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return CaveCredentials

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        # The suite's own check downloads the logo; these machines are offline.
        url = urlparse(str(block._logo_url))
        assert url.scheme == "https" and url.netloc and url.path.endswith(".png")


def test_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="must include the scheme"):
        CaveCredentials(server_address="global.daf-apis.com")
    with pytest.raises(ValueError, match="three positive numbers"):
        CaveCredentials(desired_resolution=[4, 4])
    with pytest.raises(ValueError, match="greater than 0"):
        CaveCredentials(timeout=0)
    block = CaveCredentials(server_address="http://127.0.0.1:9/", timeout=5)
    assert block.server_address == "http://127.0.0.1:9"
    assert block.request_timeout == (5.0, 5.0)
    assert CaveCredentials(timeout=300).request_timeout == (10.0, 300.0)


def test_token_never_shows() -> None:
    block = CaveCredentials(token=TOKEN, datastack_name="ds")
    for text in (repr(block), str(block), block.model_dump_json(), str(block.model_dump())):
        assert TOKEN not in text
    restored = pickle.loads(pickle.dumps(block))  # what Dask does with task arguments
    assert restored.token.get_secret_value() == TOKEN


def test_global_client_without_datastack() -> None:
    client = CaveCredentials(server_address="http://127.0.0.1:9", token=TOKEN).get_client()
    assert isinstance(client, CAVEclientGlobal) and not isinstance(client, CAVEclientFull)
    assert client.auth.token == TOKEN
    assert client.server_address == "http://127.0.0.1:9"


def test_client_on_the_sandbox_uses_the_block_settings(sandbox: Any) -> None:
    env = sandbox.env
    block = CaveCredentials(
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        datastack_name=env["NEURODATA_CAVE_DATASTACK"],
        token=env["NEURODATA_CAVE_TOKEN"],
        timeout=42,
        pool_maxsize=3,
        desired_resolution=[1, 1, 1],
    )
    client = block.get_client()
    assert isinstance(client, CAVEclientFull)
    assert client.datastack_name == env["NEURODATA_CAVE_DATASTACK"]
    assert client.materialize.get_versions()
    for service in (client.info, client.materialize, client.annotation, client.chunkedgraph):
        assert service._http.timeout == (10.0, 42.0)
    assert client.materialize.desired_resolution == [1.0, 1.0, 1.0]
    pinned = block.get_client(version=min(client.materialize.get_versions()))
    assert pinned.materialize.version == min(client.materialize.get_versions())


def test_block_round_trips_through_the_server_without_leaking(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client

    CaveCredentials(server_address="http://127.0.0.1:9", token=TOKEN).save(
        "test-cave-roundtrip", overwrite=True
    )
    loaded = CaveCredentials.load("test-cave-roundtrip")
    assert loaded.token.get_secret_value() == TOKEN
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(
            "test-cave-roundtrip", "cave-credentials", include_secrets=False
        )
    assert TOKEN not in str(document.data)
