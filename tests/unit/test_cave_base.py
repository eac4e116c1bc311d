"""CAVE base plumbing: negotiation, auth on the wire, error mapping, retries, version guards."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import re

import numpy as np
import pytest
import requests

from prefect_neurodata.clients.cave import (
    AuthException,
    ServerIncompatibilityError,
    get_session_defaults,
    set_session_defaults,
)
from prefect_neurodata.clients.cave import endpoints as ep
from prefect_neurodata.clients.cave.annotationengine import AnnotationClient
from prefect_neurodata.clients.cave.base import (
    SHARED_ARGS_DOC,
    AuthorizationError,
    BaseEncoder,
    ClientBase,
    ClientBaseWithDatastack,
    _api_endpoints,
    _check_version_compatibility,
    handle_response,
)
from prefect_neurodata.clients.cave.chunkedgraph import ChunkedGraphClient, ChunkedGraphClientV1
from prefect_neurodata.clients.cave.emannotationschemas import SchemaClient, SchemaClientLegacy
from prefect_neurodata.clients.cave.infoservice import InfoServiceClient, InfoServiceClientV2
from prefect_neurodata.clients.cave.jsonservice import JSONService, JSONServiceV1
from prefect_neurodata.clients.cave.l2cache import L2CacheClient, L2CacheClientLegacy
from prefect_neurodata.clients.cave.materializationengine import MaterializationClient
from prefect_neurodata.clients.cave.session_config import patch_session, retry_policy
from prefect_neurodata.clients.http import RetryPolicy, ServiceError, TransportConfig
from tests.cave_helpers import (
    LOCAL,
    TOKEN,
    assert_auth,
)

pytestmark = pytest.mark.usefixtures("cave_fast_retries", "cave_home")

KEY = "cg_server_address"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Guarded(ClientBase):
    @_check_version_compatibility(method_constraint=">=2.15.0")
    def needs_new(self) -> str:
        return self._json("GET", self._url("info", table_id="t"))

    @_check_version_compatibility(kwarg_use_constraints={"bounds": ">=9.0"})
    def kw_guarded(self, bounds=None) -> str:
        return self._json("GET", self._url("info", table_id="t"))

    @_check_version_compatibility(method_api_constraint=">=3")
    def api_guarded(self) -> str:
        return "ran"


def make_client(cls=ClientBase, auth=AUTH, **kwargs) -> ClientBase:
    endpoints = {**ep.chunkedgraph_endpoints_common, **ep.chunkedgraph_endpoints_v1}
    return cls(LOCAL, auth, 1, endpoints, KEY, **kwargs)


# -- negotiation ---------------------------------------------------------------------------------


def test_api_endpoints_picks_highest_common_version(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/api/versions", json=[0, 1, 7])
    endpoints, version = _api_endpoints(
        "latest",
        KEY,
        LOCAL,
        ep.chunkedgraph_endpoints_common,
        ep.chunkedgraph_api_versions,
        AUTH,
    )
    assert version == 1
    assert endpoints["get_roots"] == ep.chunkedgraph_endpoints_v1["get_roots"]
    assert endpoints["get_version"] == ep.chunkedgraph_endpoints_common["get_version"]
    assert_auth(cave_rsps.calls[0])


def _materialization_version() -> int:
    """The materialization API version `_api_endpoints` picks (no retries, fallback 2)."""
    _, version = _api_endpoints(
        "latest",
        "me_server_address",
        LOCAL,
        ep.materialization_common,
        ep.materialization_api_versions,
        AUTH,
        fallback_version=2,
        transport=TransportConfig(retry=RetryPolicy(max_retries=0)),
    )
    return version


def test_api_endpoints_falls_back_when_server_cannot_say(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/materialize/api/versions", status=404, json={"message": "nope"})
    assert _materialization_version() == 2


@pytest.mark.parametrize("status", [500, 503])
def test_api_endpoints_raises_a_transient_failure_instead_of_falling_back(
    cave_rsps, status: int
) -> None:
    # A 5xx that outlasted the retries is an outage, not "this server has no version list":
    # falling back to API 2 built a V2 client that failed later (no get_tables_metadata).
    cave_rsps.get(f"{LOCAL}/materialize/api/versions", status=status, json={"message": "down"})
    with pytest.raises(requests.HTTPError) as raised:
        _materialization_version()
    assert raised.value.response is not None and raised.value.response.status_code == status


def test_api_endpoints_without_common_version_raises(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/api/versions", json=[5])
    with pytest.raises(ValueError, match="no API version in common"):
        _api_endpoints(
            "latest", KEY, LOCAL, ep.chunkedgraph_endpoints_common, ep.chunkedgraph_api_versions, {}
        )


def test_api_endpoints_explicit_unknown_version_raises() -> None:
    with pytest.raises(ValueError, match="api_version=9"):
        _api_endpoints(9, KEY, LOCAL, {}, ep.chunkedgraph_api_versions, {})


# -- requests ------------------------------------------------------------------------------------


def test_request_sends_bearer_and_cookie_and_keeps_big_ints_exact(cave_rsps) -> None:
    big = 2**63 + 12345
    cave_rsps.get(f"{LOCAL}/segmentation/table/t/info", body=f'{{"root_id": {big}}}')
    client = make_client()
    answer = client._json("GET", client._url("info", table_id="t"))
    assert answer["root_id"] == big
    assert_auth(cave_rsps.calls[0])


def test_no_token_sends_neither_header_nor_cookie(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/table/t/info", json={})
    client = make_client(auth={})
    client._json("GET", client._url("info", table_id="t"))
    headers = cave_rsps.calls[0].request.headers
    assert "Authorization" not in headers
    assert "middle_auth_token" not in headers.get("Cookie", "")


def test_server_error_carries_server_message(cave_rsps) -> None:
    cave_rsps.get(
        f"{LOCAL}/segmentation/table/t/info",
        status=500,
        json={"code": 500, "message": "table exploded", "traceback": []},
    )
    client = make_client()
    with pytest.raises(ServiceError) as info:
        client._json("GET", client._url("info", table_id="t"))
    assert info.value.status_code == 500
    assert info.value.server_message == "table exploded"
    assert isinstance(info.value, requests.HTTPError)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"error": "no_token", "message": "Unauthorized - No Token Provided"}, "no token"),
        (401, {"error": "invalid_token", "message": "Token is Invalid"}, "invalid or expired"),
        (
            403,
            {"error": "missing_permission", "message": "Missing permission: view for dataset X"},
            "lacks the permission",
        ),
        (
            403,
            {
                "error": "missing_tos",
                "message": "Need to accept Terms of Service",
                "data": {"tos_form_url": "https://auth.test/api/v1/tos/3/accept"},
            },
            "https://auth.test/api/v1/tos/3/accept",
        ),
    ],
)
def test_auth_errors_are_clear_and_never_show_the_token(cave_rsps, status, body, expected) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/table/t/info", status=status, json=body)
    client = make_client()
    with pytest.raises(AuthorizationError) as info:
        client._json("GET", client._url("info", table_id="t"))
    error = info.value
    assert isinstance(error, AuthException)
    assert isinstance(error, requests.HTTPError)
    assert error.status_code == status
    assert error.error_code == body["error"]
    assert expected in str(error)
    assert TOKEN not in str(error) and TOKEN not in repr(error)
    assert len(cave_rsps.calls) == 1  # auth errors are not retried


def test_redirect_to_login_is_an_auth_exception_and_not_followed(cave_rsps) -> None:
    cave_rsps.get(
        f"{LOCAL}/segmentation/table/t/info",
        status=302,
        headers={"Location": "https://auth.test/api/v1/authorize?redirect=x"},
    )
    client = make_client()
    with pytest.raises(AuthException, match="redirected to https://auth.test/api/v1/authorize"):
        client._json("GET", client._url("info", table_id="t"))
    assert len(cave_rsps.calls) == 1
    assert TOKEN not in str(cave_rsps.calls[0].request.url)


def test_handle_response_checks_history_and_logs_warning(cave_rsps, caplog) -> None:
    cave_rsps.get(f"{LOCAL}/x", json={"a": 1}, headers={"Warning": "Table Owner Notice: careful"})
    response = requests.get(f"{LOCAL}/x")
    with caplog.at_level(logging.WARNING):
        assert handle_response(response) == {"a": 1}
    assert "Table Owner Notice: careful" in caplog.text
    response.history = [response]
    with pytest.raises(AuthException):
        handle_response(response)


# -- retries -------------------------------------------------------------------------------------


def test_get_is_retried_on_503_and_429(cave_rsps) -> None:
    url = f"{LOCAL}/segmentation/table/t/info"
    cave_rsps.get(url, status=503)
    cave_rsps.get(url, status=429, headers={"Retry-After": "0"})
    cave_rsps.get(url, json={"ok": True})
    client = make_client()
    assert client._json("GET", url) == {"ok": True}
    assert len(cave_rsps.calls) == 3


def test_non_idempotent_post_is_not_retried_on_503(cave_rsps) -> None:
    url = f"{LOCAL}/segmentation/api/v1/table/t/merge"
    cave_rsps.post(url, status=503)
    cave_rsps.post(url, json={"operation_id": 1})
    client = make_client()
    with pytest.raises(ServiceError) as info:
        client._json("POST", url, json=[[1, 2, 3, 4]])
    assert info.value.status_code == 503
    assert len(cave_rsps.calls) == 1


def test_idempotent_post_is_retried(cave_rsps) -> None:
    url = f"{LOCAL}/segmentation/api/v1/table/t/is_latest_roots"
    cave_rsps.post(url, status=502)
    cave_rsps.post(url, json={"is_latest": [True]})
    client = make_client()
    assert client._json("POST", url, json={"node_ids": [1]}, idempotent=True)["is_latest"] == [True]
    assert len(cave_rsps.calls) == 2


def test_max_retries_zero_disables_retries(cave_rsps) -> None:
    url = f"{LOCAL}/segmentation/table/t/info"
    cave_rsps.get(url, status=503)
    client = make_client(max_retries=0)
    with pytest.raises(ServiceError):
        client._json("GET", url)
    assert len(cave_rsps.calls) == 1


# -- version guards ------------------------------------------------------------------------------


def test_version_guard_raises_before_the_guarded_request(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/api/version", json="2.10.0")
    guarded = cave_rsps.get(f"{LOCAL}/segmentation/table/t/info", json={})
    client = make_client(Guarded)
    with pytest.raises(ServerIncompatibilityError, match=">=2.15.0"):
        client.needs_new()
    assert guarded.call_count == 0
    assert str(client.server_version) == "2.10.0"


def test_version_guard_passes_for_new_server(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/api/version", json="2.21.1")
    cave_rsps.get(f"{LOCAL}/segmentation/table/t/info", json={"ok": 1})
    assert make_client(Guarded).needs_new() == {"ok": 1}


def test_unknown_server_version_fails_every_constraint(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/api/version", status=404)
    guarded = cave_rsps.get(f"{LOCAL}/segmentation/table/t/info", json={})
    client = make_client(Guarded)
    with pytest.raises(ServerIncompatibilityError, match="unknown version"):
        client.needs_new()
    assert client.server_version is None
    assert guarded.call_count == 0


def test_kwarg_guard_only_when_kwarg_is_used(cave_rsps) -> None:
    cave_rsps.get(f"{LOCAL}/segmentation/api/version", json="2.21.1")
    cave_rsps.get(f"{LOCAL}/segmentation/table/t/info", json={"ok": 1})
    client = make_client(Guarded)
    assert client.kw_guarded() == {"ok": 1}
    with pytest.raises(ServerIncompatibilityError, match="bounds="):
        client.kw_guarded(bounds=[[0, 1], [0, 1], [0, 1]])


def test_api_version_guard() -> None:
    client = make_client(Guarded)
    with pytest.raises(ServerIncompatibilityError, match="API version >=3"):
        client.api_guarded()


# -- misc ----------------------------------------------------------------------------------------


def test_client_properties_and_repr_hide_token() -> None:
    client = make_client(ClientBaseWithDatastack, datastack_name="ds")
    assert client.server_address == LOCAL
    assert client.api_version == 1
    assert client.datastack_name == "ds"
    assert client.default_url_mapping == {KEY: LOCAL}
    assert client.fc is None
    assert TOKEN not in repr(client)
    assert client.session.headers["Authorization"] == f"Bearer {TOKEN}"


def test_base_encoder_handles_numpy_sets_and_datetimes() -> None:
    value = {
        "ids": np.array([2**63 + 1], dtype=np.uint64),
        "n": np.int64(3),
        "s": {1},
        "t": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
    }
    decoded = json.loads(json.dumps(value, cls=BaseEncoder))
    assert decoded == {"ids": [2**63 + 1], "n": 3, "s": [1], "t": "2024-01-02T03:04:05+00:00"}


def test_session_defaults_roundtrip_and_validation() -> None:
    saved = get_session_defaults()
    try:
        set_session_defaults(max_retries=7, pool_maxsize=3)
        assert get_session_defaults()["max_retries"] == 7
        policy = retry_policy()
        assert policy.max_retries == 7
        assert 429 in policy.statuses and 503 in policy.statuses
        with pytest.raises(ValueError, match="max_retries"):
            set_session_defaults(max_retries=-1)
    finally:
        set_session_defaults(**saved)


def test_patch_session_mounts_pool_without_urllib3_retries() -> None:
    session = requests.Session()
    patch_session(session, max_retries=4, pool_maxsize=17, pool_block=True)
    adapter = session.get_adapter("https://x.test")
    assert adapter._pool_maxsize == 17
    assert adapter._pool_block is True
    assert adapter.max_retries.total == 0


def _documented_args(doc: str | None) -> list[str]:
    """The names in the ``Args:`` section of a docstring, in their order."""
    lines = inspect.cleandoc(doc or "").splitlines()
    start = lines.index("Args:") + 1
    names = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        match = re.match(r"^    (\w+)( \(.*\))?:", line)
        if match:
            names.append(match.group(1))
    return names


@pytest.mark.parametrize(
    "documented",
    [
        JSONService,
        SchemaClient,
        L2CacheClient,
        InfoServiceClient,
        AnnotationClient,
        ChunkedGraphClient,
        MaterializationClient,
        ClientBase,
        ChunkedGraphClientV1,
    ],
    ids=lambda obj: obj.__name__,
)
def test_help_describes_every_argument_in_signature_order(documented) -> None:
    # The shared arguments are written once (SHARED_ARGS_DOC) and composed into each docstring.
    expected = list(inspect.signature(documented).parameters)
    assert _documented_args(documented.__doc__) == expected
    assert SHARED_ARGS_DOC["transport"][:40] in " ".join(documented.__doc__.split())


@pytest.mark.parametrize(
    ("cls", "extra"),
    [
        (ClientBaseWithDatastack, ("stack",)),
        (JSONServiceV1, (None,)),
        (SchemaClientLegacy, ()),
        (L2CacheClientLegacy, ("test_v1",)),
        (InfoServiceClientV2, ("stack",)),
        (ChunkedGraphClientV1, ()),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_seed_transport_arguments_of_a_subclient_override_its_transport(cls, extra) -> None:
    base = TransportConfig(timeout=(1.5, 7.0), pool_maxsize=4, verify="/ca.pem")
    seed = (LOCAL, AUTH, 1, {}, KEY, *extra)
    kwargs = {"max_retries": 0, "pool_maxsize": 2, "pool_block": True, "transport": base}
    client = cls(*seed, **kwargs)
    transport = client.transport
    assert transport.retry.max_retries == 0
    assert (transport.pool_maxsize, transport.pool_block) == (2, True)
    assert transport.timeout == (1.5, 7.0)
    assert transport.verify == "/ca.pem"
    assert client.session.headers["Authorization"] == AUTH["Authorization"]
