"""Credential block for the AIND DocDB REST API (metadata, schema and analysis databases).

Reads of the DocDB API are public; writes, asset registration and QC attachment are signed with
AWS SigV4 (service ``execute-api``). The signing identity comes from a nested prefect-aws
`AwsCredentials` block, so the same AWS credentials serve S3 and the API.

Example:
    ```python
    from prefect_aws import AwsCredentials
    from prefect_neurodata.blocks import DocDbApiCredentials

    DocDbApiCredentials(
        host="https://api.allenneuraldynamics.org",
        aws_credentials=AwsCredentials(region_name="us-west-2"),
    ).save("aind-docdb")

    client = DocDbApiCredentials.load("aind-docdb").get_client()
    records = client.retrieve_docdb_records(filter_query={"name": "ecephys_1"}, limit=1)
    ```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect_aws import AwsCredentials
from pydantic import Field, field_validator

from prefect_neurodata.blocks._base import AindCredentialsBlock, ServiceUrl
from prefect_neurodata.constants import DocDbVersion

if TYPE_CHECKING:
    from prefect_neurodata.clients.aind.document_db import (
        AnalysisDbClient,
        MetadataDbClient,
        SchemaDbClient,
    )


class DocDbApiCredentials(AindCredentialsBlock):
    """Where the AIND DocDB REST API is and how to sign requests to it.

    Attributes:
        host: Base URL of the API including the scheme, e.g.
            ``https://api.allenneuraldynamics.org`` (``http://`` is allowed for loopback
            stand-ins).
        version: API generation: ``v1`` (aind-data-schema 1.x records) or ``v2``.
        database: Default database of `get_client`.
        collection: Default collection of `get_client`.
        aws_credentials: AWS identity that signs writes (SigV4, ``execute-api``); its region
            is the signing region.

    Example:
        ```python
        from prefect_neurodata.blocks import DocDbApiCredentials

        docdb = DocDbApiCredentials.load("BLOCK_NAME")
        with docdb.get_client() as client:
            print(client.retrieve_docdb_records(limit=1))
        ```
    """

    _block_type_name = "AIND DocDB API Credentials"
    _block_type_slug = "aind-docdb-api-credentials"
    _description = (
        "Location of the AIND DocDB REST API and the AWS credentials that sign its writes."
    )

    host: ServiceUrl = Field(
        default="https://api.allenneuraldynamics.org",
        description="Base URL of the DocDB REST API including the scheme.",
        title="Host",
    )
    version: DocDbVersion = Field(
        default="v1",
        description="API generation: v1 for aind-data-schema 1.x records, v2 for 2.x.",
        title="API version",
    )
    database: str = Field(
        default="metadata_index",
        description="Database used by get_client.",
        title="Database",
    )
    collection: str = Field(
        default="data_assets",
        description="Collection used by get_client.",
        title="Collection",
    )
    aws_credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        description="AWS credentials that sign write requests (SigV4, execute-api).",
        title="AWS credentials",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> Any:
        if value not in ("v1", "v2"):
            raise ValueError(f"version must be 'v1' or 'v2', got {value!r}")
        return value

    def _client_args(self, database: str, collection: str) -> dict[str, Any]:
        """Where and how every DocDB client of this block connects (SigV4 via its AWS block)."""
        return {
            "host": self.host,
            "database": database,
            "collection": collection,
            "version": self.version,
            "boto": self.aws_credentials.get_boto3_session(),
        }

    def get_client(
        self, database: str | None = None, collection: str | None = None, **options: Any
    ) -> MetadataDbClient:
        """Build a `MetadataDbClient` for this API.

        Args:
            database: Overrides the block's database.
            collection: Overrides the block's collection.
            **options: Client options such as ``timeout``, ``retry`` or ``max_workers``
                (requests in flight for concurrent reads and chunked writes).

        Returns:
            A client; close it (or use it as a context manager) when done.
        """
        from prefect_neurodata.clients.aind.document_db import MetadataDbClient

        args = self._client_args(database or self.database, collection or self.collection)
        return MetadataDbClient(**args, **options)

    def get_analysis_client(self, collection: str, database: str = "analysis") -> AnalysisDbClient:
        """Build an `AnalysisDbClient` for ``collection`` of the analysis database."""
        from prefect_neurodata.clients.aind.document_db import AnalysisDbClient

        return AnalysisDbClient(**self._client_args(database, collection))

    def get_schema_client(self, collection: str, database: str = "schemas") -> SchemaDbClient:
        """Build a `SchemaDbClient` for ``collection`` of the schemas database."""
        from prefect_neurodata.clients.aind.document_db import SchemaDbClient

        return SchemaDbClient(**self._client_args(database, collection))

    def get_s3_client(self) -> Any:
        """An S3 client from the nested AWS credentials (for asset folders)."""
        return self.aws_credentials.get_s3_client()
