"""Blocks reject fields they do not have (a typo used to drop the setting silently)."""

from __future__ import annotations

import pytest
from prefect_aws import AwsCredentials
from pydantic import ValidationError

from prefect_neurodata.blocks import (
    CaveCredentials,
    DocDbApiCredentials,
    DocumentDbSshCredentials,
    RdsCredentials,
)


def test_unknown_field_is_named_with_the_field_meant() -> None:
    with pytest.raises(ValidationError) as caught:
        CaveCredentials(server_address="http://127.0.0.1:9", datastack="minnie65_public")
    message = str(caught.value)
    assert "unknown field 'datastack'" in message
    assert "did you mean 'datastack_name'" in message


@pytest.mark.parametrize(
    "block", [CaveCredentials, DocDbApiCredentials, DocumentDbSshCredentials, RdsCredentials]
)
def test_every_block_rejects_unknown_fields_without_echoing_values(block: type) -> None:
    with pytest.raises(ValidationError) as caught:
        block(no_such_field="hunter2-secret-value")
    assert "no_such_field" in str(caught.value)
    assert "hunter2-secret-value" not in str(caught.value)


def test_prefect_document_keys_are_accepted() -> None:
    # Saved block documents carry block_type_slug beside the fields.
    block = CaveCredentials.model_validate(
        {"datastack_name": "x", "block_type_slug": "cave-credentials"}
    )
    assert block.datastack_name == "x"
    docdb = DocDbApiCredentials.model_validate(
        {
            "host": "http://127.0.0.1:9",
            "aws_credentials": {"region_name": "us-west-2", "block_type_slug": "aws-credentials"},
            "block_type_slug": "aind-docdb-api-credentials",
        }
    )
    assert isinstance(docdb.aws_credentials, AwsCredentials)
