"""``prefect deploy --all`` of the generated ``deployments/prefect.yaml`` against a real server.

The README's work-pool path, as a user runs it: create the process pool, then ``prefect
--no-prompt deploy --all --prefect-file deployments/prefect.yaml`` from the repository. The
server (its own, so the session server's deployments are not rebound) must then hold the five
deployments with the entrypoints, parameters, schedules, concurrency limits, enforced parameter
schemas and the registration's event trigger that `prefect_neurodata.deployments` declares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_neurodata.deployments import WORK_POOL, deployment_specs
from tests.fixtures.prefect import prefect_server_env, start_prefect_server

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.flows


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    command = " ".join(args)
    assert result.returncode == 0, f"prefect {command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def deployed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh Prefect server after the README's `prefect deploy` steps; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-deploy-home")
    api_url, server = start_prefect_server(home)
    try:
        env = prefect_server_env(home)
        env["PREFECT_API_URL"] = api_url
        env.pop("PREFECT_TEST_MODE", None)
        _prefect(env, "work-pool", "create", WORK_POOL, "--type", "process")
        _prefect(env, "deploy", "--all", "--prefect-file", str(Path("deployments", "prefect.yaml")))
        yield api_url
    finally:
        server.__exit__(None, None, None)


def _deployment(api: str, flow_name: str, name: str) -> dict[str, Any]:
    response = httpx.get(f"{api}/deployments/name/{flow_name}/{name}")
    assert response.status_code == 200, f"{flow_name}/{name} was not deployed: {response.text}"
    return response.json()


def test_prefect_deploy_creates_the_five_deployments(deployed_api: str) -> None:
    response = httpx.post(f"{deployed_api}/deployments/filter", json={})
    response.raise_for_status()
    specs = deployment_specs()
    assert sorted(d["name"] for d in response.json()) == sorted(s.name for s in specs)
    for spec in specs:
        deployment = _deployment(deployed_api, spec.flow_name, spec.name)
        module, _, function = spec.entrypoint.partition(":")
        assert deployment["entrypoint"] == f"{module}.{function}", spec.key
        assert deployment["parameters"] == spec.parameters, spec.key
        assert deployment["work_pool_name"] == WORK_POOL, spec.key
        assert sorted(deployment["tags"]) == sorted(spec.tags), spec.key
        assert deployment["description"] == spec.description, spec.key
        assert deployment["enforce_parameter_schema"] is True, spec.key
        crons = [
            (s["schedule"]["cron"], s["schedule"]["timezone"]) for s in deployment["schedules"]
        ]
        assert crons == ([(spec.cron, spec.timezone)] if spec.cron else []), spec.key
        limit = (deployment.get("global_concurrency_limit") or {}).get("limit")
        assert limit == spec.concurrency_limit, spec.key
        # The schema the run form is built from: block pickers and constraints survive deploy.
        schema = deployment["parameter_openapi_schema"]
        blocks = [p for p in schema["properties"] if p.endswith("_block")]
        assert blocks, spec.key
        assert all(
            any("$ref" in option for option in schema["properties"][p]["anyOf"]) for p in blocks
        ), spec.key
        assert '"pattern"' in json.dumps(schema), spec.key


def test_prefect_deploy_creates_the_registration_trigger(deployed_api: str) -> None:
    (spec,) = [s for s in deployment_specs() if s.trigger]
    deployment = _deployment(deployed_api, spec.flow_name, spec.name)
    response = httpx.post(f"{deployed_api}/automations/filter", json={})
    response.raise_for_status()
    automations = [
        a
        for a in response.json()
        if any(action.get("deployment_id") == deployment["id"] for action in a["actions"])
    ]
    assert len(automations) == 1, response.json()
    (automation,) = automations
    assert spec.trigger is not None
    assert automation["description"] == spec.trigger["description"]
    assert automation["trigger"]["expect"] == spec.trigger["expect"]
    assert automation["trigger"]["match"] == spec.trigger["match"]
    assert automation["actions"][0]["parameters"] == spec.trigger["parameters"]


def test_deployed_schema_refuses_a_bad_location(deployed_api: str) -> None:
    (spec,) = [s for s in deployment_specs() if s.key == "registration"]
    deployment = _deployment(deployed_api, spec.flow_name, spec.name)
    response = httpx.post(
        f"{deployed_api}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"request": {"locations": ["s3://aind-open-data"]}}},
    )
    assert response.status_code == 409, response.text
    assert "request.locations" in response.json()["detail"]
