"""Run forms that check before the run, against a real Prefect server.

The five deployments are applied to the session's Prefect server. Their parameter schemas (what
the UI builds the run forms from) carry the S3 and table-name patterns, the numeric ranges, a
block picker for every block parameter and the QC evaluation fields; the server refuses bad
parameters, naming the field, before a run exists; a block works by name and picked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect_aws import AwsCredentials

from prefect_neurodata.blocks import CaveCredentials, DocDbApiCredentials, RdsCredentials
from prefect_neurodata.clients.aind.utils import (
    S3_BUCKET_PATTERN,
    S3_LOCATION_PATTERN,
    S3_URI_OR_PATH_PATTERN,
    parse_s3_location,
)
from prefect_neurodata.clients.cave.annotationengine import TABLE_NAME_PATTERN
from prefect_neurodata.deployments import deployment_specs, runner_deployments
from prefect_neurodata.flows.parameters import BLOCK_NAME_SCHEMA
from prefect_neurodata.flows.qc_attachment import (
    STAGES,
    AssetRef,
    QcAttachmentRequest,
    attach_qc,
)
from prefect_neurodata.tasks.rds import EXPORT_TABLE_PATTERN
from tests.flows.aind_helpers import aws_credentials, docdb_block, records_in, write_assets
from tests.flows.test_qc_attachment import evaluation

pytestmark = pytest.mark.flows

BLOCK_TYPES: dict[str, type[Block]] = {
    "docdb_block": DocDbApiCredentials,
    "rds_block": RdsCredentials,
    "cave_block": CaveCredentials,
    "aws_block": AwsCredentials,
}
BLOCK_SLUGS = {
    "docdb_block": DocDbApiCredentials.get_block_type_slug(),
    "rds_block": RdsCredentials.get_block_type_slug(),
    "cave_block": CaveCredentials.get_block_type_slug(),
    "aws_block": "aws-credentials",
}


@pytest.fixture(scope="module")
def deployed(prefect_api: str) -> Iterator[dict[str, dict[str, Any]]]:
    """The five deployments as the server stores them, by spec key."""
    ids = {d.name: d.apply() for d in runner_deployments()}
    out = {}
    for spec in deployment_specs():
        response = httpx.get(f"{prefect_api}/deployments/{ids[spec.name]}")
        response.raise_for_status()
        out[spec.key] = response.json()
    yield out
    # Later tests serve these deployments themselves: leave no stale trigger or schedule behind.
    with get_client(sync_client=True) as client:
        for deployment_id in ids.values():
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
            client.delete_deployment(deployment_id)


def _definition(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    return schema["definitions"][ref.rsplit("/", 1)[-1]]


def _request_field(deployment: dict[str, Any], *path: str) -> dict[str, Any]:
    """The schema of ``request.<path>`` (following definitions and list items)."""
    schema = deployment["parameter_openapi_schema"]
    node = schema["properties"]["request"]
    for name in path:
        # An optional model is anyOf [its $ref, null].
        refs = [o for o in node.get("anyOf", []) if "$ref" in o]
        if refs:
            node = refs[0]
        if "$ref" in node:
            node = _definition(schema, node["$ref"])
        node = node["items"] if name == "[]" else node["properties"][name]
    return node


def _patterns(node: dict[str, Any]) -> set[str]:
    found = {node["pattern"]} if "pattern" in node else set()
    for option in node.get("anyOf", []) + node.get("allOf", []):
        found |= _patterns(option)
    if "items" in node:
        found |= _patterns(node["items"])
    return found


def test_every_deployment_enforces_its_parameter_schema(deployed: dict[str, Any]) -> None:
    for key, deployment in deployed.items():
        assert deployment["enforce_parameter_schema"] is True, key


def test_schemas_carry_the_patterns_of_the_rules(deployed: dict[str, Any]) -> None:
    expected = {
        ("registration", ("locations",)): S3_LOCATION_PATTERN,
        ("registration", ("bucket",)): S3_BUCKET_PATTERN,
        ("registration", ("code_ocean_results", "[]", "s3_location")): S3_LOCATION_PATTERN,
        ("sync", ("bucket",)): S3_BUCKET_PATTERN,
        ("sync", ("export_table",)): EXPORT_TABLE_PATTERN,
        ("qc", ("assets", "[]", "location")): S3_LOCATION_PATTERN,
        ("snapshot", ("destination",)): S3_URI_OR_PATH_PATTERN,
        ("snapshot", ("tables",)): TABLE_NAME_PATTERN.pattern,
        ("annotations", ("table",)): TABLE_NAME_PATTERN.pattern,
        ("annotations", ("create", "reference_table")): TABLE_NAME_PATTERN.pattern,
    }
    for (key, path), pattern in expected.items():
        node = _request_field(deployed[key], *path)
        assert _patterns(node) == {pattern}, (key, path, node)


def test_schema_patterns_agree_with_the_python_rule() -> None:
    good = ["s3://aind-open-data/ecephys_1", "s3://aind-open-data/a/b/", "s3://b.c-d/x"]
    bad = ["s3://aind-open-data/", "s3://Bad_Bucket/x", "http://aind-open-data/x",
           "s3://aind-open-data/a{b}", "aind-open-data/x", "s3://ab/x"]  # fmt: skip
    for value in good:
        assert re.search(S3_LOCATION_PATTERN, value), value
        parse_s3_location(value)
    for value in bad:
        assert not re.search(S3_LOCATION_PATTERN, value), value
        with pytest.raises(ValueError):
            parse_s3_location(value)


def test_schemas_carry_the_ranges(deployed: dict[str, Any]) -> None:
    ranges = {
        ("registration", "batch_size"): (1, 1000),
        ("qc", "batch_size"): (1, 1000),
        ("sync", "batch_size"): (1, 5000),
        ("sync", "max_payload_size"): (10_000, 9_000_000),
        ("snapshot", "rows_per_part"): (1_000, 1_000_000),
        ("annotations", "chunk_size"): (1, 10_000),
    }
    for (key, name), (low, high) in ranges.items():
        node = _request_field(deployed[key], name)
        assert (node.get("minimum"), node.get("maximum")) == (low, high), (key, name)
    lookback = _request_field(deployed["sync"], "lookback_days")
    assert [o.get("minimum") for o in lookback["anyOf"] if o.get("type") == "number"] == [0]
    version = _request_field(deployed["snapshot"], "version")
    assert [o.get("minimum") for o in version["anyOf"] if o.get("type") == "integer"] == [1]


def test_every_block_parameter_is_a_block_picker_that_takes_names(
    deployed: dict[str, Any],
) -> None:
    seen = set()
    for key, deployment in deployed.items():
        schema = deployment["parameter_openapi_schema"]
        blocks = [name for name in schema["properties"] if name.endswith("_block")]
        assert blocks, key
        for name in blocks:
            options = schema["properties"][name]["anyOf"]
            refs = [_definition(schema, o["$ref"]) for o in options if "$ref" in o]
            assert [r["block_type_slug"] for r in refs] == [BLOCK_SLUGS[name]], (key, name)
            assert BLOCK_NAME_SCHEMA in options, (key, name)  # a name still works
            assert refs[0]["title"] == BLOCK_TYPES[name].__name__  # Prefect finds it by title
            seen.add(name)
    assert seen == set(BLOCK_SLUGS)


def test_qc_evaluations_are_typed_fields_with_an_example(deployed: dict[str, Any]) -> None:
    schema = deployed["qc"]["parameter_openapi_schema"]
    evaluations = _request_field(deployed["qc"], "evaluations")
    assert evaluations["type"] == "array"
    assert evaluations["examples"][0][0]["stage"] in STAGES
    item = _definition(schema, evaluations["items"]["$ref"])
    assert {"name", "modality", "stage", "metrics", "value", "status_history"} <= set(
        item["properties"]
    )
    assert all(p.get("description") for p in item["properties"].values())
    assert item["properties"]["stage"]["enum"] == list(STAGES)
    history = item["properties"]["status_history"]["items"]["properties"]
    assert history["status"]["enum"] == ["Pass", "Fail", "Pending"]
    assert set(item["properties"]["modality"]["properties"]) == {"name", "abbreviation"}


def _create_flow_run(api: str, deployment: dict[str, Any], parameters: dict[str, Any]) -> Any:
    return httpx.post(
        f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters}
    )


def _runs_of(api: str, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The deployment's runs that were asked for (the scheduler's own runs left out)."""
    response = httpx.post(
        f"{api}/flow_runs/filter",
        json={"deployments": {"id": {"any_": [deployment["id"]]}}},
    )
    response.raise_for_status()
    return [run for run in response.json() if not run["auto_scheduled"]]


