"""AuthClient: token file lookup order, 0600 writes, requests and secrecy."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from prefect_neurodata.clients.cave.auth import AuthClient, write_token
from prefect_neurodata.clients.cave.base import AuthorizationError
from tests.cave_helpers import (
    GLOBAL,
    TOKEN,
    assert_auth,
    query,
)

pytestmark = pytest.mark.usefixtures("cave_fast_retries", "cave_home")

OTHER = "fedcba9876543210fedcba9876543210"
THIRD = "00000000000000000000000000000003"


def secrets(home: Path) -> Path:
    return home / ".cloudvolume" / "secrets"


def put(home: Path, name: str, data: dict) -> Path:
    folder = secrets(home)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_text(json.dumps(data))
    return target


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_server_specific_file_beats_default_file(cave_home) -> None:
    put(cave_home, "global.test-cave-secret.json", {"token": TOKEN})
    put(cave_home, "cave-secret.json", {"token": OTHER})
    auth = AuthClient(server_address=GLOBAL)
    assert auth.token == TOKEN
    assert auth.token_file.endswith("global.test-cave-secret.json")


def test_server_file_includes_the_port(cave_home) -> None:
    put(cave_home, "127.0.0.1:8123-cave-secret.json", {"token": TOKEN})
    put(cave_home, "cave-secret.json", {"token": OTHER})
    assert AuthClient(server_address="http://127.0.0.1:8123").token == TOKEN


def test_default_file_beats_deprecated_file(cave_home) -> None:
    put(cave_home, "cave-secret.json", {"token": OTHER})
    put(cave_home, "chunkedgraph-secret.json", {"token": THIRD})
    assert AuthClient(server_address=GLOBAL).token == OTHER


def test_deprecated_file_is_used_with_a_warning(cave_home, caplog) -> None:
    put(cave_home, "chunkedgraph-secret.json", {"token": THIRD})
    with caplog.at_level(logging.WARNING):
        auth = AuthClient(server_address=GLOBAL)
    assert auth.token == THIRD
    assert "deprecated" in caplog.text
    assert THIRD not in caplog.text


def test_explicit_token_beats_files_and_token_key_is_honoured(cave_home) -> None:
    put(cave_home, "cave-secret.json", {"token": OTHER, "alt": THIRD})
    assert AuthClient(token=TOKEN, server_address=GLOBAL).token == TOKEN
    assert AuthClient(token_key="alt", server_address=GLOBAL).token == THIRD


def test_explicit_token_file_is_the_only_file_read(cave_home) -> None:
    put(cave_home, "cave-secret.json", {"token": OTHER})
    custom = put(cave_home, "mine.json", {"token": TOKEN})
    assert AuthClient(token_file=str(custom), server_address=GLOBAL).token == TOKEN
    missing = AuthClient(token_file=str(secrets(cave_home) / "none.json"), server_address=GLOBAL)
    assert missing.token is None
    assert missing.request_header == {}


def test_no_files_means_no_token(cave_home) -> None:
    auth = AuthClient(server_address=GLOBAL)
    assert auth.token is None
    assert auth.request_header == {}


def test_malformed_token_file_is_a_clear_error(cave_home) -> None:
    folder = secrets(cave_home)
    folder.mkdir(parents=True)
    (folder / "cave-secret.json").write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AuthClient(server_address=GLOBAL)


def test_save_token_writes_private_files_for_default_global_and_local(cave_home) -> None:
    auth = AuthClient(server_address=GLOBAL)
    auth.local_server = "http://127.0.0.1:9000"
    auth.save_token(TOKEN)
    folder = secrets(cave_home)
    written = sorted(p.name for p in folder.iterdir())
    assert written == [
        "127.0.0.1:9000-cave-secret.json",
        "cave-secret.json",
        "global.test-cave-secret.json",
    ]
    for name in written:
        assert mode(folder / name) == 0o600
        assert json.loads((folder / name).read_text()) == {"token": TOKEN}
    assert mode(folder) == 0o700
    assert auth.token == TOKEN
    assert AuthClient(server_address=GLOBAL).token == TOKEN


def test_save_token_refuses_to_overwrite_and_writes_nothing(cave_home) -> None:
    put(cave_home, "global.test-cave-secret.json", {"token": OTHER})
    auth = AuthClient(server_address=GLOBAL)
    with pytest.raises(ValueError, match="overwrite=True"):
        auth.save_token(TOKEN)
    assert not (secrets(cave_home) / "cave-secret.json").exists()
    assert auth.token == OTHER
    auth.save_token(TOKEN, overwrite=True)
    assert AuthClient(server_address=GLOBAL).token == TOKEN


def test_write_token_keeps_other_keys_and_fixes_mode(cave_home) -> None:
    target = put(cave_home, "x.json", {"other": "keep", "token": OTHER})
    target.chmod(0o644)
    write_token(TOKEN, str(target), "token", overwrite=True)
    assert json.loads(target.read_text()) == {"other": "keep", "token": TOKEN}
    assert mode(target) == 0o600
    with pytest.raises(ValueError, match="already stored"):
        write_token(THIRD, str(target), "token", overwrite=False)
    with pytest.raises(ValueError, match="non-empty"):
        write_token("", str(target), "token")


def test_repr_never_shows_the_token() -> None:
    auth = AuthClient(token=TOKEN, server_address=GLOBAL)
    assert TOKEN not in repr(auth)
    assert "<set>" in repr(auth)
    assert auth.request_header == {"Authorization": f"Bearer {TOKEN}"}


def test_get_user_information_and_tokens_and_group_users(cave_rsps) -> None:
    cave_rsps.get(f"{GLOBAL}/auth/api/v1/user", json=[{"id": 1}, {"id": 2}])
    cave_rsps.get(f"{GLOBAL}/auth/api/v1/user/token", json=[{"id": 5, "token": "x"}])
    cave_rsps.get(f"{GLOBAL}/auth/api/v1/group/3/user", json=[{"id": 1}])
    cave_rsps.get(f"{GLOBAL}/auth/api/v1/group/4/user", status=404, json={"message": "no group"})
    auth = AuthClient(token=TOKEN, server_address=GLOBAL)
    assert auth.get_user_information([1, 2]) == [{"id": 1}, {"id": 2}]
    assert query(cave_rsps.calls[0]) == {"id": ["1,2"]}
    assert auth.get_tokens() == [{"id": 5, "token": "x"}]
    assert auth.get_group_users(3) == [{"id": 1}]
    assert auth.get_group_users(4) == []
    for call in cave_rsps.calls:
        assert_auth(call)
    with pytest.raises(ValueError, match="user_ids must be integers"):
        auth.get_user_information(["abc"])


def test_invalid_token_error_hides_token(cave_rsps) -> None:
    cave_rsps.get(
        f"{GLOBAL}/auth/api/v1/user/token",
        status=401,
        json={"error": "invalid_token", "message": "Unauthorized - Token is Invalid or Expired"},
    )
    auth = AuthClient(token=TOKEN, server_address=GLOBAL)
    with pytest.raises(AuthorizationError) as info:
        auth.get_tokens()
    assert "invalid or expired" in str(info.value)
    assert TOKEN not in str(info.value)


def test_setup_token_prints_the_token_page(capsys) -> None:
    auth = AuthClient(server_address=GLOBAL)
    auth.setup_token(make_new=False, open=False)
    assert f"{GLOBAL}/sticky_auth/settings/tokens" in capsys.readouterr().out
    auth.get_new_token(open=False)
    assert f"{GLOBAL}/auth/api/v1/create_token" in capsys.readouterr().out
