"""The annotation upload's request, its summary and where its ledger lives.

`AnnotationUploadRequest` is the flow's parameter: Prefect builds the run form from it and
checks it (with the client's own table-name and resolution rules) before a run exists.
`ledger_dir_for` derives the ledger of one exact upload from a content hash of its source, so
a rerun of the same upload finds the same ledger (see `prefect_neurodata.flows.annotation_upload`).

Example:
    ```python
    from prefect_neurodata.flows.annotation_request import AnnotationUploadRequest, NewTable

    request = AnnotationUploadRequest(
        table="my_synapses",
        source="s3://lab-bucket/annotations/synapses.parquet",
        create=NewTable(schema_type="synapse", description="Manual synapses [A.B.]"),
    )
    ```
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from prefect_aws import AwsCredentials
from pydantic import BaseModel, Field, field_validator, model_validator

from prefect_neurodata.clients.cave.annotationengine import (
    checked_table_name,
    checked_voxel_resolution,
)
from prefect_neurodata.flows.parameters import CaveTableName
from prefect_neurodata.settings import NeurodataSettings
from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.annotation_source import Source, format_of, read_source
from prefect_neurodata.tasks.cave import MAX_CHUNK

__all__ = [
    "LEDGER_DIRNAME",
    "AnnotationUploadRequest",
    "AnnotationUploadSummary",
    "NewTable",
    "ledger_dir_for",
    "load_source",
]

LEDGER_DIRNAME = ".neurodata-ledger"
"""The ledger directory created next to a source file when no ``ledger_location`` is given."""


class NewTable(BaseModel):
    """How to create the table when it does not exist."""

    schema_type: str = Field(description="Annotation schema, e.g. synapse or cell_type_local.")
    description: str = Field(min_length=1, description="What the table holds and who made it.")
    voxel_resolution: list[float] = Field(
        default_factory=lambda: [4.0, 4.0, 40.0],
        description="nm per voxel of the positions in the source.",
    )
    reference_table: CaveTableName | None = Field(
        default=None, description="Target table of a reference schema."
    )
    read_permission: Literal["PUBLIC", "GROUP", "PRIVATE"] = Field(
        default="PUBLIC", description="Who may read the table."
    )
    write_permission: Literal["PUBLIC", "GROUP", "PRIVATE"] = Field(
        default="PRIVATE", description="Who may write to the table."
    )
    notice_text: str | None = Field(default=None, description="Notice shown to readers.")

    @field_validator("voxel_resolution")
    @classmethod
    def _resolution(cls, value: list[float]) -> list[float]:
        return checked_voxel_resolution(value)

    @field_validator("reference_table")
    @classmethod
    def _reference_table(cls, value: str | None) -> str | None:
        return None if value is None else checked_table_name(value, "reference_table")


class AnnotationUploadRequest(BaseModel):
    """What to upload, where to, and how."""

    table: CaveTableName = Field(description="Annotation table (lower-case letters, digits, _).")
    datastack: str | None = Field(
        default=None, description="Datastack; None uses the CAVE block's datastack."
    )
    mode: Literal["insert", "update", "delete"] = Field(
        default="insert",
        description="insert new rows, update rows by id, or delete rows by id.",
    )
    source: str | None = Field(
        default=None, description="CSV or Parquet file: local path or s3:// URI."
    )
    records: list[dict[str, Any]] | None = Field(
        default=None, description="Rows given inline (small uploads; parameters cap at 512 KB)."
    )
    create: NewTable | None = Field(
        default=None, description="Table definition, used when the table does not exist."
    )
    chunk_size: int = Field(
        default=MAX_CHUNK, ge=1, le=MAX_CHUNK, description="Rows per request (at most 10,000)."
    )
    ledger_location: str | None = Field(
        default=None,
        description="Directory (local or s3://) for the upload ledger; default next to the "
        "source, or NEURODATA_LEDGER_DIR / ~/.neurodata/ledgers for inline records.",
    )

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        return checked_table_name(value, "table")

    @model_validator(mode="after")
    def _one_source(self) -> AnnotationUploadRequest:
        if (self.source is None) == (self.records is None):
            raise ValueError("give exactly one of source (a file or URI) and records")
        if self.source is not None and not format_of(self.source):
            raise ValueError(f"source {self.source!r}: expected a .csv, .csv.gz or .parquet file")
        return self


class AnnotationUploadSummary(BaseModel):
    """What an upload run did."""

    datastack: str
    table: str
    mode: str
    rows: int
    chunks: int
    chunks_sent: int
    chunks_skipped: int = Field(description="Chunks a previous run had already finished.")
    chunks_resumed: int = Field(description="Chunks whose lost answer was reconciled.")
    table_created: bool
    ledger: str
    id_map: str | None = Field(description="CSV of source row -> id (or old id -> new id).")


# ------------------------------------------------------------------------------ the source
def load_source(request: AnnotationUploadRequest, aws: AwsCredentials | None = None) -> Source:
    """The request's source (file, URI or records), read once and hashed (`read_source`)."""
    return read_source(request.source, request.records, aws)


# ------------------------------------------------------------------------------ ledger
def ledger_dir_for(
    request: AnnotationUploadRequest, source: Source, datastack: str
) -> tuple[str, str]:
    """``(key, directory)`` of the ledger of this exact upload."""
    key_text = "|".join(
        [source.sha256, datastack, request.table, request.mode, str(request.chunk_size)]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    if request.ledger_location:
        base = request.ledger_location
    elif request.source is not None:
        if storage.is_s3(request.source):
            base = request.source.rsplit("/", 1)[0] + "/" + LEDGER_DIRNAME
        else:
            base = str(Path(request.source).absolute().parent / LEDGER_DIRNAME)
    else:
        base = str(NeurodataSettings().neurodata_ledger_dir)
    return key, storage.join(base, f"{request.table}-{request.mode}-{key}")
