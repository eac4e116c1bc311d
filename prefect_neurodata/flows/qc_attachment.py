"""Flow 2: attach QC evaluations to AIND assets.

Evaluations are aind-data-schema 1.x ``QCEvaluation`` objects for a ``v1`` DocDB block, or 2.x
``QCMetric`` objects for ``v2``, given in the parameters or as a JSON file (local path or
``s3://`` URI). Every evaluation is validated (required keys, status values, timestamps) and
every asset is resolved before the first write; evaluations already attached are skipped, so a
rerun attaches nothing twice.

Example:
    ```python
    from prefect_neurodata.flows.qc_attachment import AssetRef, QcAttachmentRequest, attach_qc

    attach_qc(
        QcAttachmentRequest(
            assets=[AssetRef(name="ecephys_642478_2023-01-17_13-56-29")],
            evaluations_file="s3://aind-open-data/qc/ecephys_642478.json",
        ),
        docdb_block="neurodata-docdb",
    )
    ```
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import WithJsonSchema

from prefect_neurodata.constants import DEFAULT_DOCDB_BLOCK
from prefect_neurodata.errors import NeurodataError
from prefect_neurodata.flows._artifacts import (
    failure_report,
    markdown_counts,
    publish_markdown,
    publish_table,
    request_inputs,
)
from prefect_neurodata.flows._names import first_and_count, neurodata_flow, request_value
from prefect_neurodata.flows.parameters import AwsBlockName, DocDbBlockName, S3Location
from prefect_neurodata.tasks.common import chunks, load_docdb
from prefect_neurodata.tasks.docdb import attach_qc_batch, check_docdb, resolve_assets
from prefect_neurodata.tasks.s3 import read_json_uri

ARTIFACT_KEY = "qc-attachment"

STAGES = ("Raw data", "Processing", "Analysis", "Multi-asset")
STATUSES = ("Pass", "Fail", "Pending")
V1_REQUIRED = ("modality", "stage", "name", "metrics")
V2_REQUIRED = ("name", "modality", "stage", "value", "status_history")
METRIC_REQUIRED = ("name", "value", "status_history")
STATUS_REQUIRED = ("evaluator", "status", "timestamp")


class AssetRef(BaseModel):
    """One asset, by exactly one of its DocDB id, name or S3 location."""

    id: str | None = Field(default=None, description="DocDB record _id.")
    name: str | None = Field(default=None, description="Asset name.")
    location: S3Location | None = Field(default=None, description="s3://bucket/prefix.")

    @model_validator(mode="after")
    def _exactly_one(self) -> AssetRef:
        given = [k for k in ("id", "name", "location") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"an asset reference needs exactly one of id, name, location; got {given or 'none'}"
            )
        return self


EXAMPLE_EVALUATION: dict[str, Any] = {
    "modality": {"name": "Extracellular electrophysiology", "abbreviation": "ecephys"},
    "stage": "Raw data",
    "name": "Drift map",
    "description": "Probe drift over the session",
    "metrics": [
        {
            "name": "Probe A drift",
            "value": {"value": 0.93, "unit": "ratio"},
            "status_history": [
                {"evaluator": "Automated", "status": "Pass", "timestamp": "2025-03-02T10:00:00Z"}
            ],
        }
    ],
    "created": "2025-03-02T10:00:00Z",
}


_FORM_NAME: dict[str, Any] = {"type": "string", "minLength": 1}
_FORM_STAGE: dict[str, Any] = {"type": "string", "enum": list(STAGES)}
_FORM_MODALITY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "title": "Name", "description": "Modality name."},
        "abbreviation": {"type": "string", "title": "Abbreviation", "description": "e.g. ecephys."},
    },
}


def _form_list_of(properties: dict[str, Any]) -> dict[str, Any]:
    """A form list whose items show ``properties`` as fields."""
    return {"type": "array", "items": {"type": "object", "properties": properties}}


_FORM_HISTORY = _form_list_of(
    {
        "evaluator": {"type": "string", "title": "Evaluator", "description": "Who decided."},
        "status": {"type": "string", "title": "Status", "enum": list(STATUSES)},
        "timestamp": {
            "type": "string",
            "title": "Timestamp",
            "description": "ISO 8601, e.g. 2025-03-02T10:00:00Z.",
        },
    }
)
_FORM_METRICS = _form_list_of(
    {
        "name": {"type": "string", "title": "Name", "description": "Metric name."},
        "value": {"title": "Value", "description": "The metric's value (any JSON)."},
        "status_history": {"title": "Status history", **_FORM_HISTORY},
    }
)
"""What the run form shows for the evaluation's fields (the form's schema only)."""


class QcEvaluationInput(BaseModel):
    """One QC evaluation (aind-data-schema 1.x ``QCEvaluation``) or metric (2.x ``QCMetric``).

    The fields are typed loosely on purpose: `validate_evaluations` checks every evaluation
    against the collection's generation and names each problem with its index, before any write.
    Further keys of the schema (``description``, ``tags``, ``notes``, ...) are kept as given.

    Example:
        ```python
        QcEvaluationInput(**EXAMPLE_EVALUATION)
        ```
    """

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE_EVALUATION]})

    # The run form shows typed inputs (JSON-schema only): every generation needs a name, a
    # modality and a stage, offered as a choice. Python accepts anything here so that
    # `validate_evaluations` can name each problem with its index.
    name: Annotated[str | None, WithJsonSchema(_FORM_NAME)] = Field(
        default=None, description="Name of the evaluation or metric."
    )
    modality: Annotated[dict[str, Any] | None, WithJsonSchema(_FORM_MODALITY)] = Field(
        default=None, description='The modality, e.g. {"name": ..., "abbreviation": "ecephys"}.'
    )
    stage: Annotated[str | None, WithJsonSchema(_FORM_STAGE)] = Field(
        default=None, description=f"One of {', '.join(STAGES)}."
    )
    metrics: Annotated[list[dict[str, Any]] | None, WithJsonSchema(_FORM_METRICS)] = Field(
        default=None,
        description="1.x: the metrics, each {name, value, status_history}.",
    )
    value: Any = Field(default=None, description="2.x: the metric's value (finite numbers).")
    status_history: Annotated[list[dict[str, Any]] | None, WithJsonSchema(_FORM_HISTORY)] = Field(
        default=None,
        description=(
            f"2.x: [{{evaluator, status ({'/'.join(STATUSES)}), timestamp (ISO 8601)}}, ...]."
        ),
    )
    created: str | None = Field(default=None, description="ISO 8601 creation time.")

    def as_json(self) -> dict[str, Any]:
        """The evaluation as sent to DocDB: the keys that were given, in their order."""
        return self.model_dump(exclude_unset=True)  # python mode: NaN stays NaN, to be refused


class QcAttachmentRequest(BaseModel):
    """Which assets get which QC evaluations (every evaluation goes to every asset)."""

    assets: list[AssetRef] = Field(description="Assets to attach the evaluations to.")
    evaluations: list[QcEvaluationInput] = Field(
        default_factory=list,
        description=(
            "QC evaluations (aind-data-schema 1.x) or metrics (2.x): add one per evaluation "
            "and fill in its fields."
        ),
        json_schema_extra={"examples": [[EXAMPLE_EVALUATION]]},
    )
    evaluations_file: str | None = Field(
        default=None,
        description=(
            "Path or s3:// URI of a JSON file with a list of evaluations, or an object with an "
            "'evaluations' (or 'metrics') list."
        ),
    )
    batch_size: int = Field(default=50, ge=1, le=1000, description="Assets per task run.")


class QcRow(BaseModel):
    """Outcome for one asset."""

    asset: str
    asset_id: str
    name: str | None = None
    attached: int
    skipped: int
    outcome: str
    detail: str = ""


class QcSummary(BaseModel):
    """What a QC attachment run did."""

    assets: int
    evaluations: int
    attached: int
    skipped: int
    failed_assets: int
    rows: list[QcRow]


class QcAttachmentFailed(RuntimeError, NeurodataError):
    """The API rejected some attachments."""


def _timestamp_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be an ISO 8601 string, got {value!r}"
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return f"is not an ISO 8601 timestamp: {value!r}"
    return None


def _modality_problem(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("abbreviation"), str):
        return None
    return f"must be an object with an 'abbreviation', got {value!r}"[:200]


def _object_problem(
    here: str, value: Any, required: Sequence[str], missing_label: str
) -> str | None:
    """``"<here> must be an object"`` or ``"<here> is missing <label><keys>"``, else None."""
    if not isinstance(value, dict):
        return f"{here} must be an object"
    missing = [k for k in required if k not in value]
    if missing:
        return f"{here} is missing {missing_label}{', '.join(missing)}"
    return None


def _choice_problem(value: Any, allowed: Sequence[str]) -> str | None:
    """``"must be one of [...], got <value>"`` unless ``value`` is one of ``allowed``."""
    return None if value in allowed else f"must be one of {list(allowed)}, got {value!r}"


def _field_problem(where: str, field: str, problem: str | None) -> list[str]:
    """``["<where>.<field> <problem>"]``, or ``[]`` when there is no problem."""
    return [f"{where}.{field} {problem}"] if problem else []


def _object_list_problems(
    where: str,
    field: str,
    items: Any,
    required: Sequence[str],
    missing_label: str,
    item_problems: Callable[[str, dict[str, Any]], list[str]],
) -> list[str]:
    """Problems of ``<where>.<field>``: a non-empty list of objects with ``required`` keys.

    Each item that has the keys is checked further by ``item_problems(path, item)``; the problems
    come in item order.
    """
    if not isinstance(items, list) or not items:
        return [f"{where}.{field} must be a non-empty list"]
    problems: list[str] = []
    for i, item in enumerate(items):
        here = f"{where}.{field}[{i}]"
        shape = _object_problem(here, item, required, missing_label)
        problems += [shape] if shape else item_problems(here, item)
    return problems


def _status_problems(here: str, entry: dict[str, Any]) -> list[str]:
    return [
        *_field_problem(here, "status", _choice_problem(entry["status"], STATUSES)),
        *_field_problem(here, "timestamp", _timestamp_problem(entry["timestamp"])),
    ]


def _history_problems(where: str, history: Any) -> list[str]:
    return _object_list_problems(
        where, "status_history", history, STATUS_REQUIRED, "", _status_problems
    )


def _metric_problems(here: str, metric: dict[str, Any]) -> list[str]:
    return _history_problems(here, metric["status_history"])


def non_finite_values(value: Any, where: str) -> list[str]:
    """Every NaN or infinity inside ``value``, each named by its path.

    JSON has no NaN or infinity: the API would store null, and the evaluation would never be
    recognised as attached again (null != NaN), so every rerun would attach it once more.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where} is {value!r}; JSON cannot carry NaN or infinity"]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in non_finite_values(item, f"{where}.{key}")]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in non_finite_values(item, f"{where}[{i}]")]
    return []


