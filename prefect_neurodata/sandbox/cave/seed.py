"""Seeding of the CAVE stand-in's annotation tables, views and materialization versions.

:func:`seed_tables` builds a realistic datastack on top of the chunkedgraph world:

* ``synapses`` (schema ``synapse``): contacts between different neurons from
  ``chunkedgraph.sample_contacts`` (pre/post points in two neurons, ctr point between them) and a
  log-normal ``size``; 1,000,000 rows by default.
* ``nucleus_detection`` (``nucleus_detection``): one nucleus per neuron at its soma, with a volume
  and a bounding box.
* ``cell_type_local`` (``cell_type_local``): a cell type per soma point.
* ``cell_type_ref`` (``cell_type_reference`` -> ``nucleus_detection``): exercises
  ``merge_reference`` and the ``_ref`` suffixes.
* ``neuron_tags`` (``bound_tag``, with an owner notice): small, string-heavy.
* views ``large_synapses`` (single table) and ``nucleus_cell_types`` (join).
* three versions straddling the chunkedgraph's edit history: one expired, one in the middle of the
  history, one now (:func:`seed_versions`).

Bulk writes go through the DBAPI directly (``executemany`` of tuples on SQLite, ``COPY`` on
Postgres): 1,000,000 synapses are written in a few seconds.

Example:
    >>> import numpy as np
    >>> seed_tables(world, synapses=5_000, rng=np.random.default_rng(0))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

from prefect_neurodata.sandbox.cave import annotation, materialization, store
from prefect_neurodata.sandbox.cave.errors import CaveHTTPError

SYNAPSE_TABLE = "synapses"
NUCLEUS_TABLE = "nucleus_detection"
CELL_TYPE_TABLE = "cell_type_local"
CELL_TYPE_REF_TABLE = "cell_type_ref"
TAG_TABLE = "neuron_tags"
OWNER_ID = 1  # the sandbox superadmin owns the seeded tables
CELL_TYPES = ("23P", "4P", "5P-IT", "5P-ET", "6P-IT", "BC", "MC", "BPC", "NGC")
TAGS = ("proofread", "axon_clean", "dendrite_clean", "needs_review", "orphan")
_BATCH = 100_000


def materialize(world: Any, timestamp: dt.datetime | float | None = None, **kwargs: Any) -> int:
    """Create a materialization version at ``timestamp`` (default now); returns its number.

    The admin endpoint ``POST /__sandbox__/materialize`` calls the same function. Keyword
    arguments (``days_to_expire``, ``expires_on``) are passed to
    :func:`~.materialization.materialize`.
    """
    return materialization.materialize(world, timestamp, **kwargs)


def reset_tables(world: Any) -> None:
    """Drop every annotation table, version, frozen table and view of the aligned volume."""
    store.ensure_schema(world.engine)
    with world.lock, world.engine.begin() as conn:
        names = (
            conn.execute(
                sa.select(store.anno_tables.c.table_name).where(
                    store.anno_tables.c.aligned_volume == world.config.aligned_volume
                )
            )
            .scalars()
            .all()
        )
        for name in names:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{store.sql_name(name)}"'))
            store.forget_table(name)
        conn.execute(
            sa.delete(store.anno_tables).where(
                store.anno_tables.c.aligned_volume == world.config.aligned_volume
            )
        )
        ds = world.config.datastack
        ids = sa.select(store.mat_tables.c.id).where(store.mat_tables.c.datastack == ds)
        conn.execute(sa.delete(store.mat_chunks).where(store.mat_chunks.c.mat_table_id.in_(ids)))
        conn.execute(sa.delete(store.mat_tables).where(store.mat_tables.c.datastack == ds))
        conn.execute(sa.delete(store.mat_versions).where(store.mat_versions.c.datastack == ds))
        conn.execute(sa.delete(store.views).where(store.views.c.datastack == ds))
    materialization.CACHE.drop_all()


def _owner(world: Any) -> Any:
    user = world.auth.user_by_id(OWNER_ID)
    return user if user is not None else {"id": OWNER_ID, "admin": True}


def _create(world: Any, name: str, schema: str, description: str, **md: Any) -> None:
    res = world.config.voxel_resolution
    metadata = {
        "description": description,
        "voxel_resolution_x": res[0],
        "voxel_resolution_y": res[1],
        "voxel_resolution_z": res[2],
        "read_permission": "PUBLIC",
        "write_permission": "PRIVATE",
    }
    metadata.update(md)
    annotation.create_table(
        world, _owner(world), {"schema_type": schema, "table_name": name, "metadata": metadata}
    )


def _created_at(world: Any, created: dt.datetime) -> None:
    """Backdate the tables' metadata so versions in the past include them."""
    with world.engine.begin() as conn:
        conn.execute(
            sa.update(store.anno_tables)
            .where(store.anno_tables.c.aligned_volume == world.config.aligned_volume)
            .values(created=created, last_modified=created)
        )


