"""CAVEclient: global vs full, info lookup and caching, lazy subclients, server map, auth."""

from __future__ import annotations

import json
import stat

import pytest

from prefect_neurodata.clients.cave import (
    CAVEclient,
    CAVEclientFull,
    CAVEclientGlobal,
    GlobalClientError,
)
from prefect_neurodata.clients.cave.chunkedgraph import ChunkedGraphClientV1
from prefect_neurodata.clients.cave.emannotationschemas import SchemaClientLegacy
from prefect_neurodata.clients.cave.infoservice import InfoServiceClientV2
from prefect_neurodata.clients.cave.jsonservice import JSONServiceV1
from prefect_neurodata.clients.cave.l2cache import L2CacheClientLegacy
from tests.cave_helpers import (
    AV,
    DATASTACK,
    GLOBAL,
    INFO_RECORD,
    LOCAL,
    TABLE,
    TOKEN,
    add_cg_handshake,
    add_info,
    assert_auth,
    path,
)

pytestmark = pytest.mark.usefixtures("cave_fast_retries", "cave_home")

OTHER = "fedcba9876543210fedcba9876543210"


def test_no_datastack_gives_a_global_client_without_requests(cave_rsps) -> None:
    client = CAVEclient(server_address=GLOBAL, auth_token=TOKEN)
    assert type(client) is CAVEclientGlobal
    assert client.datastack_name is None
    assert client.server_address == GLOBAL
    assert len(cave_rsps.calls) == 0
    for name in ("chunkedgraph", "annotation", "materialize", "l2cache"):
        with pytest.raises(GlobalClientError, match="needs a datastack"):
            getattr(client, name)


def test_global_only_with_datastack(cave_rsps) -> None:
    client = CAVEclient(DATASTACK, server_address=GLOBAL, global_only=True, auth_token=TOKEN)
    assert type(client) is CAVEclientGlobal


def test_full_client_looks_up_datastack_once_and_subclients_are_lazy(cave_rsps) -> None:
    add_info(cave_rsps)
    client = CAVEclient(DATASTACK, server_address=GLOBAL, auth_token=TOKEN)
    assert isinstance(client, CAVEclientFull)
    assert client.datastack_name == DATASTACK
    assert client.local_server == LOCAL
    assert client.auth.local_server == LOCAL
    assert [path(c) for c in cave_rsps.calls] == [
        f"{GLOBAL}/info/api/v2/datastack/full/{DATASTACK}"
    ]
    assert_auth(cave_rsps.calls[0])
    assert isinstance(client.info, InfoServiceClientV2)
    assert client.info.aligned_volume_name == AV
    assert client.info.info_cache[DATASTACK]["local_server"] == LOCAL
    assert len(cave_rsps.calls) == 1

    add_cg_handshake(cave_rsps)
    cg = client.chunkedgraph
    assert isinstance(cg, ChunkedGraphClientV1)
    assert cg.table_name == TABLE
    assert cg.server_address == LOCAL
    assert cg.fc is client
    assert client.chunkedgraph is cg
    # The chunkedgraph negotiates its API version and reads the server version at
    # construction as caveclient 5.25 does (its version-guarded arguments need it); the two
    # questions go out together, so they may land in either order.
    assert sorted(path(c) for c in cave_rsps.calls[-2:]) == [
        f"{LOCAL}/segmentation/api/version",
        f"{LOCAL}/segmentation/api/versions",
    ]


def test_info_cache_skips_the_lookup(cave_rsps) -> None:
    client = CAVEclient(
        DATASTACK,
        server_address=GLOBAL,
        auth_token=TOKEN,
        info_cache={DATASTACK: INFO_RECORD},
        write_server_cache=False,
    )
    assert client.local_server == LOCAL
    assert client.info.segmentation_source() == INFO_RECORD["segmentation_source"]
    assert len(cave_rsps.calls) == 0


def test_unknown_datastack_is_a_clear_error(cave_rsps) -> None:
    cave_rsps.get(
        f"{GLOBAL}/info/api/v2/datastack/full/nope", status=404, json={"message": "not found"}
    )
    with pytest.raises(ValueError, match="datastack 'nope' is not known"):
        CAVEclient("nope", server_address=GLOBAL, auth_token=TOKEN)


