"""Retryable Prefect tasks over the CAVE services, one batch or partition per task.

The tasks live in one module per service; this module gathers them (the import path flows,
deployments and users have used since the first release):

* `prefect_neurodata.tasks.cave_common`: block and client reuse, task options, errors;
* `prefect_neurodata.tasks.cave_auth`: access checks (datastack, token and table permissions);
* `prefect_neurodata.tasks.cave_materialization`: versions, tables, partitions, Parquet parts,
  and the snapshot's one set-up task (`plan_snapshot`);
* `prefect_neurodata.tasks.cave_annotation`: tables, schemas, id checks, chunk uploads;
* `prefect_neurodata.tasks.cave_chunkedgraph`: roots and their lineage.

Every task takes the `CaveCredentials` block (or, better, its saved *name*) and gets its
`CAVEclient` from the process: a saved block is read once per flow run, and a client is built
once per flow run and worker thread (keyed by the block's settings and a hash of its token),
so partition tasks skip the repeated block reads and client set-up. No live client or token
crosses a task boundary as a parameter or result: results are small, secret-free values
(counts, ids, paths, checksums). Bulk data moves as files: a snapshot partition is written to
Parquet by the task that fetched it.

Retries: the HTTP core already retries transient failures of idempotent requests; the task
level retries a batch the core gave up on, for transient errors only (`retries.task_options`),
so a schema error, an unknown table or a missing permission fails at once.

Caching: reads of a *frozen* materialization version (tables, row counts, partition plans)
use ``INPUTS + TASK_SOURCE``: a version never changes, so a rerun reuses them. Everything else,
and every write, uses ``NONE``.

Tags: ``cave`` on every task, ``write`` on tasks that change CAVE, so operators can set
concurrency limits (``prefect concurrency-limit create cave 8``).

Example:
    ```python
    from prefect import flow
    from prefect_neurodata.tasks.cave import check_cave_access, get_roots

    @flow
    def roots_of(supervoxels: list[int]) -> list[int]:
        check_cave_access("neurodata-cave", "minnie65_public", "view")
        return get_roots("neurodata-cave", "minnie65_public", supervoxels)
    ```
"""

from __future__ import annotations

from prefect_neurodata.clients.cave.annotation_rows import fingerprint
from prefect_neurodata.tasks.cave_annotation import (
    MAX_CHUNK,
    ChunkReconcileError,
    check_annotation_ids,
    count_annotations,
    create_annotation_table,
    get_annotation_schema,
    get_annotation_table,
    reconcile_chunk,
    upload_annotation_chunk,
)
from prefect_neurodata.tasks.cave_auth import check_cave_access, table_permission_problem
from prefect_neurodata.tasks.cave_chunkedgraph import get_latest_roots, get_roots, is_latest_roots
from prefect_neurodata.tasks.cave_common import (
    FROZEN_OPTIONS,
    LIVE_OPTIONS,
    Cave,
    CaveInputError,
    CavePermissionError,
    cave_client,
    json_safe,
    load_cave,
)
from prefect_neurodata.tasks.cave_materialization import (
    DEFAULT_ROWS_PER_PART,
    SnapshotPart,
    SnapshotPlan,
    TablePlan,
    count_version_rows,
    list_version_tables,
    plan_snapshot,
    plan_table_partitions,
    resolve_materialization_version,
    snapshot_table_part,
    snapshot_table_parts,
)

__all__ = [
    "DEFAULT_ROWS_PER_PART",
    "FROZEN_OPTIONS",
    "LIVE_OPTIONS",
    "MAX_CHUNK",
    "Cave",
    "CaveInputError",
    "CavePermissionError",
    "ChunkReconcileError",
    "SnapshotPart",
    "SnapshotPlan",
    "TablePlan",
    "cave_client",
    "check_annotation_ids",
    "check_cave_access",
    "count_annotations",
    "count_version_rows",
    "create_annotation_table",
    "fingerprint",
    "get_annotation_schema",
    "get_annotation_table",
    "get_latest_roots",
    "get_roots",
    "is_latest_roots",
    "json_safe",
    "list_version_tables",
    "load_cave",
    "plan_snapshot",
    "plan_table_partitions",
    "reconcile_chunk",
    "resolve_materialization_version",
    "snapshot_table_part",
    "snapshot_table_parts",
    "table_permission_problem",
    "upload_annotation_chunk",
]
