"""Read and write pandas DataFrames in a relational database (Postgres / Redshift).

Same classes, methods and defaults as ``aind_data_access_api.rds_tables``, with these fixes:

* table names are quoted as identifiers by the dialect (no SQL built from unquoted names);
* `Client.read_table` and `Client.execute_query` accept bound ``params`` beside the raw SQL
  (``where_clause="subject_id = :sid", params={"sid": "123"}``), so values need no escaping;
* bulk writes to PostgreSQL stream the frame through ``COPY ... FROM STDIN`` (psycopg2
  ``copy_expert``), an order of magnitude faster than one giant multi-row ``INSERT``; other
  databases get batched inserts;
* `Client.execute_query` materialises its rows before the connection is released, so the
  returned result can still be read;
* one engine (with its connection pool) per client instead of one per call.

Example:
    ```python
    import numpy as np
import pandas as pd
    from prefect_neurodata.clients.aind.rds_tables import Client, RDSCredentials

    client = Client(RDSCredentials(username="u", password="p", host="db", database="dev"))
    client.overwrite_table_with_df(pd.DataFrame({"a": [1, 2]}), "my_table")
    df = client.read_table("my_table", where_clause="a > :min", params={"min": 1})
    ```
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import URL, Engine, Result

from prefect_neurodata.clients._extras import missing_extra
from prefect_neurodata.clients.aind.credentials import CoreCredentials

try:  # Self is in typing from 3.11
    from typing import Self
except ImportError:  # pragma: no cover - Python 3.10
    from typing_extensions import Self


class RDSCredentials(CoreCredentials):
    """RDS / Redshift credentials (environment prefix ``RDS_``).

    ``username`` also reads ``RDS_USER`` and ``RDS_USERNAME``. Unlike the official class, a bare
    ``USERNAME`` environment variable (always set on Windows) is not picked up.

    Attributes:
        port: Default 5432.
        dbname: Alternative name of ``database`` (copied into it when ``database`` is None).
    """

    model_config = SettingsConfigDict(
        env_prefix="RDS_",
        extra="forbid",
        arbitrary_types_allowed=True,
        case_sensitive=False,
        hide_input_in_errors=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    username: str = Field(validation_alias=AliasChoices("RDS_USERNAME", "RDS_USER", "username"))
    password: SecretStr
    host: str
    port: int = 5432
    database: str | None = None
    dbname: str | None = None

    @model_validator(mode="after")
    def validate_database_name(self) -> Self:
        """Sets database to dbname when only dbname is given; one of them is required."""
        if self.database is None and self.dbname is None:
            raise ValueError("Either database or dbname must be set.")
        if self.database is None:
            self.database = self.dbname
        return self


class _MaterialisedResult:
    """Rows of a finished query, readable after its connection was released.

    Offers the common reading API of SQLAlchemy's `CursorResult` (``fetchall``, ``fetchone``,
    ``fetchmany``, ``all``, ``first``, ``one``, ``scalar``, ``scalars``, ``mappings``,
    ``keys``, iteration) plus ``rowcount`` and ``returns_rows``.
    """

    def __init__(self, result: sa.CursorResult) -> None:
        self.returns_rows = result.returns_rows
        self.rowcount = result.rowcount
        self._keys = list(result.keys()) if result.returns_rows else []
        self._frozen = result.freeze() if result.returns_rows else None
        self._result: Result | None = self._frozen() if self._frozen is not None else None

    def _rows(self) -> Result:
        if self._result is None:
            raise sa.exc.ResourceClosedError(
                "This result object does not return rows (the statement was not a query)."
            )
        return self._result

    def keys(self) -> list[str]:
        """Column names."""
        return list(self._keys)

    def fetchall(self) -> list[sa.Row]:
        """All remaining rows."""
        return self._rows().fetchall()

    def fetchone(self) -> sa.Row | None:
        """The next row, or None."""
        return self._rows().fetchone()

    def fetchmany(self, size: int | None = None) -> list[sa.Row]:
        """Up to ``size`` rows."""
        return self._rows().fetchmany(size)

    def all(self) -> list[sa.Row]:
        """All remaining rows."""
        return self._rows().all()

    def first(self) -> sa.Row | None:
        """The first row, or None."""
        return self._rows().first()

    def one(self) -> sa.Row:
        """Exactly one row."""
        return self._rows().one()

    def scalar(self) -> Any:
        """The first column of the first row."""
        return self._rows().scalar()

    def scalars(self, index: int | str = 0) -> Any:
        """One column of every row."""
        return self._rows().scalars(index)

    def mappings(self) -> Any:
        """Rows as dict-like mappings."""
        return self._rows().mappings()

    def __iter__(self) -> Any:
        return iter(self._rows())


def _csv_field(value: Any) -> str:
    """One field of PostgreSQL's COPY CSV format: NULL is an unquoted empty field, so every
    string is quoted (an empty string stays an empty string)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return ""
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return repr(number)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return '"\\x' + bytes(value).hex() + '"'
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return '"' + text.replace('"', '""') + '"'