def validate_evaluations(evaluations: list[Any], version: str) -> list[str]:
    """Every problem with the evaluations, each naming where it is; empty when all are valid.

    Args:
        evaluations: v1 QC evaluations or v2 QC metrics.
        version: ``v1`` or ``v2``, the generation of the target collection.
    """
    problems: list[str] = []
    required = V1_REQUIRED if version == "v1" else V2_REQUIRED
    for index, evaluation in enumerate(evaluations):
        where = f"evaluations[{index}]"
        if not isinstance(evaluation, dict):
            problems.append(f"{where} must be a JSON object")
            continue
        label = f"{where} ({evaluation.get('name')!r})" if evaluation.get("name") else where
        problems.extend(non_finite_values(evaluation, label))
        missing = [k for k in required if k not in evaluation]
        if missing:
            problems.append(f"{label} is missing required key(s) {', '.join(missing)}")
            continue
        if not isinstance(evaluation["name"], str) or not evaluation["name"].strip():
            problems.append(f"{label}.name must be a non-empty string")
        problems += _field_problem(label, "stage", _choice_problem(evaluation["stage"], STAGES))
        problems += _field_problem(label, "modality", _modality_problem(evaluation["modality"]))
        if "created" in evaluation:
            problems += _field_problem(label, "created", _timestamp_problem(evaluation["created"]))
        if version == "v1":
            problems += _object_list_problems(
                label,
                "metrics",
                evaluation["metrics"],
                METRIC_REQUIRED,
                "required key(s) ",
                _metric_problems,
            )
        else:
            problems.extend(_history_problems(label, evaluation["status_history"]))
    return problems


