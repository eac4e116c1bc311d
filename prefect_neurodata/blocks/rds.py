"""Credential block for the AIND relational database (RDS / Redshift / Postgres tables).

Example:
    ```python
    from prefect_neurodata.blocks import RdsCredentials

    RdsCredentials(
        host="127.0.0.1", username="analyst", password="...", database="metadata"
    ).save("aind-rds")
    frame = RdsCredentials.load("aind-rds").get_client().read_table("asset_summary")
    ```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr

from prefect_neurodata.blocks._base import AindCredentialsBlock

if TYPE_CHECKING:
    from prefect_neurodata.clients.aind.rds_tables import Client as RdsClient


class RdsCredentials(AindCredentialsBlock):
    """Connection settings for the AIND RDS tables (``rds_tables.Client``).

    Attributes:
        host: Database host name.
        port: Database port.
        username: Database user.
        password: Database password (stored encrypted, masked everywhere).
        database: Database name.
        drivername: SQLAlchemy driver name, e.g. ``postgresql`` or ``postgresql+psycopg2``.

    Example:
        ```python
        from prefect_neurodata.blocks import RdsCredentials

        rds = RdsCredentials.load("BLOCK_NAME")
        print(rds.get_client().read_table("asset_summary").head())
        ```
    """

    _block_type_name = "AIND RDS Credentials"
    _block_type_slug = "aind-rds-credentials"
    _description = "Connection settings for the AIND relational database (RDS tables)."

    host: str = Field(description="Database host name.", title="Host")
    port: int = Field(default=5432, description="Database port.", title="Port")
    username: str = Field(description="Database user.", title="Username")
    password: SecretStr = Field(description="Database password.", title="Password")
    database: str = Field(description="Database name.", title="Database")
    drivername: str = Field(
        default="postgresql",
        description="SQLAlchemy driver name, e.g. postgresql or postgresql+psycopg2.",
        title="Driver",
    )

    def get_client(self) -> RdsClient:
        """Build an ``rds_tables.Client`` for this database."""
        from prefect_neurodata.clients.aind.rds_tables import Client, RDSCredentials

        credentials = RDSCredentials(**self._values_for(RDSCredentials))
        return Client(credentials=credentials, drivername=self.drivername)
