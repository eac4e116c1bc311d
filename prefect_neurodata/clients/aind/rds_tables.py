"""Read and write pandas DataFrames in a relational database (Postgres / Redshift).

Same classes, methods and defaults as ``aind_data_access_api.rds_tables``, with these fixes:

* table names are quoted as identifiers by the dialect (no SQL built from unquoted names);
* `Client.read_table` and `Client.execute_query` accept bound ``params`` beside the raw SQL
  (``where_clause="subject_id = :sid", params={"sid": "123"}``), so values need no escaping;
* bulk writes to PostgreSQL stream the frame through ``COPY ... FROM STDIN`` (psycopg2
  ``copy_expert``), an order of magnitude faster than one giant multi-row ``INSERT``; other
  databases get batched inserts;
* `Client.execute_query` buffers its rows before the connection is released, so the returned
  `CursorResult` can still be read;
* ``drivername="postgresql"`` (the default) means psycopg2, the driver this package ships and
  what it meant under the SQLAlchemy 1.4 that 1.10 pins (SQLAlchemy 2.1 would pick psycopg 3);
* one engine (with its connection pool) per client instead of one per call.

Example:
    ```python
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
from sqlalchemy.engine import URL, Engine
from sqlalchemy.engine.cursor import CursorResult, FullyBufferedCursorFetchStrategy
from typing_extensions import Self

from prefect_neurodata.clients._extras import missing_extra
from prefect_neurodata.clients.aind.credentials import CoreCredentials


class RDSCredentials(CoreCredentials):
    """RDS / Redshift credentials (environment prefix ``RDS_``).

    ``username`` also reads ``RDS_USER`` and ``RDS_USERNAME``. Unlike the official class, a bare
    ``USERNAME`` environment variable (always set on Windows) is not picked up.

    Attributes:
        port: Default 5432.
        dbname: Alternative name of ``database`` (copied into it when ``database`` is None).
    """

    # merged with `CoreCredentials`' settings (extra fields forbidden, case-insensitive,
    # inputs hidden in errors)
    model_config = SettingsConfigDict(
        env_prefix="RDS_", validate_by_name=True, validate_by_alias=True
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


# Bare dialect names and the driver this package ships for each (psycopg2 is in the lock; the
# SQLAlchemy 2.1 default for a bare ``postgresql`` would be psycopg 3, which is not).
SHIPPED_DRIVERS = {"postgresql": "postgresql+psycopg2", "postgres": "postgresql+psycopg2"}


def resolve_drivername(drivername: str) -> str:
    """The SQLAlchemy ``dialect+driver`` used for ``drivername``.

    A bare ``postgresql`` means psycopg2, as it did under the SQLAlchemy 1.4 pinned by
    aind-data-access-api 1.10; an explicit ``dialect+driver`` is kept as given.

    Example:
        >>> resolve_drivername("postgresql")
        'postgresql+psycopg2'
        >>> resolve_drivername("postgresql+psycopg")
        'postgresql+psycopg'
    """
    return SHIPPED_DRIVERS.get(drivername, drivername)


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
            url = self._url
            try:
                self._engine_instance = sa.create_engine(
                    url.set(drivername=resolve_drivername(url.drivername)),
                    pool_pre_ping=True,
                    **self._engine_options,
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
        with self._engine.begin() as conn:
            return pd.read_sql_query(
                sql=sa.text(sql), con=conn, params=dict(params) if params else None
            )

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

    def execute_query(self, query: str, *, params: Mapping[str, Any] | None = None) -> CursorResult:
        """Run SQL in its own transaction (committed on success) and return its result.

        Returns the `CursorResult` itself, as aind-data-access-api 1.10 does; its rows are
        buffered before the connection is released, so unlike 1.10's they stay readable.

        Args:
            query: The SQL; use ``:name`` placeholders with ``params`` for values.
            params: Values bound to the placeholders.

        Returns:
            The result: ``fetchall()``, ``scalar()``, ``mappings()``, ``rowcount``...

        Example:
            ```python
            count = client.execute_query("SELECT count(*) FROM my_table").scalar()
            ```
        """
        with self._engine.begin() as conn:
            result = conn.execute(sa.text(query), dict(params or {}))
            if isinstance(result, CursorResult) and result.returns_rows:
                # SQLAlchemy's own strategy for results read after the database conversation
                # ended: fetch every row now, while the connection is still ours.
                result.cursor_strategy = FullyBufferedCursorFetchStrategy(result.cursor)
        return result
