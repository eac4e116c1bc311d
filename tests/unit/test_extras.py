"""Install what you use: the CAVE side imports none of the AIND-only dependencies, and a
missing one names the extra that installs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from prefect_neurodata.clients._extras import MissingExtraError, import_extra

REPO = Path(__file__).resolve().parents[2]
AIND_ONLY = ("sshtunnel", "pymongo", "psycopg2")


def test_cave_user_path_imports_no_aind_only_dependency() -> None:
    code = (
        "import sys\n"
        "import prefect_neurodata.blocks\n"
        "import prefect_neurodata.flows.annotation_upload\n"
        "import prefect_neurodata.flows.materialization_snapshot\n"
        "from prefect_neurodata.clients.cave import CAVEclient\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {AIND_ONLY!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_aind_only_dependencies_are_an_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in ("sshtunnel", "pymongo", "psycopg2"):
        assert name not in core
        assert any(name in dep for dep in project["optional-dependencies"]["aind"])
    assert "cave" in project["optional-dependencies"]


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sshtunnel", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'prefect-neurodata\[aind\]'"):
        import_extra("sshtunnel", extra="aind")


def test_ssh_client_without_sshtunnel_says_which_extra() -> None:
    # A fresh interpreter in which sshtunnel cannot be imported, as without the [aind] extra.
    code = (
        "import sys\n"
        "sys.modules['sshtunnel'] = None\n"
        "from prefect_neurodata.clients.aind.document_db_ssh import (\n"
        "    DocumentDbSSHClient, DocumentDbSSHCredentials)\n"
        "from prefect_neurodata.clients._extras import MissingExtraError\n"
        "client = DocumentDbSSHClient(credentials=DocumentDbSSHCredentials(\n"
        "    host='127.0.0.1', username='u', password='p', ssh_host='127.0.0.1',\n"
        "    ssh_username='s', ssh_password='x'))\n"
        "try:\n"
        "    client.start()\n"
        "except MissingExtraError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pip install 'prefect-neurodata[aind]'" in result.stdout
