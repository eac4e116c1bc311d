"""Unit tests of the CAVE stand-in's auth emulation (in-process ASGI, no sockets)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from prefect_neurodata.sandbox.cave.app import build_fastapi
from prefect_neurodata.sandbox.cave.auth import AuthRegistry, User
from prefect_neurodata.sandbox.cave.world import CaveConfig, CaveWorld

CFG = CaveConfig(db_url="sqlite://")


def test_registry_permissions() -> None:
    reg = AuthRegistry(CFG)
    ds = CFG.auth_dataset
    levels = {
        name: [reg.user_for_token(getattr(CFG, f"{name}_token")).has(ds, lvl)  # type: ignore[union-attr]
               for lvl in ("view", "edit", "admin")]
        for name in ("admin", "user", "viewer", "noperm", "tos")
    }  # fmt: skip
    assert levels == {
        "admin": [True, True, True],
        "user": [True, True, False],
        "viewer": [True, False, False],
        "noperm": [False, False, False],
        "tos": [False, False, False],
    }
    assert reg.user_for_token("0" * 32) is None
    assert reg.dataset_for(CFG.pcg_table) == reg.dataset_for(CFG.datastack) == ds
    assert reg.dataset_for("unknown") is None
    blob = reg.user_by_id(5).cache_blob()  # type: ignore[union-attr]
    assert blob["missing_tos"][0]["dataset_name"] == ds


def test_env_config_reads_tokens_and_urls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {
        "NEURODATA_SANDBOX_CAVE_WORKDIR": str(tmp_path),
        "NEURODATA_SANDBOX_CAVE_USER_TOKEN": "1" * 32,
        "NEURODATA_SANDBOX_CAVE_GLOBAL_URL": "http://127.0.0.1:1/",
        "NEURODATA_SANDBOX_CAVE_AUTH_DISABLED": "true",
    }
    cfg = CaveConfig.from_env(env)
    assert cfg.user_token == "1" * 32
    assert cfg.global_url == "http://127.0.0.1:1"
    assert cfg.db_url == f"sqlite:///{(tmp_path / 'cave.sqlite').resolve()}"
    assert cfg.auth_disabled is True
    assert CaveConfig.from_env({"NEURODATA_SANDBOX_CAVE_DB_URL": "postgresql://x/y"}).db_url == (
        "postgresql://x/y"
    )


def test_auth_disabled_mode_runs_as_admin_user_zero() -> None:
    world = CaveWorld(CaveConfig(db_url="sqlite://", auth_disabled=True))
    client = TestClient(build_fastapi(world))
    r = client.get("/auth/api/v1/user/cache")
    assert r.status_code == 200
    assert r.json()["id"] == 0 and r.json()["name"] == "AUTH_DISABLED" and r.json()["admin"]


def test_token_sources_and_errors_in_process() -> None:
    client = TestClient(build_fastapi(CaveWorld(CFG)))
    url = "/auth/api/v1/user/cache"
    assert (
        client.get(url, headers={"Authorization": f"Bearer {CFG.viewer_token}"}).json()["name"]
        == "viewer"
    )
    assert client.get(url, params={"middle_auth_token": CFG.user_token}).json()["id"] == 2
    client.cookies.set("middle_auth_token", CFG.admin_token)
    assert client.get(url).json()["admin"] is True
    client.cookies.clear()
    # header beats query beats cookie
    r = client.get(url, params={"middle_auth_token": CFG.user_token},
                   headers={"Authorization": f"Bearer {CFG.viewer_token}"})  # fmt: skip
    assert r.json()["name"] == "viewer"
    r = client.get(url, headers={"X-Requested-With": "XMLHttpRequest"})
    assert r.status_code == 401 and r.json()["error"] == "no_token"
    r = client.get(url, follow_redirects=False)
    assert r.status_code == 302 and "authorize?redirect=" in r.headers["location"]
    user = User(9, "x", "x@y", "t", permissions={"d": {"view"}})
    assert user.has("d", "view") and not user.has("d", "edit") and not user.has("e", "view")


def test_seed_request_is_validated_before_any_work() -> None:
    world = CaveWorld(CFG)
    client = TestClient(build_fastapi(world))
    r = client.post("/__sandbox__/seed", json={"neurons": 1})
    assert r.status_code == 400 and "'neurons'" in r.json()["message"]
    r = client.post("/__sandbox__/seed", json={"synapses": "many"})
    assert r.status_code == 400 and "'synapses'" in r.json()["message"]
    r = client.post("/__sandbox__/seed", json={"colour": "red"})
    assert r.status_code == 400 and "'colour'" in r.json()["message"]
    assert world.chunkedgraph is None
    r = client.get(f"/segmentation/api/v1/table/{CFG.pcg_table}/node/1/root",
                   headers={"Authorization": f"Bearer {CFG.user_token}"})  # fmt: skip
    assert r.status_code == 503 and "seed" in r.json()["message"]
