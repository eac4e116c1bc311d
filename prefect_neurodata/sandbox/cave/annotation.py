"""Annotation engine stand-in (``{ae}/annotation/api/v2/aligned_volume/{aligned_volume}``).

Tables with metadata and permissions; post / update / delete / get annotations with schema
validation, as the reference (sections 1.4, 5.2, 5.3) describes AnnotationEngine:

* create table: name must match ``^[a-z_]+[a-z0-9_]*$`` (400 "Table name error"), duplicate name
  400, missing description 404 (sic), reference schemas need an existing ``reference_table``;
  defaults ``read_permission=PUBLIC``, ``write_permission=PRIVATE``, ``user_id`` = caller; the
  response is the plain-text table name.
* table metadata GET answers **201** plus ``Warning: Table Owner Notice: ...`` when a notice is
  set; metadata update and table delete are owner-only (401).
* insert: at most 10,000 annotations (413), schema errors 422 naming the annotation index and the
  field, unknown top-level keys dropped, supplied supervoxel/root ids discarded (the supervoxel
  is looked up from the position at once; root ids are computed at materialization time),
  ``created=now``, ``valid=True``; returns the new ids in input order.
* update: one annotation at a time, ``id`` required, partial updates merged into the old values,
  a superseded row answers 409; the old row gets ``deleted``/``superceded_id``/``valid=False``
  and a new row (new id) is written; answers ``[{"old": new}, ...]``, one per annotation.
* delete: soft (``deleted=now``, ``valid=False``); 404 plain string when no id matched.
* table-level permissions (PUBLIC / GROUP / PRIVATE) on top of the service-level view/edit check.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from prefect_neurodata.sandbox.cave import store
from prefect_neurodata.sandbox.cave.access import (
    check_aligned_volume,
    check_request,
    get_meta,
    json_response,
    notice_headers,
    owner_check,
    read_check,
    read_json,
    readable_meta,
    user_id_of,
    world_of,
    writable_meta,
)
from prefect_neurodata.sandbox.cave.annotation_schema import (
    flatten,
    is_reference_schema,
    lookup_supervoxels,
    nest,
    schema_fields,
    validation_errors,
    whole_float_as_int,
)
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError, parse_int_list

MAX_ANNOTATIONS = 10_000
PERMISSIONS = ("PRIVATE", "GROUP", "PUBLIC")
PREFIX = "/annotation/api/v2/aligned_volume/{aligned_volume}"
_METADATA_KEYS = {
    "description",
    "voxel_resolution_x",
    "voxel_resolution_y",
    "voxel_resolution_z",
    "read_permission",
    "write_permission",
    "user_id",
    "notice_text",
    "flat_segmentation_source",
    "table_metadata",
}
_UPDATABLE = {
    "description",
    "flat_segmentation_source",
    "read_permission",
    "write_permission",
    "user_id",
    "notice_text",
}

router = APIRouter()


router = APIRouter()


def _bad_annotation(index: int, errors: list[str]) -> CaveHTTPError:
    return CaveHTTPError(422, f"annotation {index}: " + "; ".join(errors))


def next_ids(conn: sa.Connection, table: sa.Table, n: int) -> list[int]:
    """The next ``n`` free ids of a live table (hold the table's write lock)."""
    current = conn.execute(sa.select(sa.func.max(table.c.id))).scalar()
    start = int(current or 0) + 1
    return list(range(start, start + n))


def _touch(conn: sa.Connection, meta: dict[str, Any], now: dt.datetime) -> None:
    conn.execute(
        sa.update(store.anno_tables)
        .where(store.anno_tables.c.id == meta["id"])
        .values(last_modified=now)
    )


# --------------------------------------------------------------------------- core operations


def create_table(world: Any, user: Any, body: Any) -> str:
    """Create an annotation table (``POST /table``); returns its name."""
    if not isinstance(body, dict):
        raise CaveHTTPError(400, "Request body must be a JSON object")
    unknown = set(body) - {"schema_type", "table_name", "metadata"}
    if unknown:
        raise CaveHTTPError(400, f"Unknown field(s) in request body: {sorted(unknown)}")
    table_name = body.get("table_name")
    schema_type = body.get("schema_type")
    md = body.get("metadata") or {}
    if not isinstance(table_name, str) or not store.TABLE_NAME_RE.match(table_name):
        raise CaveHTTPError(400, f"Table name error: '{table_name}' must match ^[a-z_]+[a-z0-9_]*$")
    if not isinstance(schema_type, str):
        raise CaveHTTPError(400, "schema_type is required")
    if not isinstance(md, dict):
        raise CaveHTTPError(400, "metadata must be an object")
    unknown = set(md) - _METADATA_KEYS
    if unknown:
        raise CaveHTTPError(400, f"Unknown metadata field(s): {sorted(unknown)}")
    if not md.get("description"):
        raise CaveHTTPError(404, "Table description required")
    res = []
    for axis in "xyz":
        value = md.get(f"voxel_resolution_{axis}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise CaveHTTPError(
                400, f"metadata.voxel_resolution_{axis} must be a positive number, got {value!r}"
            )
        res.append(float(value))
    read_perm = md.get("read_permission") or "PUBLIC"
    write_perm = md.get("write_permission") or "PRIVATE"
    for key, value in (("read_permission", read_perm), ("write_permission", write_perm)):
        if value not in PERMISSIONS:
            raise CaveHTTPError(
                400, f"metadata.{key} must be one of {list(PERMISSIONS)}, got {value!r}"
            )
    fields = schema_fields(world, schema_type)
    table_md = md.get("table_metadata") or {}
    if not isinstance(table_md, dict):
        raise CaveHTTPError(400, "metadata.table_metadata must be an object")
    reference = table_md.get("reference_table")
    owner = md.get("user_id") if md.get("user_id") is not None else user_id_of(user)
    now = store.utcnow()
    with world.lock, world.engine.begin() as conn:
        if is_reference_schema(fields):
            if not reference or reference == table_name:
                raise CaveHTTPError(
                    400, f"Reference schema {schema_type} needs table_metadata.reference_table"
                )
            if store.table_meta_row(conn, world.config.aligned_volume, reference) is None:
                raise CaveHTTPError(400, f"reference_table {reference} does not exist")
        exists = conn.execute(
            sa.select(store.anno_tables.c.id).where(
                store.anno_tables.c.aligned_volume == world.config.aligned_volume,
                store.anno_tables.c.table_name == table_name,
            )
        ).first()
        if exists is not None:
            raise CaveHTTPError(400, f"Table {table_name} already exists")
        conn.execute(
            store.anno_tables.insert().values(
                aligned_volume=world.config.aligned_volume,
                table_name=table_name,
                schema_type=schema_type,
                valid=True,
                created=now,
                deleted=None,
                last_modified=now,
                user_id=str(owner),
                description=str(md["description"]),
                notice_text=_notice(md.get("notice_text")),
                reference_table=reference or None,
                track_target_id_updates=table_md.get("track_target_id_updates"),
                flat_segmentation_source=md.get("flat_segmentation_source"),
                voxel_resolution_x=res[0],
                voxel_resolution_y=res[1],
                voxel_resolution_z=res[2],
                read_permission=read_perm,
                write_permission=write_perm,
                fields=[f.to_json() for f in fields],
            )
        )
        store.forget_table(table_name)
        live = store.live_table(table_name, fields)
        live.drop(conn, checkfirst=True)
        live.create(conn)
    return table_name


def _notice(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return None if text == "" or text.lower() == "none" else text


def insert_annotations(world: Any, user: Any, table_name: str, body: Any) -> list[int]:
    """Insert annotations; returns the new ids in input order."""
    annos = _annotation_list(body, "annotations")
    meta = writable_meta(world, user, table_name)
    fields = store.table_fields(meta)
    rows: list[dict[str, Any]] = []
    supplied: list[int | None] = []
    for i, anno in enumerate(annos):
        if not isinstance(anno, dict):
            raise _bad_annotation(i, ["annotation must be an object"])
        errors = validation_errors(world, meta["schema_type"], anno)
        if errors:
            raise _bad_annotation(i, errors)
        rows.append(flatten(fields, anno, user))
        ident = anno.get("id")
        if ident is not None and (
            not isinstance(ident, int) or isinstance(ident, bool) or ident <= 0
        ):
            raise _bad_annotation(i, [f"id: must be a positive integer, got {ident!r}"])
        supplied.append(ident)
    lookup_supervoxels(world, meta, fields, rows)
    live = store.live_table(table_name, fields)
    now = store.utcnow()
    with store.write_lock(table_name), world.engine.begin() as conn:
        wanted = [s for s in supplied if s is not None]
        if len(set(wanted)) != len(wanted):
            raise CaveHTTPError(400, "duplicate id values in annotations")
        if wanted:
            taken = conn.execute(sa.select(live.c.id).where(live.c.id.in_(wanted))).scalars().all()
            if taken:
                raise CaveHTTPError(
                    400, f"annotation ids already exist in {table_name}: {sorted(taken)[:20]}"
                )
        fresh = iter(
            next_ids(conn, live, len(rows))
            if not wanted
            else _ids_avoiding(conn, live, len(rows), set(wanted))
        )
        ids = [s if s is not None else next(fresh) for s in supplied]
        for r, ident in zip(rows, ids, strict=True):
            r["id"] = ident
        store.insert_rows(conn, live, rows, _new_row_state(now))
        _touch(conn, meta, now)
    return ids


def _new_row_state(now: dt.datetime) -> dict[str, Any]:
    """The book-keeping columns of a freshly written annotation row."""
    return {"created": now, "deleted": None, "superceded_id": None, "valid": True}


def _ids_avoiding(conn: sa.Connection, live: sa.Table, n: int, avoid: set[int]) -> list[int]:
    current = int(conn.execute(sa.select(sa.func.max(live.c.id))).scalar() or 0)
    start = max(current, max(avoid)) + 1
    return list(range(start, start + n))


def _annotation_list(body: Any, key: str) -> list[Any]:
    if not isinstance(body, dict) or key not in body:
        raise CaveHTTPError(400, f"Request body must be an object with '{key}'")
    items = body[key]
    if not isinstance(items, list):
        raise CaveHTTPError(400, f"'{key}' must be a list")
    if len(items) > MAX_ANNOTATIONS:
        raise CaveHTTPError(
            413,
            f"Exceeded the maximum number of annotations per request: "
            f"{len(items)} > {MAX_ANNOTATIONS}",
        )
    return items


def update_annotations(world: Any, user: Any, table_name: str, body: Any) -> dict[int, int]:
    """Update annotations one at a time (invalidate + insert); returns ``{old: new}``."""
    annos = _annotation_list(body, "annotations")
    meta = writable_meta(world, user, table_name)
    fields = store.table_fields(meta)
    live = store.live_table(table_name, fields)
    mapping: dict[int, int] = {}
    for i, anno in enumerate(annos):
        if not isinstance(anno, dict) or not isinstance(anno.get("id"), int):
            raise _bad_annotation(i, ["id: Missing data for required field."])
        old_id = int(anno["id"])
        with store.write_lock(table_name), world.engine.begin() as conn:
            old = conn.execute(sa.select(live).where(live.c.id == old_id)).mappings().first()
            if old is None:
                raise CaveHTTPError(404, f"annotation_id {old_id} not in table {table_name}")
            if old["superceded_id"] is not None or old["deleted"] is not None:
                raise CaveHTTPError(
                    409,
                    f"annotation {old_id} in {table_name} has already been superseded or deleted",
                )
            merged = nest(fields, dict(old))
            merged.update({k: v for k, v in anno.items() if k != "id"})
            errors = validation_errors(world, meta["schema_type"], merged)
            if errors:
                raise _bad_annotation(i, errors)
            row = flatten(fields, merged, user)
            lookup_supervoxels(world, meta, fields, [row])
            new_id = next_ids(conn, live, 1)[0]
            now = store.utcnow()
            row["id"] = new_id
            store.insert_rows(conn, live, [row], _new_row_state(now))
            conn.execute(
                sa.update(live)
                .where(live.c.id == old_id)
                .values(deleted=now, superceded_id=new_id, valid=False)
            )
            _touch(conn, meta, now)
        mapping[old_id] = new_id
    return mapping


def delete_annotations(world: Any, user: Any, table_name: str, body: Any) -> list[int]:
    """Soft-delete annotations; returns the ids marked deleted."""
    ids = _annotation_list(body, "annotation_ids")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise CaveHTTPError(400, "annotation_ids must be a list of integers")
    meta = writable_meta(world, user, table_name)
    live = store.live_table(table_name, store.table_fields(meta))
    now = store.utcnow()
    with store.write_lock(table_name), world.engine.begin() as conn:
        found = (
            conn.execute(sa.select(live.c.id).where(live.c.id.in_(ids), live.c.deleted.is_(None)))
            .scalars()
            .all()
        )
        if not found:
            raise CaveHTTPError(404, text=f"annotation_id {ids} not in table {table_name}")
        conn.execute(sa.update(live).where(live.c.id.in_(found)).values(deleted=now, valid=False))
        _touch(conn, meta, now)
    return sorted(int(i) for i in found)


def update_table_metadata(world: Any, user: Any, body: Any) -> dict[str, Any]:
    """Apply a ``PUT /table`` body (owner only); returns the table's new metadata row."""
    if not isinstance(body, dict) or not isinstance(body.get("table_name"), str):
        raise CaveHTTPError(400, "Request body must be an object with 'table_name'")
    unknown = set(body) - {"table_name", "metadata"}
    if unknown:
        raise CaveHTTPError(400, f"Unknown field(s) in request body: {sorted(unknown)}")
    md = body.get("metadata") or {}
    if not isinstance(md, dict):
        raise CaveHTTPError(400, "metadata must be an object")
    bad = set(md) - _UPDATABLE
    if bad:
        raise CaveHTTPError(400, f"metadata field(s) {sorted(bad)} cannot be updated")
    for key in ("read_permission", "write_permission"):
        if key in md and md[key] not in PERMISSIONS:
            raise CaveHTTPError(
                400, f"metadata.{key} must be one of {list(PERMISSIONS)}, got {md[key]!r}"
            )
    with world.lock, world.engine.begin() as conn:
        meta = get_meta(conn, world, body["table_name"])
        owner_check(user, meta, "update its metadata")
        values = dict(md)
        if "notice_text" in values:
            values["notice_text"] = _notice(values["notice_text"])
        if "user_id" in values:
            values["user_id"] = str(values["user_id"])
        if values:
            values["last_modified"] = store.utcnow()
            conn.execute(
                sa.update(store.anno_tables)
                .where(store.anno_tables.c.id == meta["id"])
                .values(**values)
            )
        return get_meta(conn, world, body["table_name"])


def get_annotations(
    world: Any, user: Any, table_name: str, ids: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Flattened annotation dicts for ``ids`` plus the table metadata."""
    with world.engine.connect() as conn:
        meta = get_meta(conn, world, table_name)
        read_check(world, user, meta)
        fields = store.table_fields(meta)
        live = store.live_table(table_name, fields)
        rows = (
            conn.execute(sa.select(live).where(live.c.id.in_(ids)).order_by(live.c.id))
            .mappings()
            .all()
        )
    if not rows:
        raise CaveHTTPError(404, f"annotation_ids {ids} not found in table {table_name}")
    out = []
    for r in rows:
        item: dict[str, Any] = {
            "id": r["id"],
            "created": store.iso(r["created"]),
            "deleted": store.iso(r["deleted"]),
            "superceded_id": r["superceded_id"],
            "valid": bool(r["valid"]),
        }
        for f in fields:
            if f.kind in ("bound_point", "point"):
                pos = [r[column] for column in store.position_columns(f.name)]
                item[f"{f.name}_position"] = (
                    None if pos[0] is None else [whole_float_as_int(p) for p in pos]
                )
            else:
                item[f.name] = r[f.name]
        out.append(item)
    return out, meta


# --------------------------------------------------------------------------- routes
# Route functions take the user through part A's permission dependencies (view for GET, edit for
# writes), resolved lazily so this module imports before auth.py exists.


def _volume_caller(request: Request, aligned_volume: str, level: str) -> tuple[Any, Any]:
    """World and caller of a route under ``/aligned_volume/{av}``, after the auth and 404 checks.

    Authentication comes before the aligned volume check, as in the real service (an unknown
    caller gets 401, not 404).
    """
    world = world_of(request)
    user = check_request(request, level)
    check_aligned_volume(world, aligned_volume)
    return world, user


@router.get(PREFIX + "/table")
def list_tables(request: Request, aligned_volume: str, filter_valid: str | None = None) -> Response:
    """``GET /table``: names of the aligned volume's tables."""
    world, _ = _volume_caller(request, aligned_volume, "view")
    t = store.anno_tables
    stmt = sa.select(t.c.table_name).where(
        t.c.aligned_volume == aligned_volume, t.c.deleted.is_(None)
    )
    if filter_valid is None or filter_valid.lower() not in ("false", "0", "no"):
        stmt = stmt.where(t.c.valid.is_(True))
    with world.engine.connect() as conn:
        names = conn.execute(stmt.order_by(t.c.table_name)).scalars().all()
    return json_response(list(names))


@router.post(PREFIX + "/table")
async def post_table(request: Request, aligned_volume: str) -> Response:
    """``POST /table``: create a table; answers the plain-text table name."""
    world, user = _volume_caller(request, aligned_volume, "edit")
    body = await read_json(request)
    name = await run_in_threadpool(create_table, world, user, body)
    return Response(name, media_type="text/plain")


@router.put(PREFIX + "/table")
async def put_table(request: Request, aligned_volume: str) -> Response:
    """``PUT /table``: update a table's metadata (owner only)."""
    world, user = _volume_caller(request, aligned_volume, "edit")
    body = await read_json(request)
    meta = await run_in_threadpool(update_table_metadata, world, user, body)
    return json_response(store.public_table_metadata(meta))


@router.get(PREFIX + "/table/{table_name}")
def get_table(request: Request, aligned_volume: str, table_name: str) -> Response:
    """``GET /table/{t}``: table metadata, status 201 (the real quirk)."""
    world, user = _volume_caller(request, aligned_volume, "view")
    meta = readable_meta(world, user, table_name)
    return json_response(store.public_table_metadata(meta), 201, notice_headers(meta))


@router.delete(PREFIX + "/table/{table_name}")
def delete_table(request: Request, aligned_volume: str, table_name: str) -> Response:
    """``DELETE /table/{t}``: soft-delete a table (owner only); answers ``true``."""
    world, user = _volume_caller(request, aligned_volume, "edit")
    with world.lock, world.engine.begin() as conn:
        meta = get_meta(conn, world, table_name)
        owner_check(user, meta, "delete it")
        conn.execute(
            sa.update(store.anno_tables)
            .where(store.anno_tables.c.id == meta["id"])
            .values(deleted=store.utcnow(), valid=False)
        )
    return json_response(True)


@router.get(PREFIX + "/table/{table_name}/count")
def table_count(request: Request, aligned_volume: str, table_name: str) -> Response:
    """``GET /table/{t}/count``: number of rows (including invalidated ones)."""
    world, user = _volume_caller(request, aligned_volume, "view")
    with world.engine.connect() as conn:
        meta = get_meta(conn, world, table_name)
        read_check(world, user, meta)
        live = store.live_table(table_name, store.table_fields(meta))
        n = conn.execute(sa.select(sa.func.count()).select_from(live)).scalar()
    return json_response(int(n or 0))


@router.get(PREFIX + "/table/{table_name}/annotations")
def get_annotations_route(
    request: Request, aligned_volume: str, table_name: str, annotation_ids: str = ""
) -> Response:
    """``GET /table/{t}/annotations?annotation_ids=1,2``: flattened rows."""
    world, user = _volume_caller(request, aligned_volume, "view")
    ids = parse_int_list(
        annotation_ids,
        f"annotation_ids must be comma-separated integers, got {annotation_ids!r}",
    )
    if not ids:
        raise CaveHTTPError(400, "annotation_ids is required")
    items, meta = get_annotations(world, user, table_name, ids)
    return json_response(items, 200, notice_headers(meta))


@router.post(PREFIX + "/table/{table_name}/annotations")
async def post_annotations(request: Request, aligned_volume: str, table_name: str) -> Response:
    """``POST /table/{t}/annotations``: insert; answers the new ids."""
    world, user = _volume_caller(request, aligned_volume, "edit")
    body = await read_json(request)
    ids = await run_in_threadpool(insert_annotations, world, user, table_name, body)
    return json_response(ids)


@router.put(PREFIX + "/table/{table_name}/annotations")
async def put_annotations(request: Request, aligned_volume: str, table_name: str) -> Response:
    """``PUT /table/{t}/annotations``: update; answers ``[{old: new}, ...]``.

    One single-entry mapping per annotation, in request order: the real service collects each
    ``update_annotation`` result (a ``{old_id: new_id}`` dict) in a list, and JSON turns the
    integer keys into strings.
    """
    world, user = _volume_caller(request, aligned_volume, "edit")
    body = await read_json(request)
    mapping = await run_in_threadpool(update_annotations, world, user, table_name, body)
    return json_response([{str(k): v} for k, v in mapping.items()])


@router.delete(PREFIX + "/table/{table_name}/annotations")
async def delete_annotations_route(
    request: Request, aligned_volume: str, table_name: str
) -> Response:
    """``DELETE /table/{t}/annotations``: soft delete; answers ids."""
    world, user = _volume_caller(request, aligned_volume, "edit")
    body = await read_json(request)
    deleted = await run_in_threadpool(delete_annotations, world, user, table_name, body)
    return json_response(deleted)
