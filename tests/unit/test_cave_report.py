"""What the CAVE flows tell a person: notices, failure advice by cause, run names (issue 12).

The end-to-end checks (real Prefect API, CAVE stand-in) are in tests/flows/test_cave_failures.py.
"""

from __future__ import annotations

from typing import Any

import prefect.runtime.flow_run
import pytest
from botocore.exceptions import ClientError

from prefect_neurodata.blocks import CaveCredentials
from prefect_neurodata.clients.cave.annotation_rows import AnnotationValidationError, RowProblem
from prefect_neurodata.clients.cave.base import AuthorizationError
from prefect_neurodata.clients.service_errors import ServiceError
from prefect_neurodata.flows import annotation_upload, materialization_snapshot
from prefect_neurodata.flows._artifacts import FailureReport
from prefect_neurodata.flows._cave_report import (
    cave_failure_advice,
    notices_markdown,
    table_notices,
)
from prefect_neurodata.tasks.cave import CaveInputError, CavePermissionError


@pytest.fixture
def parameters(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(request: Any, cave_block: Any = "neurodata-cave") -> None:
        monkeypatch.setattr(
            prefect.runtime.flow_run,
            "parameters",
            {"request": request, "cave_block": cave_block},
        )

    return use


def block(datastack: str | None) -> CaveCredentials:
    return CaveCredentials(server_address="http://127.0.0.1:1", datastack_name=datastack)


def test_snapshot_run_name_says_the_datastack(parameters: Any) -> None:
    parameters({"datastack": "minnie65_public", "version": 943})
    assert materialization_snapshot._run_name() == "snapshot minnie65_public v943"
    parameters({"destination": "/d"}, block("h01_c3_flat"))
    assert materialization_snapshot._run_name() == "snapshot h01_c3_flat latest"
    parameters({"destination": "/d"}, block(None))
    assert materialization_snapshot._run_name() == "snapshot (datastack from the CAVE block) latest"


def test_upload_run_name_says_mode_table_and_datastack(parameters: Any) -> None:
    request = annotation_upload.AnnotationUploadRequest(
        table="my_synapses", mode="update", records=[{"id": 1}]
    )
    parameters(request, block("minnie65_public"))
    assert annotation_upload._run_name() == "update my_synapses @ minnie65_public"


def test_notices_are_one_line_each_and_only_for_tables_that_have_one() -> None:
    notices = table_notices(
        [
            {"table_name": "tags", "notice_text": "Provisional.\nAsk  the owner."},
            {"table_name": "synapses", "notice_text": None},
            {"table_name": "cells"},
        ]
    )
    assert notices == {"tags": "Provisional. Ask the owner."}
    assert notices_markdown(notices) == (
        "## Table owner notices\n\n- **tags**: Provisional. Ask the owner.\n"
    )
    assert notices_markdown({}) == ""


def _service_error(status: int) -> ServiceError:
    return ServiceError(status_code=status, method="GET", url="http://cave/x", server_message="")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (AnnotationValidationError("bad", problems=[RowProblem(3, "size", "x", "no")]),
         "Nothing was written"),
        (CavePermissionError("no edit"), "refused the token of block `cave-b`"),
        (AuthorizationError(status_code=401, method="GET", url="http://cave/x", server_message=""),
         "Check the block's token"),
        (PermissionError("[Errno 13] Permission denied: '/snap'"), "AWS block `aws-b`"),
        (ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"), "Storage refused access"),
        (OSError("AWS Error ACCESS_DENIED during PutObject operation"), "Storage refused access"),
        (CaveInputError("table 'x' unknown"), "Fix it and run again"),
        (_service_error(503), "did not answer after every retry"),
    ],
)  # fmt: skip
def test_failure_advice_by_cause(error: BaseException, expected: str) -> None:
    advice = cave_failure_advice(FailureReport({}), "cave-b", "aws-b", lambda: "RERUN.")
    text = advice(error)
    assert text is not None and expected in text
    assert ("RERUN." in text) == (expected not in ("Nothing was written", "Fix it and run again"))


def test_other_errors_get_the_generic_advice() -> None:
    advice = cave_failure_advice(FailureReport({}), "cave-b", None, lambda: "RERUN.")
    assert advice(_service_error(404)) is None
    assert advice(RuntimeError("bug")) is None
