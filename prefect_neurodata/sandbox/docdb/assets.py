"""Admin routes of the DocDB stand-in: asset (de)registration, QC evaluations, data summaries.

``register`` stands in for the production pipeline: it reads the top-level core metadata JSON
files at the S3 location (moto in the sandbox), builds the DocDB record and "registers" a Code
Ocean data asset whose id is derived from the location (uuid5), so re-running a demo gives the
same id.
"""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import orjson
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from prefect_neurodata.sandbox.docdb.config import DocDBConfig
from prefect_neurodata.sandbox.docdb.errors import ApiError, bad_request, not_found, run_mongo
from prefect_neurodata.sandbox.docdb.writes import STAMP_FIELD, ensure_unique_locations, now_iso

# Top-level core metadata files per aind-data-schema major version, in the order ``register``
# reads them into a record (the seed writes the same files).
CORE_FILES = {
    "v1": (
        "data_description",
        "subject",
        "procedures",
        "processing",
        "acquisition",
        "instrument",
        "session",
        "rig",
        "quality_control",
    ),
    "v2": (
        "data_description",
        "subject",
        "procedures",
        "instrument",
        "processing",
        "acquisition",
        "quality_control",
        "model",
    ),
}
V1_DESCRIBED_BY = (
    "https://raw.githubusercontent.com/AllenNeuralDynamics/aind-data-schema/main/src/"
    "aind_data_schema/core/metadata.py"
)
QC_STATUSES = ("Pass", "Fail", "Pending")
QC_MISSING_KEYS = "Invalid QC evaluation submission. 'qc_evaluation' field missing required keys."
# Required keys of one submitted item: v1 QCEvaluation, v2 QCMetric.
QC_REQUIRED = {
    "v1": ("modality", "stage", "name", "metrics"),
    "v2": ("name", "modality", "stage", "value", "status_history"),
}
METRIC_REQUIRED = ("name", "value", "status_history")
STATUS_REQUIRED = ("evaluator", "status", "timestamp")


def co_asset_id(location: str) -> str:
    """The Code Ocean asset id the stand-in 'creates' for a location (stable across runs)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "codeocean:" + location))


def split_s3(location: Any) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, prefix)``; 400 naming the value otherwise."""
    if not isinstance(location, str) or not location.startswith("s3://"):
        raise bad_request(f"'s3_location' must look like s3://bucket/prefix, got {location!r}")
    bucket, _, prefix = location[5:].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise bad_request(f"'s3_location' must look like s3://bucket/prefix, got {location!r}")
    return bucket, prefix