def bulk_insert(world: Any, table_name: str, columns: dict[str, Any], created: dt.datetime) -> int:
    """Write rows given as column arrays (ids ``1..n``) into a live table, fast.

    Args:
        world: The CAVE world.
        table_name: Annotation table name (already created).
        columns: ``{column: array}`` for every annotation column (positions split ``_x/_y/_z``,
            supervoxel ids looked up by the caller).
        created: The ``created`` timestamp of every row.

    Returns:
        The number of rows written.
    """
    with world.engine.connect() as conn:
        meta = store.table_meta_row(conn, world.config.aligned_volume, table_name)
    if meta is None:
        raise CaveHTTPError(404, f"table {table_name} not found")
    fields = store.table_fields(meta)
    names = [n for n, _ in store.live_columns(fields)]
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"bulk_insert({table_name}): missing columns {missing}")
    n = len(next(iter(columns.values())))
    cols: dict[str, Any] = {"id": np.arange(1, n + 1, dtype=np.int64)}
    for name in names:
        cols[name] = columns[name]
    table = store.live_table(table_name, fields)
    dialect = world.engine.dialect.name
    if dialect == "postgresql":
        _copy_postgres(world, table, cols, created, n)
    else:
        _executemany(world, table, cols, created, n, dialect)
    return n


def _py(values: Any) -> list[Any]:
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def _executemany(
    world: Any, table: sa.Table, cols: dict[str, Any], created: dt.datetime, n: int, dialect: str
) -> None:
    names = list(cols)
    all_names = ["created", "valid", *names]
    if dialect == "sqlite":
        # SQLAlchemy's SQLite DateTime storage format; booleans are 0/1.
        created_value: Any = created.strftime("%Y-%m-%d %H:%M:%S.%f")
        valid_value: Any = 1
        placeholders = ", ".join("?" for _ in all_names)
        sql = f'INSERT INTO "{table.name}" ({", ".join(all_names)}) VALUES ({placeholders})'
        lists = [_py(cols[c]) for c in names]
        raw = world.engine.raw_connection()
        try:
            cur = raw.cursor()
            for start in range(0, n, _BATCH):
                stop = min(n, start + _BATCH)
                chunk = zip(
                    [created_value] * (stop - start),
                    [valid_value] * (stop - start),
                    *[lst[start:stop] for lst in lists],
                    strict=True,
                )
                cur.executemany(sql, chunk)
            raw.commit()
        finally:
            raw.close()
        return
    lists = [_py(cols[c]) for c in names]
    with world.engine.begin() as conn:
        for start in range(0, n, _BATCH):
            stop = min(n, start + _BATCH)
            rows = [
                {"created": created, "valid": True, **dict(zip(names, vals, strict=True))}
                for vals in zip(*[lst[start:stop] for lst in lists], strict=True)
            ]
            conn.execute(table.insert(), rows)


