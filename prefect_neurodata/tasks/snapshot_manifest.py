"""The manifest of a materialization snapshot: the checkpoint a rerun resumes from, typed.

One manifest per version, next to the Parquet parts it lists::

    {destination}/{datastack}/v{version}/manifest.json
    {destination}/{datastack}/v{version}/{table}/part-00000.parquet ...

It is rewritten atomically after each table, so a run killed midway keeps the tables it
finished; a table whose files all exist with their recorded sha256 is not written again
(`Manifest.is_intact`). Runs on the same version and destination never write it at the same
time: the snapshot flow holds the snapshot's claim (`prefect_neurodata.tasks.claims.exclusive`).

Example:
    ```python
    from prefect_neurodata.tasks.snapshot_manifest import Manifest

    manifest = Manifest.read("/data/snapshots/minnie65_public/v1507")
    if manifest is not None:
        print(sorted(manifest.tables))
    ```
"""

from __future__ import annotations

from typing import Any

from prefect_aws import AwsCredentials
from pydantic import BaseModel, ConfigDict, Field

from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.common import utc_now_iso

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "Manifest", "SnapshotFile", "TableEntry"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "neurodata-cave-snapshot/1"


class SnapshotFile(BaseModel):
    """One Parquet part of a table."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(description="Relative to the version's directory: {table}/part-NNNNN.parquet")
    rows: int
    sha256: str
    bytes: int
    id_range: list[int | None] = Field(description="Half-open [lo, hi) ids; None: open end.")


class TableEntry(BaseModel):
    """One finished table: its verified row count, provenance and files."""

    model_config = ConfigDict(extra="allow")

    rows: int
    expected_rows: int = Field(description="The server's materialized count (equal to rows).")
    schema_type: str | None = None
    voxel_resolution: list[float] | None = None
    reference_table: str | None = None
    desired_resolution: list[float] | None = None
    arrow_schema: list[dict[str, str]] = Field(default_factory=list)
    snapshotted_at: str = Field(default_factory=utc_now_iso)
    files: list[SnapshotFile] = Field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Bytes of all of the table's files."""
        return sum(f.bytes for f in self.files)


class Manifest(storage.JsonDocument):
    """A version's snapshot: what was written, from where, with checksums."""

    format: str = MANIFEST_FORMAT
    datastack: str
    version: int
    version_timestamp: str | None = None
    expires_on: str | None = None
    server: str | None = None
    desired_resolution: list[float] | None = None
    tables: dict[str, TableEntry] = Field(default_factory=dict)
    updated: str | None = None

    @staticmethod
    def uri(root: str) -> str:
        """Where the manifest of the snapshot under ``root`` lives."""
        return storage.join(root, MANIFEST_NAME)

    @classmethod
    def read(cls, root: str, aws: AwsCredentials | None = None) -> Manifest | None:
        """The manifest under ``root``, or None."""
        return cls.read_document(cls.uri(root), aws)

    def write(self, root: str, aws: AwsCredentials | None = None) -> str:
        """Write the manifest atomically; return its location."""
        self.updated = self.updated or utc_now_iso()
        return self.write_document(self.uri(root), aws)

    def is_intact(
        self,
        root: str,
        table: str,
        desired_resolution: list[float] | None,
        aws: AwsCredentials | None = None,
    ) -> bool:
        """Whether ``table`` is recorded at that resolution and every file matches its sha256."""
        entry = self.tables.get(table)
        if entry is None or entry.desired_resolution != desired_resolution:
            return False
        for item in entry.files:
            uri = storage.join(root, item.path)
            if not storage.exists(uri, aws) or storage.sha256_file(uri, aws) != item.sha256:
                return False
        return True

    def record(self, table: str, entry: TableEntry | dict[str, Any]) -> TableEntry:
        """Record a finished table (replacing an earlier entry) and stamp ``updated``."""
        model = entry if isinstance(entry, TableEntry) else TableEntry.model_validate(entry)
        self.tables[table] = model
        self.updated = utc_now_iso()
        return model