def test_http_hosts_are_accepted(cave_rsps) -> None:
    server = "http://127.0.0.1:8123"
    local = "http://127.0.0.1:8124"
    record = {**INFO_RECORD, "local_server": local}
    cave_rsps.get(f"{server}/info/api/v2/datastack/full/{DATASTACK}", json=record)
    client = CAVEclient(DATASTACK, server_address=server, auth_token=TOKEN)
    assert client.server_address == server
    assert client.local_server == local


def test_server_map_written_private_and_used(cave_rsps, cave_home) -> None:
    add_info(cave_rsps)
    CAVEclient(DATASTACK, server_address=GLOBAL, auth_token=TOKEN)
    map_file = cave_home / ".cloudvolume" / "secrets" / "cave_datastack_to_server_map.json"
    assert json.loads(map_file.read_text()) == {DATASTACK: GLOBAL}
    assert stat.S_IMODE(map_file.stat().st_mode) == 0o600
    client = CAVEclient(DATASTACK, auth_token=TOKEN)
    assert client.server_address == GLOBAL


def test_server_map_not_written_when_disabled(cave_rsps, cave_home) -> None:
    add_info(cave_rsps)
    CAVEclient(DATASTACK, server_address=GLOBAL, auth_token=TOKEN, write_server_cache=False)
    assert not (
        cave_home / ".cloudvolume" / "secrets" / "cave_datastack_to_server_map.json"
    ).exists()


def test_default_server_when_nothing_is_known() -> None:
    client = CAVEclient(auth_token=TOKEN)
    assert client.server_address == "https://global.daf-apis.com"


def test_token_from_server_file_is_used(cave_rsps, cave_home) -> None:
    folder = cave_home / ".cloudvolume" / "secrets"
    folder.mkdir(parents=True)
    (folder / "global.test-cave-secret.json").write_text(json.dumps({"token": TOKEN}))
    add_info(cave_rsps)
    CAVEclient(DATASTACK, server_address=GLOBAL, write_server_cache=False)
    assert_auth(cave_rsps.calls[0])


def test_change_auth_resets_subclients(cave_rsps) -> None:
    add_info(cave_rsps)
    client = CAVEclient(DATASTACK, server_address=GLOBAL, auth_token=TOKEN)
    add_cg_handshake(cave_rsps)
    first = client.chunkedgraph
    client.change_auth(auth_token=OTHER)
    assert client.auth.token == OTHER
    assert client.auth.local_server == LOCAL
    second = client.chunkedgraph
    assert second is not first
    assert second.session.headers["Authorization"] == f"Bearer {OTHER}"
    assert TOKEN not in repr(client) and OTHER not in repr(client)


def test_global_services_are_wired(cave_rsps) -> None:
    add_info(cave_rsps)
    cave_rsps.get(f"{GLOBAL}/schema/versions", json=[2])
    client = CAVEclient(DATASTACK, server_address=GLOBAL, auth_token=TOKEN)
    assert isinstance(client.schema, SchemaClientLegacy)
    assert client.schema.api_version == 2
    state = client.state
    assert isinstance(state, JSONServiceV1)
    assert state.ngl_url == INFO_RECORD["viewer_site"]
    assert state.server_address == GLOBAL
    l2 = client.l2cache
    assert isinstance(l2, L2CacheClientLegacy)
    assert l2.default_url_mapping["table_id"] == TABLE


def test_materialize_and_annotation_are_created_with_datastack_and_aligned_volume(
    cave_rsps,
) -> None:
    add_info(cave_rsps)
    cave_rsps.get(f"{LOCAL}/materialize/api/versions", json=[2, 3])
    client = CAVEclient(
        DATASTACK, server_address=GLOBAL, auth_token=TOKEN, desired_resolution=[1, 1, 1]
    )
    mat = client.materialize
    assert mat.datastack_name == DATASTACK
    assert mat.api_version == 3
    assert mat.server_address == LOCAL
    assert mat.fc is client
    ann = client.annotation
    assert ann.aligned_volume_name == AV
    assert ann.server_address == LOCAL
    assert client.desired_resolution == [1, 1, 1]
