"""Arrow IPC encoding of materialization query results, as the real server sends them.

The real MaterializationEngine builds one ``RecordBatch`` with ``RecordBatch.from_pandas`` from a
frame whose columns carry pandas nullable dtypes (``direct_sql_pandas``: BigInteger -> ``Int64``,
Integer -> ``Int32``, Float -> ``Float32``, Boolean -> ``boolean``) and writes it as an Arrow IPC
*stream* with ``Content-Type: data.arrow``. IPC buffers are compressed with ZSTD when ``zstd`` is in
``Accept-Encoding`` (LZ4_FRAME when ``lz4`` is), unless ``ipc_compress=false``.

Here the frame never exists: results are Arrow tables from start to end, and the ``pandas`` schema
metadata that ``from_pandas`` would have embedded is generated directly, so the client's
``read_pandas()`` sees exactly the dtypes it would see against the real server. Position columns
are plain numpy ``int64`` (``float64`` once scaled), as the reference recommends.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

ARROW_MEDIA_TYPE = "data.arrow"

_NULLABLE_BY_TYPE: dict[pa.DataType, tuple[str, str]] = {
    pa.int64(): ("int64", "Int64"),
    pa.int32(): ("int32", "Int32"),
    pa.float32(): ("float32", "Float32"),
    pa.bool_(): ("bool", "boolean"),
}


def _column_meta(field: pa.Field, plain: bool) -> dict[str, object]:
    t = field.type
    meta: dict[str, object] = {"name": field.name, "field_name": field.name, "metadata": None}
    if pa.types.is_timestamp(t):
        meta.update(
            pandas_type="datetimetz" if t.tz else "datetime", numpy_type=f"datetime64[{t.unit}]"
        )
        if t.tz:
            meta["metadata"] = {"timezone": t.tz}
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        meta.update(pandas_type="unicode", numpy_type="str")
    elif not plain and t in _NULLABLE_BY_TYPE:
        pandas_type, numpy_type = _NULLABLE_BY_TYPE[t]
        meta.update(pandas_type=pandas_type, numpy_type=numpy_type)
    elif pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        meta.update(pandas_type=f"list[{t.value_type}]", numpy_type="object")
    else:
        name = str(np.dtype(t.to_pandas_dtype()))
        meta.update(pandas_type=name, numpy_type=name)
    return meta


def pandas_metadata(schema: pa.Schema, plain_columns: Iterable[str] = ()) -> dict[bytes, bytes]:
    """Schema metadata equivalent to what ``pa.Schema.from_pandas`` writes for the server's frame.

    Args:
        schema: The Arrow schema of the result.
        plain_columns: Columns to mark as plain numpy dtypes (position columns); every other
            integer, float32 and boolean column is marked with the pandas nullable dtype.

    Returns:
        ``{b"pandas": <json>}`` for ``schema.with_metadata``.
    """
    plain = set(plain_columns)
    doc = {
        "index_columns": [],
        "column_indexes": [],
        "columns": [_column_meta(f, f.name in plain) for f in schema],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "3.0.0",
    }
    return {b"pandas": json.dumps(doc).encode()}


def _accepted_encodings(accept_encoding: str) -> set[str]:
    """The codings an ``Accept-Encoding`` value names, lower-case, without ``;q=`` weights."""
    return {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}


def ipc_codec(accept_encoding: str | None, ipc_compress: bool = True) -> str | None:
    """The IPC buffer codec the real server picks from ``Accept-Encoding``."""
    if not ipc_compress or not accept_encoding:
        return None
    accepted = _accepted_encodings(accept_encoding)
    if "zstd" in accepted:
        return "zstd"
    if "lz4" in accepted:
        return "lz4"
    return None


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when the client accepts an HTTP-level gzip body."""
    if not accept_encoding:
        return False
    return "gzip" in _accepted_encodings(accept_encoding)


def encode_stream(
    table: pa.Table, *, codec: str | None = None, plain_columns: Iterable[str] = ()
) -> bytes:
    """Encode a result table as one Arrow IPC stream holding one record batch.

    Args:
        table: The result.
        codec: ``"zstd"``, ``"lz4"`` or None (uncompressed buffers).
        plain_columns: Columns marked as plain numpy dtypes in the pandas metadata.

    Returns:
        The stream bytes.

    Example:
        >>> import pyarrow as pa
        >>> body = encode_stream(pa.table({"id": [1, 2]}), codec="zstd")
        >>> pa.ipc.open_stream(body).read_pandas()["id"].dtype
        Int64Dtype()
    """
    table = table.replace_schema_metadata(pandas_metadata(table.schema, plain_columns))
    table = table.combine_chunks()
    options = pa.ipc.IpcWriteOptions(
        compression="lz4_frame" if codec == "lz4" else codec, use_threads=True
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        batches = table.to_batches()
        if len(batches) == 1:
            writer.write_batch(batches[0])
        elif batches:
            # One record batch on the wire, as the server's from_pandas produces.
            writer.write_batch(
                pa.RecordBatch.from_struct_array(table.to_struct_array().combine_chunks())
            )
        else:
            writer.write_batch(pa.RecordBatch.from_pylist([], schema=table.schema))
    return sink.getvalue().to_pybytes()


def gzip_bytes(body: bytes) -> bytes:
    """HTTP-level gzip (fast level: the stand-in runs on loopback)."""
    return gzip.compress(body, compresslevel=1)