def _copy_rows(table: Any, conn: Any, keys: list[str], data_iter: Iterable[tuple]) -> int:
    """pandas ``to_sql`` insertion method: stream rows through PostgreSQL ``COPY``."""
    buffer = io.StringIO()
    count = 0
    for row in data_iter:
        buffer.write(",".join(map(_csv_field, row)))
        buffer.write("\n")
        count += 1
    buffer.seek(0)
    dbapi_conn = conn.connection.driver_connection
    quote = conn.dialect.identifier_preparer.quote
    name = quote(table.name)
    if table.schema:
        name = f"{quote(table.schema)}.{name}"
    columns = ", ".join(quote(k) for k in keys)
    with dbapi_conn.cursor() as cursor:
        cursor.copy_expert(f"COPY {name} ({columns}) FROM STDIN WITH (FORMAT csv)", buffer)
    return count


class Client:
    """Relational database client that reads and writes pandas DataFrames.

    Args:
        credentials: Where and how to connect.
        drivername: SQLAlchemy driver name, e.g. ``postgresql`` or ``postgresql+psycopg2``.
        engine_options: Extra keyword arguments for `sqlalchemy.create_engine`.
    """

    def __init__(
        self,
        credentials: RDSCredentials,
        drivername: str | None = "postgresql",
        *,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.credentials = credentials
        self.drivername = drivername or "postgresql"
        self._engine_options = dict(engine_options or {})
        self._engine_instance: Engine | None = None

    def __repr__(self) -> str:
        c = self.credentials
        return f"Client(host={c.host!r}, port={c.port}, database={c.database!r})"

    @property
    def _url(self) -> URL:
        c = self.credentials
        return URL.create(
            drivername=self.drivername,
            username=c.username,
            password=c.password.get_secret_value(),
            host=c.host,
            database=c.database,
            port=c.port,
        )

    @property
    def _engine(self) -> Engine:
        if self._engine_instance is None:
            try:
                self._engine_instance = sa.create_engine(
                    self._url, pool_pre_ping=True, **self._engine_options
                )
            except ModuleNotFoundError as exc:  # the driver, e.g. psycopg2
                raise missing_extra(exc.name or "the database driver", "aind") from exc
        return self._engine_instance

    def dispose(self) -> None:
        """Close pooled connections."""
        if self._engine_instance is not None:
            self._engine_instance.dispose()

    def _table_ref(self, table_name: str, schema: str | None = None) -> str:
        if not isinstance(table_name, str) or not table_name:
            raise ValueError(f"table_name must be a non-empty string, got {table_name!r}")
        quote = self._engine.dialect.identifier_preparer.quote_identifier
        name = quote(table_name)
        return f"{quote(schema)}.{name}" if schema else name

    def read_table(
        self,
        table_name: str,
        where_clause: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        schema: str | None = None,
    ) -> pd.DataFrame:
        """Read a table (optionally filtered) into a DataFrame.

        Args:
            table_name: The table (quoted as one identifier).
            where_clause: Raw SQL after ``WHERE``; None reads the whole table. Use
                ``:name`` placeholders with ``params`` for values.
            params: Values bound to the placeholders of ``where_clause``.
            schema: The table's schema; None for the search path.

        Returns:
            A pandas DataFrame created from the SQL table.
        """
        sql = f"SELECT * FROM {self._table_ref(table_name, schema)}"
        if where_clause:
            sql += f" WHERE {where_clause}"
        with self._engine.connect() as conn:
            return pd.read_sql_query(sa.text(sql), conn, params=dict(params or {}))

    def _write(
        self,
        df: pd.DataFrame,
        table_name: str,
        dtype: dict | str | None,
        if_exists: str,
        schema: str | None,
    ) -> None:
        self._table_ref(table_name, schema)
        engine = self._engine
        copy = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg2"
        with engine.begin() as conn:
            df.to_sql(
                name=table_name,
                con=conn,
                schema=schema,
                dtype=dtype,
                if_exists=if_exists,
                index=False,
                method=_copy_rows if copy else None,
                chunksize=None if copy else 10_000,
            )

    def overwrite_table_with_df(
        self,
        df: pd.DataFrame,
        table_name: str,
        dtype: dict | str | None = None,
        *,
        schema: str | None = None,
    ) -> None:
        """Replace a table with a DataFrame (the table is recreated, in one transaction).

        Args:
            df: The data; its index is not written.
            table_name: The table.
            dtype: SQLAlchemy types per column (or one for all), as in `DataFrame.to_sql`.
            schema: The table's schema.
        """
        self._write(df, table_name, dtype, "replace", schema)

    def append_df_to_table(
        self,
        df: pd.DataFrame,
        table_name: str,
        dtype: dict | str | None = None,
        *,
        schema: str | None = None,
    ) -> None:
        """Append a DataFrame to a table (created when missing).

        Args:
            df: The data; its index is not written.
            table_name: The table.
            dtype: SQLAlchemy types per column (or one for all), as in `DataFrame.to_sql`.
            schema: The table's schema.
        """
        self._write(df, table_name, dtype, "append", schema)

    def execute_query(
        self, query: str, *, params: Mapping[str, Any] | None = None
    ) -> _MaterialisedResult:
        """Run SQL in its own transaction (committed on success) and return its result.

        Rows are fetched before the connection is released, so the result stays readable.

        Args:
            query: The SQL; use ``:name`` placeholders with ``params`` for values.
            params: Values bound to the placeholders.

        Returns:
            The result: ``fetchall()``, ``scalar()``, ``mappings()``, ``rowcount``...
        """
        with self._engine.begin() as conn:
            result = conn.execute(sa.text(query), dict(params or {}))
            return _MaterialisedResult(result)
