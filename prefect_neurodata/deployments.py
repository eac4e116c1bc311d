"""The one definition of this package's deployments; served by ``deployments/serve.py`` and
written out as ``deployments/prefect.yaml``.

Five deployments, one per flow (full names are ``<flow name>/<deployment name>``):

==============================================  ==============================================
deployment                                      how it runs
==============================================  ==============================================
``aind-asset-registration/register-on-upload``  on every ``neurodata.asset.uploaded`` event
                                                (``neurodata events relay``); the event's
                                                resource id, the asset's S3 location, is the
                                                request
``aind-metadata-sync/sync-nightly``             cron 03:00 America/Los_Angeles, one at a time
``aind-qc-attachment/attach-qc-from-ui``        from the UI's run form
``cave-materialization-snapshot/snapshot-nightly``  cron 02:30 UTC, one at a time
``cave-annotation-upload/upload-annotations-from-ui``  from the UI's run form
==============================================  ==============================================

Every credential is a block *name* (:data:`BLOCK_NAMES`); the README and the demo save blocks
under exactly these names (a run form also offers a picker of the saved blocks,
`prefect_neurodata.flows.parameters`). Every deployment enforces its parameter schema, so the
constraints of the flows' parameters (S3 and table-name patterns, ranges) refuse bad input
before a run exists. ``prefect.yaml`` is generated from :func:`deployment_specs`
(``neurodata deployments yaml > deployments/prefect.yaml``) and a test checks that the file in
the repository equals the generated text, so the served and the worker deployments cannot
drift apart.

Example:
    ```python
    from prefect_neurodata.deployments import deployment_specs, runner_deployments

    for spec in deployment_specs(bucket="aind-open-data"):
        print(spec.full_name, spec.parameters)
    served = runner_deployments(bucket="aind-open-data")  # what serve.py serves
    ```
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from typing import Any

import yaml

from prefect_neurodata.constants import (
    DEFAULT_AWS_BLOCK,
    DEFAULT_CAVE_BLOCK,
    DEFAULT_DOCDB_BLOCK,
    DEFAULT_RDS_BLOCK,
)
from prefect_neurodata.relay import EVENT_NAME

BLOCK_NAMES: dict[str, str] = {
    "docdb_block": DEFAULT_DOCDB_BLOCK,
    "rds_block": DEFAULT_RDS_BLOCK,
    "cave_block": DEFAULT_CAVE_BLOCK,
}
"""Flow parameter -> the block name every deployment passes (the README saves these)."""

AWS_BLOCK_NAME = DEFAULT_AWS_BLOCK
"""The named `AwsCredentials` block the DocDB block references (the README and demo save it)."""

WORK_POOL = "neurodata-process"
"""The process work pool of ``prefect.yaml`` (``prefect work-pool create ... --type process``)."""

KEYS: tuple[str, ...] = ("registration", "sync", "qc", "snapshot", "annotations")
"""Short keys of the deployments (``serve.py --only``)."""

DEFAULT_BUCKET = "aind-open-data"
SYNC_CRON = "0 3 * * *"
SYNC_TIMEZONE = "America/Los_Angeles"
SNAPSHOT_CRON = "30 2 * * *"
SNAPSHOT_TIMEZONE = "UTC"


@dataclasses.dataclass(frozen=True)
class DeploymentSpec:
    """One deployment, independent of how it is run (served or through a work pool).

    Attributes:
        key: Short key (``registration``, ``sync``, ``qc``, ``snapshot``, ``annotations``).
        entrypoint: ``module:function`` of the flow.
        flow_name: The flow's name (the first half of the deployment's full name).
        name: The deployment's name, unique across the package.
        description: Shown on the deployment's page.
        tags: Tags of the deployment and its runs.
        parameters: Default parameters (block names, never secrets).
        cron: Cron schedule, if scheduled.
        timezone: Time zone of the cron schedule.
        trigger: The event trigger, if event-driven (a ``DeploymentEventTrigger`` as a dict).
        concurrency_limit: At most this many runs at once (newer runs are cancelled).
    """

    key: str
    entrypoint: str
    flow_name: str
    name: str
    description: str
    tags: tuple[str, ...]
    parameters: dict[str, Any]
    cron: str | None = None
    timezone: str | None = None
    trigger: dict[str, Any] | None = None
    concurrency_limit: int | None = None

    @property
    def full_name(self) -> str:
        """``<flow name>/<deployment name>``, as ``run_deployment`` and the CLI take it."""
        return f"{self.flow_name}/{self.name}"

    def load_flow(self) -> Any:
        """Import the flow object of :attr:`entrypoint`."""
        module, _, attr = self.entrypoint.partition(":")
        return getattr(importlib.import_module(module), attr)


def registration_trigger(docdb_block: str = BLOCK_NAMES["docdb_block"]) -> dict[str, Any]:
    """The registration deployment's event trigger.

    Only the resource id is templated: it is always present on these events (the trigger
    matches ``s3://*`` ids). Optional event fields must be templated with ``.get(key,
    default)``: a missing key makes Prefect's action fail with ``InvalidJinja`` and no run is
    created.
    """
    return {
        "type": "event",
        "name": "asset uploaded to S3",
        "description": (
            "Registers the asset whose data_description.json just landed in S3 (a "
            f"{EVENT_NAME} event from `neurodata events relay`)."
        ),
        "enabled": True,
        "expect": [EVENT_NAME],
        "match": {"prefect.resource.id": "s3://*"},
        "parameters": {
            "request": {"locations": ["{{ event.resource.id }}"], "batch_size": 50},
            "docdb_block": docdb_block,
        },
    }


def deployment_specs(
    *,
    bucket: str = DEFAULT_BUCKET,
    snapshot_destination: str | None = None,
    sync_cron: str = SYNC_CRON,
    snapshot_cron: str = SNAPSHOT_CRON,
    block_names: dict[str, str] | None = None,
) -> list[DeploymentSpec]:
    """The five deployments.

    Args:
        bucket: Bucket whose asset folders the metadata sync walks.
        snapshot_destination: Where snapshots go (default ``s3://<bucket>/cave-snapshots``).
        sync_cron: Cron of the metadata sync.
        snapshot_cron: Cron of the materialization snapshot.
        block_names: Overrides of :data:`BLOCK_NAMES`.
    """
    blocks = {**BLOCK_NAMES, **(block_names or {})}
    destination = snapshot_destination or f"s3://{bucket}/cave-snapshots"
    return [
        DeploymentSpec(
            key="registration",
            entrypoint="prefect_neurodata.flows.registration:register_assets",
            flow_name="aind-asset-registration",
            name="register-on-upload",
            description=(
                "Registers an asset in DocDB when its metadata lands in S3 (started by the "
                f"{EVENT_NAME} event of `neurodata events relay`)."
            ),
            tags=("aind", "docdb", "event"),
            parameters={"docdb_block": blocks["docdb_block"]},
            trigger=registration_trigger(blocks["docdb_block"]),
        ),
        DeploymentSpec(
            key="sync",
            entrypoint="prefect_neurodata.flows.metadata_sync:sync_metadata",
            flow_name="aind-metadata-sync",
            name="sync-nightly",
            description=(
                "Two-way S3 <-> DocDB metadata sync of the last 14 days, with a summary "
                "export to Postgres (RDS)."
            ),
            tags=("aind", "docdb", "schedule"),
            parameters={
                "request": {"bucket": bucket, "lookback_days": 14},
                "docdb_block": blocks["docdb_block"],
                "rds_block": blocks["rds_block"],
            },
            cron=sync_cron,
            timezone=SYNC_TIMEZONE,
            concurrency_limit=1,
        ),
        DeploymentSpec(
            key="qc",
            entrypoint="prefect_neurodata.flows.qc_attachment:attach_qc",
            flow_name="aind-qc-attachment",
            name="attach-qc-from-ui",
            description=(
                "Attaches QC evaluations to assets: fill in the run form (assets by id, name "
                "or S3 location, and the evaluations) and run."
            ),
            tags=("aind", "docdb", "ui"),
            parameters={"docdb_block": blocks["docdb_block"]},
        ),
        DeploymentSpec(
            key="snapshot",
            entrypoint="prefect_neurodata.flows.materialization_snapshot:snapshot_materialization",
            flow_name="cave-materialization-snapshot",
            name="snapshot-nightly",
            description=(
                "Parquet snapshot, with a checksummed manifest, of the latest CAVE "
                f"materialization version to {destination}."
            ),
            tags=("cave", "schedule"),
            parameters={
                "request": {"destination": destination},
                "cave_block": blocks["cave_block"],
            },
            cron=snapshot_cron,
            timezone=SNAPSHOT_TIMEZONE,
            concurrency_limit=1,
        ),
        DeploymentSpec(
            key="annotations",
            entrypoint="prefect_neurodata.flows.annotation_upload:upload_annotations",
            flow_name="cave-annotation-upload",
            name="upload-annotations-from-ui",
            description=(
                "Uploads annotations (a CSV/Parquet file or rows) to a CAVE table: fill in the "
                "run form and run."
            ),
            tags=("cave", "write", "ui"),
            parameters={"cave_block": blocks["cave_block"]},
        ),
    ]


def runner_deployments(
    specs: Sequence[DeploymentSpec] | None = None, *, only: Sequence[str] = KEYS, **options: Any
) -> list[Any]:
    """The specs as Prefect ``RunnerDeployment`` objects, ready for ``prefect.serve``.

    Args:
        specs: The specs (default: :func:`deployment_specs` with ``options``).
        only: Keys of the deployments to include.
        **options: Passed to :func:`deployment_specs`.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events import DeploymentEventTrigger

    unknown = sorted(set(only) - set(KEYS))
    if unknown:
        raise ValueError(f"only: unknown deployment key(s) {unknown}; choose from {list(KEYS)}")
    out = []
    for spec in specs if specs is not None else deployment_specs(**options):
        if spec.key not in only:
            continue
        trigger = None
        if spec.trigger is not None:
            trigger = DeploymentEventTrigger(
                **{k: v for k, v in spec.trigger.items() if k not in ("type", "enabled")}
            )
        out.append(
            spec.load_flow().to_deployment(
                name=spec.name,
                description=spec.description,
                tags=list(spec.tags),
                parameters=spec.parameters,
                enforce_parameter_schema=True,
                schedules=(
                    [CronSchedule(cron=spec.cron, timezone=spec.timezone)] if spec.cron else None
                ),
                triggers=[trigger] if trigger else None,
                concurrency_limit=(
                    ConcurrencyLimitConfig(
                        limit=spec.concurrency_limit,
                        collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW,
                    )
                    if spec.concurrency_limit
                    else None
                ),
            )
        )
    return out


YAML_HEADER = """\
# GENERATED from prefect_neurodata/deployments.py by `neurodata deployments yaml`; do not edit.
# The same deployments, for a Prefect server with process workers (deployments/serve.py serves
# them from one process instead):
#   prefect work-pool create {pool} --type process
#   prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
#   prefect worker start --pool {pool}        # on as many machines as needed
# Workers need this package installed and PREFECT_API_URL set. Save the blocks named below
# first (README, "Using it"): credentials never appear here or in parameters.
"""


def prefect_yaml(specs: Sequence[DeploymentSpec] | None = None) -> str:
    """The text of ``deployments/prefect.yaml`` for ``specs`` (default: the package's)."""
    import prefect

    deployments = []
    for spec in specs if specs is not None else deployment_specs():
        module, _, attr = spec.entrypoint.partition(":")
        entry: dict[str, Any] = {
            "name": spec.name,
            "entrypoint": f"{module}.{attr}",
            "description": spec.description,
            "tags": list(spec.tags),
            "work_pool": {"name": WORK_POOL, "work_queue_name": "default"},
            "parameters": spec.parameters,
            "enforce_parameter_schema": True,
        }
        if spec.cron:
            entry["schedules"] = [{"cron": spec.cron, "timezone": spec.timezone}]
        if spec.concurrency_limit:
            entry["concurrency_limit"] = {
                "limit": spec.concurrency_limit,
                "collision_strategy": "CANCEL_NEW",
            }
        if spec.trigger:
            entry["triggers"] = [spec.trigger]
        deployments.append(entry)
    document = {
        "name": "prefect-neurodata",
        "prefect-version": prefect.__version__,
        "build": None,
        "push": None,
        "pull": None,
        "deployments": deployments,
    }
    body = yaml.safe_dump(document, sort_keys=False, width=4096, default_flow_style=False)
    return YAML_HEADER.format(pool=WORK_POOL) + body


def register(subparsers: Any) -> None:
    """Add the ``deployments`` command group to the top-level ``subparsers``."""
    import argparse

    group = subparsers.add_parser(
        "deployments",
        help="show the deployments or write deployments/prefect.yaml",
        description="The package's five deployments, defined once in "
        "prefect_neurodata/deployments.py (served by deployments/serve.py).",
    )
    sub = group.add_subparsers(dest="command", metavar="SUBCOMMAND")
    listing = sub.add_parser(
        "list",
        help="list the deployments: full name, schedule or trigger, parameters",
        description="List each deployment with how it runs and its default parameters.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    listing.set_defaults(func=_cmd_list)
    text = sub.add_parser(
        "yaml",
        help="print the prefect.yaml of the deployments (or write it with --output)",
        description="Print the generated prefect.yaml for `prefect deploy` with a process "
        "work pool; deployments/prefect.yaml is this output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    text.add_argument("--output", default="-", help="file to write; - prints it")
    text.set_defaults(func=_cmd_yaml)


def _cmd_list(args: Any) -> int:
    for spec in deployment_specs():
        how = (
            f"cron {spec.cron} ({spec.timezone})"
            if spec.cron
            else (f"on event {EVENT_NAME}" if spec.trigger else "from the UI or CLI")
        )
        print(f"{spec.full_name:<55} {how}")
        print(f"{'':<4}parameters: {spec.parameters}")
    return 0


def _cmd_yaml(args: Any) -> int:
    from pathlib import Path

    text = prefect_yaml()
    if args.output == "-":
        print(text, end="")
    else:
        Path(args.output).write_text(text)
    return 0
