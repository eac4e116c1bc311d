"""The blocks the demo saves: every block a deployment names exists, and the DocDB block's AWS
credentials survive the Prefect UI's Edit -> Save (they are a named block it references)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from prefect_neurodata.deployments import AWS_BLOCK_NAME, BLOCK_NAMES, deployment_specs

pytestmark = pytest.mark.flows


@pytest.fixture(scope="module")
def demo_blocks(prefect_api: str, sandbox_env: dict[str, str], postgres_url: str) -> dict:
    from prefect_neurodata.demo import save_blocks

    return save_blocks({**sandbox_env, "NEURODATA_POSTGRES_URL": postgres_url})


def test_every_block_a_deployment_names_is_saved(demo_blocks: dict) -> None:
    from prefect_neurodata.blocks import CaveCredentials, DocDbApiCredentials, RdsCredentials

    classes = {
        "docdb_block": DocDbApiCredentials,
        "rds_block": RdsCredentials,
        "cave_block": CaveCredentials,
    }
    for spec in deployment_specs():
        for parameter, name in spec.parameters.items():
            if parameter.endswith("_block"):
                assert classes[parameter].load(name) is not None, (spec.full_name, name)
    # The RDS block reaches the sandbox's Postgres (the sync's export target).
    rds = RdsCredentials.load(BLOCK_NAMES["rds_block"]).get_client()
    assert rds.execute_query("SELECT 1").scalar() == 1


def _document(api: str, slug: str, name: str) -> dict[str, Any]:
    response = httpx.get(f"{api}/block_types/slug/{slug}/block_documents/name/{name}")
    response.raise_for_status()
    return response.json()


def test_docdb_block_references_a_named_aws_block_that_survives_a_ui_edit(
    demo_blocks: dict, prefect_api: str
) -> None:
    from prefect_aws import AwsCredentials

    from prefect_neurodata.blocks import DocDbApiCredentials

    docdb = _document(prefect_api, "aind-docdb-api-credentials", BLOCK_NAMES["docdb_block"])
    reference = docdb["block_document_references"]["aws_credentials"]
    aws_id = reference["block_document"]["id"]
    # The UI's picker lists named block documents only; an inline block is anonymous.
    assert reference["block_document"]["is_anonymous"] is False
    assert reference["block_document"]["name"] == AWS_BLOCK_NAME
    listed = httpx.post(
        f"{prefect_api}/block_documents/filter",
        json={"block_types": {"slug": {"any_": ["aws-credentials"]}}},
    ).json()
    assert aws_id in {d["id"] for d in listed if not d["is_anonymous"]}

    # Edit -> Save as the UI sends it: the form's data (secrets masked) with the picker's
    # selection as a reference, replacing the stored data.
    data = {k: v for k, v in docdb["data"].items() if k != "aws_credentials"}
    data["aws_credentials"] = {"$ref": {"block_document_id": aws_id}}
    response = httpx.patch(
        f"{prefect_api}/block_documents/{docdb['id']}",
        json={"data": data, "merge_existing_data": False},
    )
    assert response.status_code == 204, response.text
    reloaded = DocDbApiCredentials.load(BLOCK_NAMES["docdb_block"])
    saved = AwsCredentials.load(AWS_BLOCK_NAME)
    assert reloaded.aws_credentials.aws_access_key_id == saved.aws_access_key_id
    secret = reloaded.aws_credentials.aws_secret_access_key
    assert secret is not None and secret.get_secret_value() not in ("", "********")
