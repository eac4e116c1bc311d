"""Flow parameter types the run forms understand: constraints and block pickers.

**Constraints.** String parameters with a rule carry it in their JSON schema as a ``pattern``
(`S3Location`, `BucketName`, `S3UriOrPath`, `CaveTableName`, `ExportTableName`); numbers carry
``minimum``/``maximum`` from their ``Field(ge=..., le=...)``. Deployments enforce their parameter
schema, so Prefect refuses bad input (the UI's "Validate", ``create_flow_run``) before a run
exists, with a message naming the field. Each pattern is exported by the module that owns the
rule; the flows' Python validators still apply the whole rule (and say what is wrong).

**Block pickers.**
A block parameter of every flow here (``docdb_block``, ``rds_block``, ``aws_block``,
``cave_block``) is annotated ``Annotated[str, SavedBlock(<block class>)]``. Its JSON schema,
from which Prefect builds the run form, is "a saved block of that type *or* a name":

* the Prefect UI shows a picker of the saved blocks of that type (the block branch carries the
  ``block_type_slug``) and sends the picked block as a ``{"$ref": {"block_document_id": ...}}``
  reference, which Prefect resolves to the saved block before the flow starts;
* Python, the CLI, ``prefect.yaml`` and event triggers keep passing the block's *name*.

Either way the flow receives the saved block's name, so every task, report and run name sees a
plain string. A block that was never saved (built in memory, or raw fields sent as JSON) is
refused: its secrets would be stored with the flow run's parameters.

Example:
    ```python
    from typing import Annotated

    from prefect import flow

    from prefect_neurodata.blocks import CaveCredentials
    from prefect_neurodata.flows.parameters import SavedBlock


    @flow(validate_parameters=True)
    def count_tables(cave_block: Annotated[str, SavedBlock(CaveCredentials)] = "neurodata-cave"):
        return cave_block  # the name, whether it was typed or picked in the UI
    ```
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue, WithJsonSchema
from pydantic_core import core_schema

from prefect_neurodata.blocks import CaveCredentials, DocDbApiCredentials, RdsCredentials
from prefect_neurodata.clients.aind.utils import (
    S3_BUCKET_PATTERN,
    S3_LOCATION_PATTERN,
    S3_URI_OR_PATH_PATTERN,
)
from prefect_neurodata.clients.cave.annotationengine import TABLE_NAME_PATTERN
from prefect_neurodata.tasks.rds import EXPORT_TABLE_PATTERN


def matching(pattern: str) -> WithJsonSchema:
    """Annotation metadata: the string's JSON schema carries ``pattern`` for run forms.

    Only the schema changes; Python-side validation stays with the field's own validator, whose
    message says what is wrong. ``pattern`` must be a necessary condition of that validator.

    Example:
        ```python
        from typing import Annotated

        Bucket = Annotated[str, matching(S3_BUCKET_PATTERN)]
        ```
    """
    # In an allOf, the one place the UI's copy of a property keeps it (see `_PickedBlock`),
    # so the form's "Validate parameters" checks it too, not only the server on submit.
    return WithJsonSchema({"type": "string", "allOf": [{"pattern": pattern}]})


S3Location = Annotated[str, matching(S3_LOCATION_PATTERN)]
"""An asset location ``s3://bucket/prefix`` (the rule of `clients.aind.utils`)."""
BucketName = Annotated[str, matching(S3_BUCKET_PATTERN)]
"""An S3 bucket name (today's rule of `clients.aind.utils.bucket_problem`)."""
S3UriOrPath = Annotated[str, matching(S3_URI_OR_PATH_PATTERN)]
"""A destination: ``s3://bucket[/prefix]`` or a local path."""
CaveTableName = Annotated[str, matching(TABLE_NAME_PATTERN.pattern)]
"""A CAVE annotation table name (the annotation engine's rule)."""
ExportTableName = Annotated[str, matching(EXPORT_TABLE_PATTERN)]
"""A Postgres table name for the sync's export (`tasks.rds.table_name_problem`)."""


BLOCK_NAME_SCHEMA: dict[str, Any] = {"type": "string", "title": "block name", "minLength": 1}
"""The "name" branch of a block parameter (the label of the form's toggle)."""


class _PickedBlock:
    """The block's JSON schema, told apart from a reference to a saved block.

    Prefect validates a picked block, ``{"$ref": {"block_document_id": ...}}``, against "one
    of" the block's schema and a reference. A block whose fields all have defaults (the DocDB
    and AWS blocks) accepts any object, so the reference matched both and the server refused
    every picked block (409). A block's own fields never include ``$ref``: saying so keeps
    exactly one branch matching. The rule sits in an ``allOf``: the UI sends its copy of the
    schema to the server's validation and keeps only some keywords of a property (``allOf``,
    ``anyOf`` and ``items`` verbatim; ``not``, ``pattern`` or ``minimum`` are dropped). The
    definition keeps its title: Prefect finds block definitions by title to add the reference
    branch.
    """

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        definition = handler.resolve_ref_schema(json_schema)
        definition["allOf"] = [{"not": {"required": ["$ref"]}}]
        return json_schema


@dataclasses.dataclass(frozen=True)
class SavedBlock:
    """Marks a ``str`` parameter as the name of a saved block of ``block_type``.

    Validation accepts the name itself or the saved block (what Prefect makes of a block picked
    in the run form) and yields the name.

    Attributes:
        block_type: The block class whose saved documents the run form offers.
    """

    block_type: type[Block]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """The block's own schema (rendered as a picker) or the source type (the name)."""
        picked = core_schema.no_info_after_validator_function(
            self.saved_name,
            handler.generate_schema(Annotated[self.block_type, _PickedBlock()]),
        )
        named = handler.generate_schema(Annotated[source, WithJsonSchema(BLOCK_NAME_SCHEMA)])
        return core_schema.union_schema([picked, named])

    @property
    def label(self) -> str:
        """The block type's display name (``CAVE Credentials``)."""
        return str(getattr(self.block_type, "_block_type_name", None) or self.block_type.__name__)

    def saved_name(self, block: Block) -> str:
        """The name ``block`` is saved under; ValueError for a block that was never saved."""
        name = getattr(block, "_block_document_name", None)
        if not name or getattr(block, "_is_anonymous", False):
            raise ValueError(
                f"an unsaved {self.label} block cannot be a run parameter (its secrets would be "
                "stored with the run): save it and pass its name, or pick a saved block"
            )
        return str(name)


DocDbBlockName = Annotated[str, SavedBlock(DocDbApiCredentials)]
"""A saved `DocDbApiCredentials` block: its name, or picked in the run form."""
RdsBlockName = Annotated[str, SavedBlock(RdsCredentials)]
"""A saved `RdsCredentials` block: its name, or picked in the run form."""
AwsBlockName = Annotated[str, SavedBlock(AwsCredentials)]
"""A saved prefect-aws `AwsCredentials` block: its name, or picked in the run form."""
CaveBlockName = Annotated[str, SavedBlock(CaveCredentials)]
"""A saved `CaveCredentials` block: its name, or picked in the run form."""
