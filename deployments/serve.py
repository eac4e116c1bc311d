"""Serve the AIND deployments from one process (no work pool needed).

* ``aind-asset-registration/on-upload``: triggered by every ``neurodata.asset.uploaded`` event
  (see ``neurodata events relay``); the event's resource id, the asset's S3 location, becomes
  the request.
* ``aind-metadata-sync/scheduled``: the metadata sync on a cron schedule.
* ``aind-qc-attachment/ui``: QC attachment, run from the Prefect UI with a parameter form.
* ``cave-materialization-snapshot/nightly``: Parquet snapshot of the latest CAVE version.
* ``cave-annotation-upload/ui``: annotation upload, run from the Prefect UI with a form.

Run ``python deployments/serve.py --help`` for options. For many machines, use
``deployments/prefect.yaml`` with a process work pool instead.

Example:
    ```bash
    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py --bucket aind-open-data
    ```
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from prefect import serve
from prefect.events import DeploymentEventTrigger

from prefect_neurodata.flows.annotation_upload import upload_annotations
from prefect_neurodata.flows.materialization_snapshot import snapshot_materialization
from prefect_neurodata.flows.metadata_sync import sync_metadata
from prefect_neurodata.flows.qc_attachment import attach_qc
from prefect_neurodata.flows.registration import register_assets
from prefect_neurodata.relay import EVENT_NAME

DEPLOYMENTS = ("registration", "sync", "qc", "snapshot", "annotations")


def registration_trigger(docdb_block: str) -> DeploymentEventTrigger:
    """The event trigger of the registration deployment.

    Only the resource id is templated; it is always present on these events (the trigger
    matches ``s3://*`` ids). Optional event fields must be templated with ``.get(key, default)``:
    a missing key makes Prefect's action fail with ``InvalidJinja`` and no run is created.
    """
    return DeploymentEventTrigger(
        name="asset uploaded to S3",
        expect={EVENT_NAME},
        match={"prefect.resource.id": "s3://*"},
        parameters={
            "request": {
                "locations": ["{{ event.resource.id }}"],
                "batch_size": 50,
            },
            "docdb_block": docdb_block,
        },
    )


def build_deployments(
    *,
    docdb_block: str = "neurodata-docdb",
    rds_block: str | None = None,
    bucket: str = "aind-open-data",
    sync_cron: str = "0 3 * * *",
    only: Sequence[str] = DEPLOYMENTS,
    cave_block: str = "neurodata-cave",
    snapshot_destination: str = "cave-snapshots",
    snapshot_cron: str = "30 2 * * *",
) -> list[Any]:
    """The runner deployments to serve (a subset with ``only``)."""
    deployments = []
    if "registration" in only:
        deployments.append(
            register_assets.to_deployment(
                name="on-upload",
                description="Registers an asset when its metadata lands in S3.",
                triggers=[registration_trigger(docdb_block)],
                parameters={"docdb_block": docdb_block},
                tags=["aind", "docdb", "event"],
            )
        )
    if "sync" in only:
        deployments.append(
            sync_metadata.to_deployment(
                name="scheduled",
                description="Two-way S3 <-> DocDB metadata sync with summary export.",
                cron=sync_cron,
                parameters={
                    "request": {"bucket": bucket, "lookback_days": 14},
                    "docdb_block": docdb_block,
                    "rds_block": rds_block,
                },
                tags=["aind", "docdb", "schedule"],
            )
        )
    if "qc" in only:
        deployments.append(
            attach_qc.to_deployment(
                name="ui",
                description="Attach QC evaluations to assets (fill in the form and run).",
                parameters={"docdb_block": docdb_block},
                tags=["aind", "docdb", "ui"],
            )
        )
    if "snapshot" in only:
        deployments.append(
            snapshot_materialization.to_deployment(
                name="nightly",
                description="Parquet snapshot (with manifest) of the latest CAVE version.",
                cron=snapshot_cron,
                parameters={
                    "request": {"destination": snapshot_destination},
                    "cave_block": cave_block,
                },
                tags=["cave", "schedule"],
            )
        )
    if "annotations" in only:
        deployments.append(
            upload_annotations.to_deployment(
                name="ui",
                description="Upload annotations to a CAVE table (fill in the form and run).",
                parameters={"cave_block": cave_block},
                tags=["cave", "write", "ui"],
            )
        )
    return deployments


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docdb-block", default="neurodata-docdb")
    parser.add_argument("--rds-block", default=None)
    parser.add_argument("--bucket", default="aind-open-data")
    parser.add_argument("--sync-cron", default="0 3 * * *")
    parser.add_argument("--cave-block", default="neurodata-cave")
    parser.add_argument("--snapshot-destination", default="cave-snapshots")
    parser.add_argument("--snapshot-cron", default="30 2 * * *")
    parser.add_argument("--only", nargs="*", choices=DEPLOYMENTS, default=list(DEPLOYMENTS))
    parser.add_argument("--limit", type=int, default=4, help="concurrent flow runs")
    args = parser.parse_args(argv)
    deployments = build_deployments(
        docdb_block=args.docdb_block,
        rds_block=args.rds_block,
        bucket=args.bucket,
        sync_cron=args.sync_cron,
        only=args.only,
        cave_block=args.cave_block,
        snapshot_destination=args.snapshot_destination,
        snapshot_cron=args.snapshot_cron,
    )
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