def load_evaluations(request: QcAttachmentRequest, aws: Any) -> list[Any]:
    """The evaluations of the request: inline ones plus those of ``evaluations_file``."""
    evaluations: list[Any] = [item.as_json() for item in request.evaluations]
    if request.evaluations_file:
        try:
            document = read_json_uri(request.evaluations_file, aws)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"evaluations_file {request.evaluations_file!r} cannot be read: {exc}"
            ) from exc
        except Exception as exc:  # botocore errors: missing key, no such bucket
            raise ValueError(
                f"evaluations_file {request.evaluations_file!r} cannot be read: {exc}"
            ) from exc
        if isinstance(document, dict):
            document = document.get("evaluations", document.get("metrics"))
        if not isinstance(document, list):
            raise ValueError(
                f"evaluations_file {request.evaluations_file!r} must hold a list of "
                "evaluations or an object with an 'evaluations' list"
            )
        evaluations.extend(document)
    return evaluations


class QcPlan(BaseModel):
    """What a QC attachment run will do, decided by reads only."""

    evaluations: list[dict[str, Any]] = Field(description="Validated evaluations.")
    assets: dict[str, dict[str, Any]] = Field(description="Resolved assets by DocDB _id.")


def plan_qc(request: QcAttachmentRequest, docdb_block: str, aws_block: str | None) -> QcPlan:
    """Load and validate every evaluation and resolve every asset; raises before any write.

    Raises:
        ValueError: Naming every invalid evaluation (field, index, value) or unknown asset.
    """
    block = load_docdb(docdb_block)
    evaluations = load_evaluations(request, aws_block or block.aws_credentials)
    if not evaluations:
        raise ValueError("no QC evaluations given (evaluations and evaluations_file are empty)")
    if not request.assets:
        raise ValueError("no assets given")
    problems = validate_evaluations(evaluations, block.version)
    if problems:
        raise ValueError(
            f"invalid QC evaluation(s) for a {block.version} collection; nothing was written:\n  "
            + "\n  ".join(problems)
        )
    check_docdb(docdb_block)
    refs = [ref.model_dump(exclude_none=True) for ref in request.assets]
    by_id: dict[str, dict[str, Any]] = {}
    for item in resolve_assets(docdb_block, refs):
        by_id.setdefault(item["id"], item)
    return QcPlan(evaluations=evaluations, assets=by_id)