class Assets:
    """Admin operations over one metadata collection per version."""

    def __init__(self, config: DocDBConfig) -> None:
        self._config = config
        self._s3 = None

    @property
    def s3(self):
        """boto3 S3 client for the configured endpoint (created on first use)."""
        if self._s3 is None:
            self._s3 = boto3.client(
                "s3",
                endpoint_url=self._config.aws_endpoint_url,
                region_name=self._config.aws_region,
                aws_access_key_id=self._config.access_key_id,
                aws_secret_access_key=self._config.secret_access_key,
                config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._s3

    # -- S3 ------------------------------------------------------------------------------------
    def read_core_files(self, version: str, location: str, *, required: bool) -> dict[str, Any]:
        """Top-level core JSON files at ``location`` (missing ones -> None)."""
        bucket, prefix = split_s3(location)
        try:
            listing = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", Delimiter="/")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket" and not required:
                return dict.fromkeys(CORE_FILES[version])
            raise bad_request(f"Cannot read {location}: {code or exc}") from None
        except BotoCoreError as exc:
            raise ApiError(502, {"message": "Internal server error", "detail": str(exc)}) from None
        keys = {obj["Key"] for obj in listing.get("Contents", [])}
        if required and not keys and not listing.get("CommonPrefixes"):
            raise bad_request(f"No objects found at {location}.")
        core: dict[str, Any] = {}
        for name in CORE_FILES[version]:
            key = f"{prefix}/{name}.json"
            if key not in keys:
                core[name] = None
                continue
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            try:
                core[name] = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise bad_request(f"{name}.json at {location} is not valid JSON: {exc}") from None
        return core

    # -- records -------------------------------------------------------------------------------
    @staticmethod
    def build_record(
        version: str, name: str, location: str, core: dict[str, Any], co_id: str
    ) -> dict[str, Any]:
        """A DocDB record in the collection's generation (section 7 of the reference)."""
        stamp = now_iso()
        if version == "v1":
            status = "Missing" if core.get("subject") is None else "Valid"
            return {
                "describedBy": V1_DESCRIBED_BY,
                "schema_version": "1.2.1",
                "_id": str(uuid.uuid4()),
                "name": name,
                "location": location,
                "created": stamp,
                "last_modified": stamp,
                "metadata_status": status,
                "external_links": {"Code Ocean": [co_id]},
                **core,
            }
        return {
            "_id": str(uuid.uuid4()),
            "object_type": "Metadata",
            "schema_version": "2.0.0",
            "name": name,
            "location": location,
            "other_identifiers": {"Code Ocean": [co_id]},
            "_last_modified": stamp,
            **core,
        }

    def register(self, version: str, coll: Collection, body: Any) -> dict[str, Any]:
        """``POST /{v}/assets/register`` (plain and Code Ocean result forms); 201 body."""
        if not isinstance(body, dict):
            raise bad_request(f"Body must be a JSON object, got {body!r}"[:300])
        co_keys = {"name", "co_asset_id", "co_computation_id"}
        allowed = {"s3_location"} | co_keys
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise bad_request(f"Unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        if "s3_location" not in body:
            raise bad_request("Missing required field 's3_location'.")
        location = body["s3_location"]
        bucket, prefix = split_s3(location)
        location = f"s3://{bucket}/{prefix}"
        is_result = bool(co_keys & set(body))
        if is_result:
            missing = sorted(co_keys - set(body))
            if missing:
                raise bad_request(f"Code Ocean result registration needs field(s) {missing}.")
            for key in sorted(co_keys):
                if not isinstance(body[key], str) or not body[key].strip():
                    raise bad_request(f"'{key}' must be a non-empty string, got {body[key]!r}")
        ensure_unique_locations(coll)
        # A cheap early answer; the unique index below is what makes concurrent calls safe.
        if run_mongo(coll.find_one, {"location": location}, {"_id": 1}) is not None:
            raise _already_registered(location)
        core = self.read_core_files(version, location, required=not is_result)
        if is_result:
            name, co_id = body["name"], body["co_asset_id"]
        else:
            dd = core.get("data_description") or {}
            name = dd.get("name") if isinstance(dd, dict) else None
            name = name or prefix.rsplit("/", 1)[-1]
            co_id = co_asset_id(location)
        record = self.build_record(version, name, location, core, co_id)

        def insert() -> None:
            try:
                coll.insert_one(record)
            except DuplicateKeyError:  # a concurrent call registered it first
                raise _already_registered(location) from None

        run_mongo(insert)
        if is_result:
            return {"message": f"Inserted new DocDB record for result asset {location}."}
        return {
            "message": f"Processed {location} for CO and DocDB registration.",
            "registered_co": True,
            "registered_docdb": True,
        }

    def deregister(self, coll: Collection, body: Any) -> dict[str, Any]:
        """``DELETE /{v}/assets/deregister``; an unknown location answers with false flags."""
        if not isinstance(body, dict):
            raise bad_request(f"Body must be a JSON object, got {body!r}"[:300])
        unknown = sorted(set(body) - {"s3_location"})
        if unknown:
            raise bad_request(f"Unknown field(s) {unknown}; allowed: ['s3_location']")
        if "s3_location" not in body:
            raise bad_request("Missing required field 's3_location'.")
        bucket, prefix = split_s3(body["s3_location"])
        location = f"s3://{bucket}/{prefix}"
        result = run_mongo(coll.delete_one, {"location": location})
        found = result.deleted_count > 0
        return {
            "message": f"Processed {location} for CO and DocDB deregistration.",
            "deregistered_co": found,
            "deregistered_docdb": found,
        }

    # -- QC ------------------------------------------------------------------------------------
    def add_qc_evaluation(self, version: str, coll: Collection, body: Any) -> dict[str, Any]:
        """``POST /{v}/add_qc_evaluation``: v1 appends evaluations, v2 appends metrics."""
        if not isinstance(body, dict):
            raise _qc_error(f"Body must be a JSON object, got {body!r}"[:300])
        unknown = sorted(set(body) - {"qc_evaluation", "data_asset_id"})
        if unknown:
            raise _qc_error(f"Unknown field(s) {unknown}; allowed: data_asset_id, qc_evaluation.")
        asset_id = body.get("data_asset_id")
        if not isinstance(asset_id, str) or not asset_id:
            raise _qc_error(f"'data_asset_id' must be a non-empty string, got {asset_id!r}.")
        items = body.get("qc_evaluation")
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            raise _qc_error(QC_MISSING_KEYS)
        for item in items:
            _validate_qc_item(version, item)
        record = run_mongo(coll.find_one, {"_id": asset_id}, {"quality_control": 1})
        if record is None:
            raise not_found(f"No data asset found with _id {asset_id}.")
        qc = record.get("quality_control")
        if version == "v1":
            if not isinstance(qc, dict):
                qc = {
                    "describedBy": V1_DESCRIBED_BY.replace("metadata.py", "quality_control.py"),
                    "schema_version": "1.2.2",
                    "evaluations": [],
                    "notes": None,
                }
            qc["evaluations"] = [*(qc.get("evaluations") or []), *items]
        else:
            if not isinstance(qc, dict):
                qc = {
                    "object_type": "Quality control",
                    "metrics": [],
                    "default_grouping": ["modality"],
                    "allow_tag_failures": [],
                    "key_experimenters": [],
                }
            qc["metrics"] = [*(qc.get("metrics") or []), *items]
        result = run_mongo(
            coll.update_one,
            {"_id": asset_id},
            {"$set": {"quality_control": qc, STAMP_FIELD[version]: now_iso()}},
        )
        return {"acknowledged": True, "matchedCount": result.matched_count}

    # -- summary -------------------------------------------------------------------------------
    def data_summary(self, version: str, coll: Collection, record_id: str) -> dict[str, Any]:
        """``GET /{v}/data_summary/{id}``: a deterministic stand-in for the LLM summary."""
        record = run_mongo(coll.find_one, {"_id": record_id})
        if record is None:
            raise not_found(f"No data asset found with _id {record_id}.")
        return {
            "message": summarize(version, record),
            "parameters": {
                "docdb_id": record_id,
                "langchain_hub_prompt_id": "sandbox/data-summary",
                "bedrock_chat_model_name": "sandbox-deterministic-summary",
                "bedrock_chat_model_kwargs": {"temperature": 0},
            },
        }


def _already_registered(location: str) -> ApiError:
    return ApiError(409, {"error": "Conflict", "detail": f"{location} is already registered."})


def _qc_error(detail: str) -> ApiError:
    return ApiError(400, {"detail": detail, "error": "BadRequest"})


def _validate_qc_item(version: str, item: Any) -> None:
    if not isinstance(item, dict) or any(k not in item for k in QC_REQUIRED[version]):
        raise _qc_error(QC_MISSING_KEYS)
    metrics = item["metrics"] if version == "v1" else [item]
    if not isinstance(metrics, list):
        raise _qc_error(
            f"Invalid QC evaluation submission. 'metrics' must be a list in {item!r}"[:300]
        )
    for metric in metrics:
        if not isinstance(metric, dict) or any(k not in metric for k in METRIC_REQUIRED):
            raise _qc_error(QC_MISSING_KEYS)
        history = metric["status_history"]
        if not isinstance(history, list) or not history:
            raise _qc_error(
                f"Invalid QC evaluation submission. metric {metric.get('name')!r}:"
                " 'status_history' must be a non-empty list."
            )
        for i, entry in enumerate(history):
            if not isinstance(entry, dict) or any(k not in entry for k in STATUS_REQUIRED):
                raise _qc_error(QC_MISSING_KEYS)
            if entry["status"] not in QC_STATUSES:
                raise _qc_error(
                    f"Invalid QC evaluation submission. metric {metric.get('name')!r}:"
                    f" status_history[{i}].status must be one of {list(QC_STATUSES)},"
                    f" got {entry['status']!r}."
                )


def _get(record: dict, *path: str) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def summarize(version: str, record: dict) -> str:
    """A deterministic, human-readable summary of a record (same record -> same text)."""
    dd = record.get("data_description") or {}
    modalities = dd.get("modality" if version == "v1" else "modalities") or []
    names = sorted(
        m.get("name") or m.get("abbreviation") or "?" for m in modalities if isinstance(m, dict)
    )
    subject_id = _get(record, "subject", "subject_id") or dd.get("subject_id") or "unknown"
    level = dd.get("data_level") or "unknown level"
    parts = [
        f"{record.get('name', record.get('_id'))} is a {level} data asset from subject {subject_id}"
    ]
    if names:
        parts.append(f"with modalities {', '.join(names)}")
    platform = _get(record, "data_description", "platform", "name")
    if platform:
        parts.append(f"acquired on the {platform} platform")
    created = dd.get("creation_time")
    if created:
        parts.append(f"created {created}")
    text = " ".join(parts) + "."
    project = dd.get("project_name")
    if project:
        text += f" Project: {project}."
    if version == "v1":
        processes = _get(record, "processing", "processing_pipeline", "data_processes") or []
    else:
        processes = _get(record, "processing", "data_processes") or []
    if processes:
        text += f" Processing: {len(processes)} step(s)."
    qc = record.get("quality_control") or {}
    entries = qc.get("evaluations" if version == "v1" else "metrics") or []
    if entries:
        label = "evaluation(s)" if version == "v1" else "metric(s)"
        text += f" Quality control: {len(entries)} {label}."
    text += f" Location: {record.get('location', 'unknown')}."
    return text