BAD_PARAMETERS = [
    ("registration", {"request": {"locations": ["s3://Bad_Bucket/x"]}}, "locations"),
    ("registration", {"request": {"locations": ["s3://aind-open-data/"]}}, "locations"),
    ("registration", {"request": {"locations": ["s3://a/b"], "batch_size": 0}}, "batch_size"),
    ("sync", {"request": {"bucket": "aind-open-data", "lookback_days": -1}}, "lookback_days"),
    ("sync", {"request": {"bucket": "aind-open-data", "export_table": "a;b"}}, "export_table"),
    ("sync", {"request": {"bucket": "Not A Bucket"}}, "bucket"),
    ("qc", {"request": {"assets": [{"location": "file:///x"}]}}, "location"),
    ("qc", {"request": {"assets": [{"id": "x"}], "evaluations": [{"stage": "Done"}]}}, "stage"),
    ("snapshot", {"request": {"destination": "ftp://host/x"}}, "destination"),
    ("snapshot", {"request": {"destination": "s3://bucket/x", "tables": ["T-1"]}}, "tables"),
    ("snapshot", {"request": {"destination": "/x", "rows_per_part": 9}}, "rows_per_part"),
    ("annotations", {"request": {"table": "Synapses!", "records": []}}, "table"),
    ("annotations", {"request": {"table": "t", "records": [], "chunk_size": 10_001}}, "chunk_size"),
]