def attach_planned(plan: QcPlan, docdb_block: str, batch_size: int) -> list[QcRow]:
    """Attach the evaluations to every asset in batches (each under a claim on its assets)."""
    assignments = [
        {"asset_id": asset_id, "evaluations": plan.evaluations} for asset_id in plan.assets
    ]
    futures = [
        attach_qc_batch.submit(docdb_block, batch) for batch in chunks(assignments, batch_size)
    ]
    rows: list[QcRow] = []
    for future in futures:
        for outcome in future.result():
            asset = plan.assets[outcome.asset_id]
            rows.append(QcRow(asset=asset["ref"], name=asset["name"], **outcome.model_dump()))
    return rows


def report_qc(summary: QcSummary, evaluations: list[dict[str, Any]]) -> None:
    """Publish the per-asset table and the counts."""
    publish_table(
        ARTIFACT_KEY,
        [row.model_dump() for row in summary.rows],
        f"QC attachment: {summary.attached} attached, {summary.skipped} already attached.",
    )
    names = sorted({str(e.get("name")) for e in evaluations if isinstance(e, dict)})
    shown = ", ".join(f"`{n}`" for n in names[:50])
    if len(names) > 50:
        shown += f" and {len(names) - 50} more (all are in the table's rows)"
    publish_markdown(
        f"{ARTIFACT_KEY}-summary",
        markdown_counts(
            "QC attachment",
            {
                "assets": summary.assets,
                "evaluations per asset": summary.evaluations,
                "attached by this run": summary.attached,
                "already attached (skipped)": summary.skipped,
                "failed assets": summary.failed_assets,
            },
            ["Evaluations: " + shown],
        ),
        "QC attachment counts",
    )