def _copy_postgres(
    world: Any, table: sa.Table, cols: dict[str, Any], created: dt.datetime, n: int
) -> None:
    names = list(cols)
    created_text = created.strftime("%Y-%m-%d %H:%M:%S.%f")
    raw = world.engine.raw_connection()
    try:
        cur = raw.cursor()
        for start in range(0, n, _BATCH * 5):
            stop = min(n, start + _BATCH * 5)
            arrays = {
                "created": pa.array([created_text] * (stop - start), pa.string()),
                "valid": pa.array(np.ones(stop - start, dtype=bool)),
            }
            for c in names:
                values = cols[c][start:stop]
                arrays[c] = pa.array(values if isinstance(values, np.ndarray) else list(values))
            buf = io.BytesIO()
            pacsv.write_csv(
                pa.table(arrays), buf, pacsv.WriteOptions(include_header=False, delimiter=",")
            )
            buf.seek(0)
            cur.copy_expert(
                f'COPY "{table.name}" ({", ".join(arrays)}) FROM STDIN WITH (FORMAT csv)',
                io.TextIOWrapper(buf, encoding="utf-8"),
            )
        raw.commit()
    finally:
        raw.close()


def seed_tables(
    world: Any,
    synapses: int = 1_000_000,
    rng: np.random.Generator | None = None,
    *,
    versions: bool = True,
) -> dict[str, Any]:
    """Create and fill the annotation tables (replacing any), define views, make versions.

    Args:
        world: The CAVE world; its chunkedgraph must be built.
        synapses: Rows of the synapse table.
        rng: NumPy generator (default ``np.random.default_rng(0)``).
        versions: Also create the default versions (:func:`seed_versions`).

    Returns:
        ``{"tables": {table_name: rows}, "views": [...], "versions": [...]}``.

    Example:
        >>> summary = seed_tables(world, synapses=5_000)  # doctest: +SKIP
        >>> summary["tables"]["synapses"]  # doctest: +SKIP
        5000
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    cg = world.require_chunkedgraph()
    reset_tables(world)
    created = dt.datetime.fromtimestamp(cg.base_timestamp, dt.timezone.utc).replace(tzinfo=None)
    counts: dict[str, int] = {}
    written: dict[str, dict[str, Any]] = {}

    _create(world, SYNAPSE_TABLE, "synapse", "Automated synapse detections (sandbox).")
    syn = cg.sample_contacts(int(synapses), rng) if synapses else None
    cols: dict[str, Any] = {}
    if syn is not None:
        for pt in ("pre_pt", "ctr_pt", "post_pt"):
            pos = syn[f"{pt}_position"]
            for i, a in enumerate("xyz"):
                cols[f"{pt}_position_{a}"] = pos[:, i].astype(np.float64)
        cols["pre_pt_supervoxel_id"] = syn["pre_pt_supervoxel_id"].astype(np.int64)
        cols["post_pt_supervoxel_id"] = syn["post_pt_supervoxel_id"].astype(np.int64)
        cols["size"] = np.round(rng.lognormal(5.5, 0.8, size=int(synapses)), 1)
        counts[SYNAPSE_TABLE] = bulk_insert(world, SYNAPSE_TABLE, cols, created)
        written[SYNAPSE_TABLE] = cols
    else:
        counts[SYNAPSE_TABLE] = 0

    pos, svs = cg.somas()
    k = len(pos)
    _create(world, NUCLEUS_TABLE, "nucleus_detection", "Nucleus detections, one per soma.")
    nuc: dict[str, Any] = {"volume": np.round(rng.uniform(150.0, 450.0, size=k), 3)}
    half = np.array([64, 64, 8])
    for name, p in (("pt", pos), ("bb_start", pos - half), ("bb_end", pos + half)):
        for i, a in enumerate("xyz"):
            nuc[f"{name}_position_{a}"] = p[:, i].astype(np.float64)
    nuc["pt_supervoxel_id"] = svs.astype(np.int64)
    counts[NUCLEUS_TABLE] = bulk_insert(world, NUCLEUS_TABLE, nuc, created)
    written[NUCLEUS_TABLE] = nuc

    types = rng.choice(np.array(CELL_TYPES), size=k)
    _create(world, CELL_TYPE_TABLE, "cell_type_local", "Manual cell types at soma points.")
    ct: dict[str, Any] = {
        "classification_system": ["aibs_coarse"] * k,
        "cell_type": types.tolist(),
        "pt_supervoxel_id": svs.astype(np.int64),
    }
    for i, a in enumerate("xyz"):
        ct[f"pt_position_{a}"] = pos[:, i].astype(np.float64)
    counts[CELL_TYPE_TABLE] = bulk_insert(world, CELL_TYPE_TABLE, ct, created)
    written[CELL_TYPE_TABLE] = ct

    _create(
        world,
        CELL_TYPE_REF_TABLE,
        "cell_type_reference",
        "Cell types attached to nucleus ids.",
        table_metadata={"reference_table": NUCLEUS_TABLE},
    )
    ref = {
        "target_id": np.arange(1, k + 1, dtype=np.int64),
        "classification_system": ["aibs_coarse"] * k,
        "cell_type": types.tolist(),
    }
    counts[CELL_TYPE_REF_TABLE] = bulk_insert(world, CELL_TYPE_REF_TABLE, ref, created)
    written[CELL_TYPE_REF_TABLE] = ref

    m = max(1, k // 2)
    _create(
        world,
        TAG_TABLE,
        "bound_tag",
        "Proofreading tags on neurons.",
        notice_text="Tags are provisional.",
    )
    tags: dict[str, Any] = {
        "tag": rng.choice(np.array(TAGS), size=m).tolist(),
        "pt_supervoxel_id": svs[:m].astype(np.int64),
    }
    for i, a in enumerate("xyz"):
        tags[f"pt_position_{a}"] = pos[:m, i].astype(np.float64)
    counts[TAG_TABLE] = bulk_insert(world, TAG_TABLE, tags, created)
    written[TAG_TABLE] = tags
    _created_at(world, created)

    materialization.define_view(
        world,
        "large_synapses",
        {
            "table": SYNAPSE_TABLE,
            "filter_greater_dict": {SYNAPSE_TABLE: {"size": 500.0}},
            "select_columns": [
                "id",
                "pre_pt_root_id",
                "post_pt_root_id",
                "size",
                "ctr_pt_position",
            ],
        },
        "Synapses larger than 500.",
        live_compatible=True,
    )
    materialization.define_view(
        world,
        "nucleus_cell_types",
        {
            "tables": [[NUCLEUS_TABLE, "id"], [CELL_TYPE_REF_TABLE, "target_id"]],
            "select_column_map": {
                NUCLEUS_TABLE: ["id", "pt_root_id", "pt_position", "volume"],
                CELL_TYPE_REF_TABLE: ["cell_type", "classification_system"],
            },
            "suffix_map": {NUCLEUS_TABLE: "", CELL_TYPE_REF_TABLE: "_ref"},
        },
        "Nuclei with their reference cell types.",
    )
    # The rows just written are the tables' current state: hand them to the version builder
    # instead of reading a million rows back three times.
    cache: dict[Any, Any] = {}
    for name, cols in written.items():
        n = counts[name]
        cache[(name, created)] = {"id": np.arange(1, n + 1, dtype=np.int64), **cols}
    made = seed_versions(world, rows_cache=cache) if versions else []
    return {"tables": counts, "views": ["large_synapses", "nucleus_cell_types"], "versions": made}


def seed_versions(world: Any, rows_cache: dict[Any, Any] | None = None) -> list[int]:
    """Three versions: expired (early in the edit history), mid-history, and now.

    Args:
        world: The CAVE world.
        rows_cache: Optional live-row cache (see :func:`~.materialization.materialize`).

    Returns:
        The version numbers created.
    """
    cg = world.require_chunkedgraph()
    base = float(cg.base_timestamp)
    latest = float(cg.latest_timestamp)
    span = max(latest - base, 3600.0)
    now = store.utcnow()
    past = now - dt.timedelta(days=1)
    cache: dict[Any, Any] = rows_cache if rows_cache is not None else {}
    later = now + dt.timedelta(days=30)
    v1 = materialize(world, base + 0.25 * span, expires_on=past, rows_cache=cache)
    v2 = materialize(world, base + 0.5 * span, expires_on=later, rows_cache=cache)
    v3 = materialize(world, None, expires_on=later, rows_cache=cache)
    materialization.expire_versions(world)
    return [v1, v2, v3]
