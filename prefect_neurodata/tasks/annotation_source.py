"""The rows of an annotation upload: a CSV or Parquet file (local or ``s3://``) or records.

A source is read once (Arrow for files) and hashed, so the same content always finds the same
ledger; rows are handed out in slices and nested with the row rules of
`prefect_neurodata.clients.cave.annotation_rows`.

Example:
    ```python
    from prefect_neurodata.tasks.annotation_source import read_source

    source = read_source("/data/synapses.csv", None)
    for start, rows in source.batches(10_000):
        annotations = source.annotations(rows, fields)
    ```
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from prefect_aws import AwsCredentials

from prefect_neurodata.clients.cave.annotation_rows import (
    SchemaFields,
    chunk_ranges,
    nest_row,
    typed_row,
)
from prefect_neurodata.clients.http import dumps
from prefect_neurodata.tasks import storage
from prefect_neurodata.tasks.cave import CaveInputError

__all__ = ["Source", "format_of", "read_csv_text", "read_source"]


def format_of(source: str) -> str | None:
    """``"csv"`` (also ``.csv.gz``), ``"parquet"``, or None for anything else."""
    lower = source.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    return None


@dataclass
class Source:
    """The rows to upload, loaded once (Arrow for files), with a content hash."""

    name: str
    sha256: str
    table: pa.Table | None = None
    records: list[dict[str, Any]] | None = None

    @property
    def num_rows(self) -> int:
        """Rows in the source."""
        return self.table.num_rows if self.table is not None else len(self.records or [])

    @property
    def columns(self) -> list[str]:
        """Column names (for records: every key met, in order of appearance)."""
        if self.table is not None:
            return list(self.table.column_names)
        names: dict[str, None] = {}
        for row in self.records or []:
            names.update(dict.fromkeys(row))
        return list(names)

    @property
    def from_csv(self) -> bool:
        """Whether the values are CSV text (typed by the schema before the checks)."""
        return self.table is not None and format_of(self.name) == "csv"

    def batches(self, size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """``(first index, rows)`` for consecutive slices of at most ``size`` rows."""
        for rows in chunk_ranges(self.num_rows, size):
            if self.table is not None:
                yield rows.start, self.table.slice(rows.start, len(rows)).to_pylist()
            else:
                yield rows.start, [dict(r) for r in (self.records or [])[rows.start : rows.stop]]

    def annotations(self, rows: list[dict[str, Any]], fields: SchemaFields) -> list[dict]:
        """Rows of this source as nested annotations (CSV text typed by the schema first)."""
        if self.from_csv:
            rows = [typed_row(r, fields) for r in rows]
        return [nest_row(r, fields) for r in rows]


def read_source(
    uri: str | None, records: list[dict[str, Any]] | None, aws: AwsCredentials | None = None
) -> Source:
    """Read a file (local or ``s3://``, via ``aws`` or the AWS environment) or take records.

    Raises:
        CaveInputError: The file does not exist or cannot be parsed.
    """
    if records is not None:
        digest = hashlib.sha256(dumps(records)).hexdigest()
        return Source(name="records", sha256=digest, records=list(records))
    if uri is None:
        raise CaveInputError("give a source file or records")
    if not storage.exists(uri, aws):
        raise CaveInputError(f"source {uri!r} does not exist")
    data = storage.read_bytes(uri, aws)
    digest = hashlib.sha256(data).hexdigest()
    try:
        if format_of(uri) == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
        else:
            text = gzip.decompress(data) if uri.lower().endswith(".gz") else data
            table = read_csv_text(text)
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise CaveInputError(f"source {uri!r} cannot be read: {exc}") from None
    return Source(name=uri, sha256=digest, table=table)


def read_csv_text(data: bytes) -> pa.Table:
    """Every column of a CSV as text: types are decided by the schema, not by inference.

    A value longer than the parser's block (1 MiB) makes pyarrow fail with "straddling
    object"; the file is then read again in one block, so the row checks can name the file,
    row and field of the long value (`MAX_VALUE_CHARS`) instead of a parser message.
    """
    import pyarrow.csv as pacsv

    header = next(csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")), [])
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header}, strings_can_be_null=True
    )
    try:
        return pacsv.read_csv(io.BytesIO(data), convert_options=convert)
    except pa.ArrowInvalid as exc:
        if "straddling" not in str(exc):
            raise
    whole = pacsv.ReadOptions(block_size=min(len(data) + 1, 2**31 - 1))
    return pacsv.read_csv(io.BytesIO(data), read_options=whole, convert_options=convert)
