"""Writes of the DocDB stand-in, shaped like the Lambda's Node driver calls and answers.

``insert_one``, ``update_one``, ``delete_one``/``delete_many`` and ordered ``bulk_write`` bodies
are checked here (400 before MongoDB sees them), stamped with the server's modification time
(`STAMP_FIELD`, `now_iso`) and answered in the driver's result shapes. The unique ``location``
index that keeps asset registrations from colliding lives here too: it is what makes a
concurrent duplicate write fail. Reads are in ``store.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import pymongo
from pymongo import (
    DeleteMany,
    DeleteOne,
    InsertOne,
    ReplaceOne,
    UpdateMany,
    UpdateOne,
)
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, PyMongoError

from prefect_neurodata.sandbox.docdb.errors import bad_request, mongo_error, run_mongo

logger = logging.getLogger("prefect_neurodata.sandbox.docdb")

# Asset records are unique by location (reference 7.1: "location ... unique"). A unique index
# enforces it atomically, as a production database would: of N concurrent registrations of one
# location exactly one lands. Records without a string location stay allowed (partial index).
UNIQUE_FIELD = "location"
_UNIQUE_INDEX = "location_unique"
_unique_ready: set[tuple[int, str]] = set()
_unique_lock = threading.Lock()
STAMP_FIELD = {"v1": "last_modified", "v2": "_last_modified"}


def now_iso() -> str:
    """UTC now as ISO 8601 with ``Z`` (the format of new records' timestamps)."""
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def ensure_unique_locations(coll: Collection) -> bool:
    """Make ``location`` unique in ``coll`` with a unique index (once per process and collection).

    A plain ``location`` index left by an older stand-in is replaced. When existing records
    already share a location the index cannot be built: that is logged and False returned (the
    callers then fall back to their check-before-insert).
    """
    key = (id(coll.database.client), coll.full_name)
    if key in _unique_ready:
        return True
    with _unique_lock:
        if key in _unique_ready:
            return True
        try:
            info = coll.index_information()
            for name, spec in info.items():
                if spec.get("key") == [(UNIQUE_FIELD, 1)] and not spec.get("unique"):
                    coll.drop_index(name)
            coll.create_index(
                [(UNIQUE_FIELD, pymongo.ASCENDING)],
                name=_UNIQUE_INDEX,
                unique=True,
                partialFilterExpression={UNIQUE_FIELD: {"$type": "string"}},
            )
        except PyMongoError as exc:
            logger.error("no unique index on %s.%s: %s", coll.full_name, UNIQUE_FIELD, exc)
            return False
        _unique_ready.add(key)
        return True


def parse_upsert(value: Any, where: str) -> bool:
    """The client sends ``"True"`` (a string); booleans and ``"False"`` are accepted too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_request(f'{where}: \'upsert\' must be true/false or "True"/"False", got {value!r}')


def stamp_update(update: Any, field: str | None, stamp: str, where: str) -> Any:
    """Validate an update document and add the server's modification stamp."""
    if isinstance(update, list):
        if not all(isinstance(stage, dict) for stage in update) or not update:
            raise mongo_error(
                f"{where}: an update pipeline must be a non-empty array of stages", None
            )
        return [*update, {"$set": {field: stamp}}] if field else update
    if not isinstance(update, dict) or not update:
        raise mongo_error(
            f"{where}: Update document requires atomic operators", None, "MongoInvalidArgumentError"
        )
    for key in update:
        if not key.startswith("$"):
            raise mongo_error(
                f"{where}: Update document requires atomic operators (got key {key!r})",
                None,
                "MongoInvalidArgumentError",
            )
    if field is None:
        return update
    update = dict(update)
    set_doc = update.get("$set", {})
    if not isinstance(set_doc, dict):
        raise mongo_error(f"{where}: $set must be an object, got {set_doc!r}")
    update["$set"] = {**set_doc, field: stamp}
    return update


def _require_object(value: Any, name: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise bad_request(f"{where}: '{name}' must be a JSON object, got {value!r}")
    return value


def _check_keys(body: dict, required: set[str], optional: set[str], where: str) -> None:
    missing = sorted(required - set(body))
    if missing:
        raise bad_request(f"{where}: missing required field(s) {missing}")
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise bad_request(
            f"{where}: unknown field(s) {unknown}; allowed: {sorted(required | optional)}"
        )


def insert_one(coll: Collection, doc: Any, field: str | None) -> dict:
    """``insert_one``: the body is the record; a missing ``_id`` gets a UUID4 string."""
    doc = _require_object(doc, "body", "insert_one")
    doc = dict(doc)
    if "_id" not in doc or doc["_id"] is None:
        doc["_id"] = str(uuid.uuid4())
    if field:
        doc[field] = now_iso()
    result = run_mongo(coll.insert_one, doc)
    return {"acknowledged": True, "insertedId": result.inserted_id}


def update_one(coll: Collection, body: Any, field: str | None) -> dict:
    """``update_one`` with ``{"filter", "update", "upsert"?}``."""
    body = _require_object(body, "body", "update_one")
    _check_keys(body, {"filter", "update"}, {"upsert", "arrayFilters"}, "update_one")
    filt = _require_object(body["filter"], "filter", "update_one")
    upsert = parse_upsert(body.get("upsert", False), "update_one")
    update = stamp_update(body["update"], field, now_iso(), "update_one")
    kwargs: dict[str, Any] = {"upsert": upsert}
    if "arrayFilters" in body:
        kwargs["array_filters"] = body["arrayFilters"]
    result = run_mongo(coll.update_one, filt, update, **kwargs)
    return {
        "acknowledged": True,
        "modifiedCount": result.modified_count,
        "upsertedId": result.upserted_id,
        "upsertedCount": 1 if result.upserted_id is not None else 0,
        "matchedCount": result.matched_count,
    }


def delete(coll: Collection, body: Any, many: bool) -> dict:
    """``delete_one`` / ``delete_many`` with ``{"filter"}``."""
    where = "delete_many" if many else "delete_one"
    body = _require_object(body, "body", where)
    _check_keys(body, {"filter"}, set(), where)
    filt = _require_object(body["filter"], "filter", where)
    fn = coll.delete_many if many else coll.delete_one
    result = run_mongo(fn, filt)
    return {"acknowledged": True, "deletedCount": result.deleted_count}


_BULK_NAMES = {
    "insertone": "insertOne",
    "updateone": "updateOne",
    "updatemany": "updateMany",
    "replaceone": "replaceOne",
    "deleteone": "deleteOne",
    "deletemany": "deleteMany",
}


def _bulk_op(index: int, item: Any, field: str | None, stamp: str) -> Any:
    where = f"bulk_write operation [{index}]"
    if not isinstance(item, dict) or len(item) != 1:
        raise bad_request(
            f"{where}: must be an object with exactly one key among {sorted(_BULK_NAMES.values())}"
            f" (e.g. UpdateOne), got {item!r}"[:500]
        )
    ((name, spec),) = item.items()
    kind = _BULK_NAMES.get(name.lower())
    if kind is None:
        raise bad_request(
            f"{where}: unknown operation {name!r}; allowed: {sorted(_BULK_NAMES.values())}"
        )
    spec = _require_object(spec, name, where)
    if kind == "insertOne":
        _check_keys(spec, {"document"}, set(), where)
        doc = dict(_require_object(spec["document"], "document", where))
        if doc.get("_id") is None:
            doc["_id"] = str(uuid.uuid4())
        if field:
            doc[field] = stamp
        return InsertOne(doc)
    if kind in ("updateOne", "updateMany"):
        _check_keys(spec, {"filter", "update"}, {"upsert", "arrayFilters"}, where)
        filt = _require_object(spec["filter"], "filter", where)
        update = stamp_update(spec["update"], field, stamp, where)
        upsert = parse_upsert(spec.get("upsert", False), where)
        cls = UpdateOne if kind == "updateOne" else UpdateMany
        return cls(filt, update, upsert=upsert, array_filters=spec.get("arrayFilters"))
    if kind == "replaceOne":
        _check_keys(spec, {"filter", "replacement"}, {"upsert"}, where)
        filt = _require_object(spec["filter"], "filter", where)
        replacement = dict(_require_object(spec["replacement"], "replacement", where))
        if any(k.startswith("$") for k in replacement):
            raise mongo_error(
                f"{where}: Replacement document must not contain atomic operators",
                None,
                "MongoInvalidArgumentError",
            )
        if field:
            replacement[field] = stamp
        return ReplaceOne(filt, replacement, upsert=parse_upsert(spec.get("upsert", False), where))
    _check_keys(spec, {"filter"}, set(), where)
    filt = _require_object(spec["filter"], "filter", where)
    return DeleteOne(filt) if kind == "deleteOne" else DeleteMany(filt)


def _bulk_shape(raw: Mapping[str, Any], inserted: list[dict]) -> dict:
    return {
        "ok": 1,
        "writeErrors": [
            {"index": e.get("index"), "code": e.get("code"), "errmsg": e.get("errmsg")}
            for e in raw.get("writeErrors", [])
        ],
        "insertedIds": inserted,
        "nInserted": raw.get("nInserted", 0),
        "nUpserted": raw.get("nUpserted", 0),
        "nMatched": raw.get("nMatched", 0),
        "nModified": raw.get("nModified", 0),
        "nRemoved": raw.get("nRemoved", 0),
        "upserted": [{"index": u["index"], "_id": u["_id"]} for u in raw.get("upserted", [])],
    }


def bulk_write(coll: Collection, body: Any, field: str | None) -> tuple[int, dict]:
    """Ordered ``bulk_write`` of Node-driver operations; returns ``(status, result)``.

    On a write error the batch stops (ordered, like the driver's default) and the answer is a
    400 whose body still carries the counts and the failing ``index``, so a caller knows exactly
    which operations landed.
    """
    if not isinstance(body, list):
        raise bad_request(
            f"bulk_write: body must be a JSON array of operations, got {body!r}"[:500]
        )
    if not body:
        raise mongo_error(
            "Invalid BulkOperation, Batch cannot be empty", None, "MongoInvalidArgumentError"
        )
    stamp = now_iso()
    ops = [_bulk_op(i, item, field, stamp) for i, item in enumerate(body)]
    inserted = [
        {"index": i, "_id": op._doc["_id"]} for i, op in enumerate(ops) if isinstance(op, InsertOne)
    ]
    try:
        result = run_mongo(coll.bulk_write, ops, ordered=True)
    except BulkWriteError as exc:
        raw = exc.details
        errors = raw.get("writeErrors") or [{}]
        stop = errors[0].get("index", len(ops))
        # Ordered: only operations before the first failing one were applied.
        shape = _bulk_shape(raw, [d for d in inserted if d["index"] < stop])
        first = shape["writeErrors"][0] if shape["writeErrors"] else {}
        shape = {
            "error": "MongoBulkWriteError",
            "detail": first.get("errmsg", "bulk write failed"),
            **shape,
        }
        return 400, shape
    return 200, _bulk_shape(result.bulk_api_result, inserted)