@pytest.mark.parametrize(("key", "parameters", "field"), BAD_PARAMETERS)
def test_server_refuses_bad_parameters_before_a_run_exists(
    prefect_api: str, deployed: dict[str, Any], key: str, parameters: dict[str, Any], field: str
) -> None:
    deployment = deployed[key]
    before = len(_runs_of(prefect_api, deployment))
    response = _create_flow_run(prefect_api, deployment, parameters)
    assert 400 <= response.status_code < 500, response.text
    assert field in response.json()["detail"], response.text
    assert len(_runs_of(prefect_api, deployment)) == before


# The keywords the Prefect UI (3.9) keeps of a property (and of a definition) when it sends its
# copy of the schema to "Validate parameters"; anyOf, allOf and items are kept verbatim.
UI_KEPT_KEYWORDS = {
    "position", "block_type_slug", "$ref", "anyOf", "allOf", "example", "default", "const",
    "description", "enum", "format", "items", "prefixItems", "properties", "required", "title",
    "type", "maxItems", "minItems",
}  # fmt: skip


def _as_the_ui_sends_it(node: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in node.items() if k in UI_KEPT_KEYWORDS}
    if "properties" in node:
        kept["properties"] = {k: _as_the_ui_sends_it(v) for k, v in node["properties"].items()}
    return kept


def _ui_validate(api: str, deployment: dict[str, Any], values: dict[str, Any]) -> Any:
    schema = deployment["parameter_openapi_schema"]
    sent = {
        "definitions": {k: _as_the_ui_sends_it(v) for k, v in schema["definitions"].items()},
        "properties": {k: _as_the_ui_sends_it(v) for k, v in schema["properties"].items()},
        "required": schema.get("required", []),
        "title": schema["title"],
        "type": schema["type"],
    }
    response = httpx.post(f"{api}/ui/schemas/validate", json={"schema": sent, "values": values})
    response.raise_for_status()
    return response.json()


