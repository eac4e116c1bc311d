"""Contract tests over real HTTP: the transport settings reach every CAVE subclient, and the
clients survive pickling and deep copies (Dask and multiprocessing pickle them) and keep
working against the sandbox afterwards.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from prefect_neurodata.clients.cave import CAVEclient, CAVEclientFull
from prefect_neurodata.clients.http import RetryPolicy, TransportConfig


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> None:
    """No real token file is read and the datastack map is written to a temporary HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def _client(env: dict[str, str], **kwargs: Any) -> CAVEclientFull:
    client = CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
        **kwargs,
    )
    assert isinstance(client, CAVEclientFull)
    return client


# One call per subclient that goes over the wire and returns something checkable.
CALLS: dict[str, Callable[[Any], Any]] = {
    "info": lambda c: c.info.get_datastacks(),
    "schema": lambda c: c.schema.get_schemas(),
    "state": lambda c: c.state.get_neuroglancer_info(),
    "chunkedgraph": lambda c: c.chunkedgraph.get_oldest_timestamp(),
    "materialize": lambda c: c.materialize.get_versions(),
    "annotation": lambda c: c.annotation.get_tables(),
    "l2cache": lambda c: c.l2cache.has_cache(),
}


@pytest.mark.parametrize("service", sorted(CALLS))
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_subclient_round_trips_and_still_works(sandbox: Any, service: str, how: str) -> None:
    client = _client(sandbox.env)
    call = CALLS[service]
    expected = call(client)
    subclient = getattr(client, service)
    if how == "pickle":
        copied_client = pickle.loads(pickle.dumps(client))
        copied_sub = pickle.loads(pickle.dumps(subclient))
    else:
        copied_client = copy.deepcopy(client)
        copied_sub = copy.deepcopy(subclient)
    assert call(copied_client) == expected
    assert type(copied_sub) is type(subclient)
    assert copied_sub.transport == subclient.transport
    holder = type("Holder", (), {service: copied_sub})()
    assert call(holder) == expected


def test_fresh_client_pickles_before_any_subclient_is_built(sandbox: Any) -> None:
    client = _client(sandbox.env)
    copied = pickle.loads(pickle.dumps(client))
    assert copied.datastack_name == client.datastack_name
    assert copied.materialize.get_versions() == client.materialize.get_versions()


def test_timeout_reaches_every_subclient(sandbox: Any) -> None:
    client = _client(sandbox.env, timeout=(3.0, 33.0), max_retries=1)
    for service, call in CALLS.items():
        call(client)
        subclient = getattr(client, service)
        assert subclient.transport.timeout == (3.0, 33.0), service
        assert subclient.transport.retry.max_retries == 1, service
    assert client.auth.get_user_cache()["id"] is not None


def test_transport_object_reaches_every_subclient(sandbox: Any) -> None:
    transport = TransportConfig(timeout=(2.0, 22.0), retry=RetryPolicy(max_retries=0))
    client = _client(sandbox.env, transport=transport, max_retries=None, pool_maxsize=4)
    for service, call in CALLS.items():
        call(client)
        subclient = getattr(client, service)
        assert subclient.transport.timeout == (2.0, 22.0), service
        assert subclient.transport.retry.max_retries == 0, service
        assert subclient.transport.pool_maxsize == 4, service


def test_auth_client_speaks_the_permission_endpoints(sandbox: Any) -> None:
    client = _client(sandbox.env)
    datastack = sandbox.env["NEURODATA_CAVE_DATASTACK"]
    dataset = client.auth.get_table_dataset(datastack)
    me = client.auth.get_user_cache()
    assert isinstance(dataset, str) and dataset
    assert dataset in me["permissions_v2"]
