"""One definition of the deployments: prefect.yaml is generated from it, serve.py serves it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

from prefect_neurodata.deployments import (
    BLOCK_NAMES,
    KEYS,
    deployment_specs,
    prefect_yaml,
    runner_deployments,
)

REPO = Path(__file__).resolve().parents[2]


def _serve_module() -> Any:
    spec = importlib.util.spec_from_file_location("neurodata_serve", REPO / "deployments/serve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prefect_yaml_is_the_generated_file() -> None:
    committed = (REPO / "deployments" / "prefect.yaml").read_text()
    assert committed == prefect_yaml(), (
        "deployments/prefect.yaml differs from prefect_neurodata/deployments.py; regenerate it "
        "with `neurodata deployments yaml --output deployments/prefect.yaml`"
    )


def test_deployment_names_are_unique_and_say_what_they_do() -> None:
    specs = deployment_specs()
    assert [s.key for s in specs] == list(KEYS)
    names = [s.name for s in specs]
    assert len(set(names)) == len(names), names
    assert len({s.full_name for s in specs}) == len(specs)
    for spec in specs:
        assert spec.name not in {"ui", "scheduled", "nightly", "default"}, spec.name
        assert len(spec.description) > 40, spec
    (trigger,) = [s.trigger for s in specs if s.trigger]
    assert trigger["name"] and len(trigger["description"]) > 40


def test_served_and_yaml_deployments_agree() -> None:
    document = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    from_yaml = {d["name"]: d for d in document["deployments"]}
    served = {d.name: d for d in _serve_module().build_deployments()}
    assert set(served) == set(from_yaml)
    for name, runner in served.items():
        entry = from_yaml[name]
        assert runner.parameters == entry["parameters"], name
        assert runner.description == entry["description"], name
        assert sorted(runner.tags) == sorted(entry["tags"]), name
        assert entry["entrypoint"].rsplit(".", 1)[-1] == runner.entrypoint.rsplit(":", 1)[-1]
        crons = [(s.schedule.cron, s.schedule.timezone) for s in runner.schedules or []]
        assert crons == [(s["cron"], s["timezone"]) for s in entry.get("schedules", [])], name
        triggers = runner.triggers or []
        assert len(triggers) == len(entry.get("triggers", [])), name
        for served_trigger, yaml_trigger in zip(triggers, entry.get("triggers", []), strict=True):
            assert served_trigger.parameters == yaml_trigger["parameters"]
            assert served_trigger.expect == set(yaml_trigger["expect"])
            assert served_trigger.description == yaml_trigger["description"]
        limit = runner.concurrency_options and runner.concurrency_limit
        assert (limit or None) == (entry.get("concurrency_limit") or {}).get("limit"), name


def test_every_block_a_deployment_names_is_a_documented_block() -> None:
    readme = (REPO / "README.md").read_text()
    for spec in deployment_specs():
        for parameter, value in spec.parameters.items():
            if parameter.endswith("_block"):
                assert value == BLOCK_NAMES[parameter]
                assert f'"{value}"' in readme, f"README never saves block {value!r}"


def test_snapshot_destination_is_the_same_everywhere() -> None:
    # serve.py once used a relative directory and prefect.yaml an s3:// URI.
    served = {d.name: d for d in _serve_module().build_deployments(bucket="lab")}
    specs = {s.name: s for s in deployment_specs(bucket="lab")}
    assert served["snapshot-nightly"].parameters == specs["snapshot-nightly"].parameters
    assert specs["snapshot-nightly"].parameters["request"]["destination"] == (
        "s3://lab/cave-snapshots"
    )
    only = runner_deployments(only=["qc"])
    assert [d.name for d in only] == ["attach-qc-from-ui"]