def test_ui_validation_refuses_bad_locations_and_accepts_a_picked_block(
    prefect_api: str, deployed: dict[str, Any]
) -> None:
    """What the run form's "Validate parameters" asks the server: errors name the field."""
    block_id = "6c9baa82-8994-4467-9315-e88f0fbf3e43"  # any id: validation checks the shape
    good = _ui_validate(
        prefect_api,
        deployed["snapshot"],
        {
            "request": {"destination": "s3://aind-open-data/snapshots"},
            "cave_block": {"$ref": {"block_document_id": block_id}},
            "aws_block": {"$ref": {"block_document_id": block_id}},
        },
    )
    assert good["valid"] is True, good
    bad = _ui_validate(
        prefect_api, deployed["snapshot"], {"request": {"destination": "s3://Bad_Bucket/x"}}
    )
    assert bad["valid"] is False
    assert "destination" in str(bad["errors"]) and "does not match" in str(bad["errors"])
    locations = {"locations": ["s3://aind-open-data/ecephys_1", "s3://Bad_Bucket/x"]}
    bad = _ui_validate(prefect_api, deployed["registration"], {"request": locations})
    assert bad["valid"] is False
    assert "locations" in str(bad["errors"]) and "Bad_Bucket" in str(bad["errors"])
    bad = _ui_validate(prefect_api, deployed["annotations"], {"request": {"table": "No Way"}})
    assert "table" in str(bad["errors"]) and "does not match" in str(bad["errors"])


def test_a_block_picked_in_the_form_or_named_both_run(
    sandbox: Any, prefect_api: str, deployed: dict[str, Any], saved_docdb_block: str, bucket: str
) -> None:
    (name,) = write_assets(aws_credentials(sandbox.env).get_s3_client(), bucket, 1, 30_000)
    with docdb_block(sandbox.env).get_client() as client:
        client.register_asset(f"s3://{bucket}/{name}")
    (record,) = records_in(sandbox.env, bucket)
    block_id = str(DocDbApiCredentials.load(saved_docdb_block)._block_document_id)
    picked = {"$ref": {"block_document_id": block_id}}  # what the UI's block picker sends

    # The server accepts the picked block as the parameter...
    request = {"assets": [{"id": record["_id"]}], "evaluations": [evaluation("Picked")]}
    response = _create_flow_run(
        prefect_api, deployed["qc"], {"request": request, "docdb_block": picked}
    )
    assert response.status_code == 201, response.text
    httpx.delete(f"{prefect_api}/flow_runs/{response.json()['id']}").raise_for_status()

    # ...and a run given the picked block, and one given its name, both attach.
    refs = [AssetRef(id=record["_id"])]
    by_ref = attach_qc(
        QcAttachmentRequest(assets=refs, evaluations=[evaluation("Picked")]),
        docdb_block=picked,  # type: ignore[arg-type]  # as Prefect passes a picked block
    )
    by_name = attach_qc(
        QcAttachmentRequest(assets=refs, evaluations=[evaluation("Named")]),
        docdb_block=saved_docdb_block,
    )
    assert (by_ref.attached, by_name.attached) == (1, 1)
    attached = (records_in(sandbox.env, bucket)[0].get("quality_control") or {})["evaluations"]
    assert [e["name"] for e in attached] == ["Picked", "Named"]


def test_an_unsaved_block_is_refused_naming_the_parameter(sandbox: Any, prefect_api: str) -> None:
    unsaved = docdb_block(sandbox.env)
    secret = unsaved.aws_credentials.aws_secret_access_key
    assert secret is not None
    request = QcAttachmentRequest(assets=[AssetRef(id="x")], evaluations=[evaluation("x")])
    with pytest.raises(Exception, match="docdb_block") as raised:
        attach_qc(request, docdb_block=unsaved)  # type: ignore[arg-type]
    assert "unsaved" in str(raised.value)
    assert secret.get_secret_value() not in str(raised.value)
