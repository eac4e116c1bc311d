"""The AIND deployment declarations: prefect.yaml and deployments/serve.py agree and are sane."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def _serve_module() -> Any:
    spec = importlib.util.spec_from_file_location("neurodata_serve", REPO / "deployments/serve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _yaml_deployments() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((REPO / "deployments/prefect.yaml").read_text())
    return {d["entrypoint"].rsplit(".", 1)[-1]: d for d in document["deployments"]}


def test_prefect_yaml_declares_the_three_aind_deployments() -> None:
    deployments = _yaml_deployments()
    registration = deployments["register_assets"]
    (trigger,) = registration["triggers"]
    assert trigger["expect"] == ["neurodata.asset.uploaded"]
    assert trigger["match"] == {"prefect.resource.id": "s3://*"}
    assert trigger["parameters"]["request"]["locations"] == ["{{ event.resource.id }}"]
    (schedule,) = deployments["sync_metadata"]["schedules"]
    assert schedule["cron"] == "0 3 * * *"
    assert deployments["sync_metadata"]["parameters"]["request"]["bucket"]
    assert "schedules" not in deployments["attach_qc"]
    assert "triggers" not in deployments["attach_qc"]
    for name in ("register_assets", "sync_metadata", "attach_qc"):
        module, _, attr = deployments[name]["entrypoint"].rpartition(".")
        assert hasattr(importlib.import_module(module), attr)
        # Block names only: nothing that looks like a credential in parameters.
        text = str(deployments[name].get("parameters", {})).lower()
        assert "secret" not in text and "password" not in text


def test_served_deployments_match_the_yaml() -> None:
    serve = _serve_module()
    aind = ["registration", "sync", "qc"]
    deployments = {
        d.name: d for d in serve.build_deployments(docdb_block="x", bucket="b", only=aind)
    }
    assert set(deployments) == {"register-on-upload", "sync-nightly", "attach-qc-from-ui"}
    (trigger,) = deployments["register-on-upload"].triggers
    assert trigger.expect == {"neurodata.asset.uploaded"}
    assert trigger.parameters["request"]["locations"] == ["{{ event.resource.id }}"]
    assert trigger.parameters["docdb_block"] == "x"
    (schedule,) = deployments["sync-nightly"].schedules
    assert schedule.schedule.cron == "0 3 * * *"
    assert deployments["sync-nightly"].parameters["request"]["bucket"] == "b"
    assert deployments["attach-qc-from-ui"].schedules in (None, [])
    only = serve.build_deployments(only=["registration"])
    assert [d.name for d in only] == ["register-on-upload"]
