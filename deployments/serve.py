"""Serve this package's deployments from one process (no work pool needed).

The deployments are defined once, in :mod:`prefect_neurodata.deployments` (names, schedules,
the registration's event trigger, parameters); ``deployments/prefect.yaml`` is generated from
the same definition for a work pool. Run ``python deployments/serve.py --help`` for options.

SIGTERM or Ctrl-C stops serving within seconds: runs in progress are cancelled and the
deployments' schedules paused (Prefect's runner does both).

Example:
    ```bash
    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py --bucket aind-open-data
    ```
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from prefect import serve

from prefect_neurodata.deployments import (
    BLOCK_NAMES,
    DEFAULT_BUCKET,
    KEYS,
    SNAPSHOT_CRON,
    SYNC_CRON,
    runner_deployments,
)


def build_deployments(
    *,
    docdb_block: str = BLOCK_NAMES["docdb_block"],
    rds_block: str = BLOCK_NAMES["rds_block"],
    cave_block: str = BLOCK_NAMES["cave_block"],
    bucket: str = DEFAULT_BUCKET,
    sync_cron: str = SYNC_CRON,
    snapshot_destination: str | None = None,
    snapshot_cron: str = SNAPSHOT_CRON,
    only: Sequence[str] = KEYS,
) -> list[Any]:
    """The runner deployments to serve (a subset with ``only``)."""
    return runner_deployments(
        only=only,
        bucket=bucket,
        snapshot_destination=snapshot_destination,
        sync_cron=sync_cron,
        snapshot_cron=snapshot_cron,
        block_names={"docdb_block": docdb_block, "rds_block": rds_block, "cave_block": cave_block},
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``serve.py`` (every default shown in ``--help``)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for parameter, name in BLOCK_NAMES.items():
        option = "--" + parameter.replace("_", "-")
        parser.add_argument(option, default=name, help=f"block name passed as {parameter}")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket of the metadata sync")
    parser.add_argument("--sync-cron", default=SYNC_CRON, help="cron of the metadata sync")
    parser.add_argument(
        "--snapshot-destination",
        default=None,
        help="snapshot destination (default: s3://<bucket>/cave-snapshots)",
    )
    parser.add_argument("--snapshot-cron", default=SNAPSHOT_CRON, help="cron of the snapshot")
    parser.add_argument(
        "--only", nargs="*", choices=KEYS, default=list(KEYS), help="deployments to serve"
    )
    parser.add_argument("--limit", type=int, default=4, help="concurrent flow runs")
    return parser


def _stop_on_sigint(signum: int, frame: object) -> None:
    # Ctrl-C: take the same graceful path as SIGTERM (Prefect's runner handles that one)
    # instead of a KeyboardInterrupt tearing through its event loop with tracebacks.
    signal.raise_signal(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the deployments until SIGTERM or Ctrl-C."""
    args = build_parser().parse_args(argv)
    deployments = build_deployments(
        only=args.only,
        bucket=args.bucket,
        snapshot_destination=args.snapshot_destination,
        sync_cron=args.sync_cron,
        snapshot_cron=args.snapshot_cron,
        **{parameter: getattr(args, parameter) for parameter in BLOCK_NAMES},
    )
    signal.signal(signal.SIGINT, _stop_on_sigint)
    serve(*deployments, limit=args.limit)
    logging.getLogger("prefect_neurodata.serve").info("stopped serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