def _run_name() -> str:
    """Flow-run name: how many evaluations go to which assets (``qc 2 evaluation(s) -> x``)."""
    assets = []
    for asset in request_value("assets") or []:
        get = asset.get if isinstance(asset, dict) else lambda k, a=asset: getattr(a, k, None)
        assets.append(str(get("name") or get("location") or get("id") or "?"))
    evaluations = len(request_value("evaluations") or [])
    source = f"{evaluations} evaluation(s)" if evaluations else "evaluations file"
    return f"qc {source} -> {first_and_count(assets, 'assets')}"


@neurodata_flow("aind-qc-attachment", _run_name, max_workers=4)
def attach_qc(
    request: QcAttachmentRequest,
    docdb_block: DocDbBlockName = DEFAULT_DOCDB_BLOCK,
    aws_block: AwsBlockName | None = None,
) -> QcSummary:
    """Validate QC evaluations, resolve the assets, attach what is not attached yet.

    Overlapping runs attach each evaluation once: each batch reads and extends its assets'
    QC under a claim on them (`prefect_neurodata.tasks.claims`).

    Args:
        request: Assets and evaluations (inline or from a JSON file).
        docdb_block: The saved `DocDbApiCredentials` block, by name or picked in the run form
            (its version picks 1.x evaluations or 2.x metrics).
        aws_block: Name of an `AwsCredentials` block for an ``s3://`` evaluations file;
            defaults to the DocDB block's.

    Returns:
        Counts and one row per asset.

    Raises:
        ValueError: Invalid evaluations (including NaN/infinite values), unknown or ambiguous
            assets, or an unreachable DocDB, before any write.
        QcAttachmentFailed: The API rejected some attachments (after the artifact is out).
    """
    inputs = request_inputs(request, docdb_block=docdb_block)
    with failure_report(ARTIFACT_KEY, "QC attachment", inputs):
        plan = plan_qc(request, docdb_block, aws_block)
        get_run_logger().info(
            "attaching %d evaluation(s) to %d asset(s)", len(plan.evaluations), len(plan.assets)
        )
        rows = attach_planned(plan, docdb_block, request.batch_size)
        summary = QcSummary(
            assets=len(rows),
            evaluations=len(plan.evaluations),
            attached=sum(r.attached for r in rows),
            skipped=sum(r.skipped for r in rows),
            failed_assets=sum(r.outcome == "failed" for r in rows),
            rows=rows,
        )
        report_qc(summary, plan.evaluations)
        if summary.failed_assets:
            details = "; ".join(f"{r.asset}: {r.detail}" for r in rows if r.outcome == "failed")
            raise QcAttachmentFailed(f"{summary.failed_assets} asset(s) failed: {details}")
    return summary
