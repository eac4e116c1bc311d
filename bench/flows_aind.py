"""Time the three AIND flows on a seeded sandbox and count the task runs they create.

Needs a running sandbox seeded with S3 folders for every record (the flows read S3), e.g.:

    neurodata sandbox up --workdir /tmp/nd-bench
    neurodata sandbox seed --workdir /tmp/nd-bench --records 15000 --s3-assets 15000 \
        --v2-fraction 0 --unregistered 300 --synapses 0

and a Prefect server (one is started on a free port when ``--api-url`` is not given):

    python bench/flows_aind.py --workdir /tmp/nd-bench

Prints one line per flow run: wall seconds, task runs (read back from the Prefect API) and the
flow's own counts. Runs: registration over the whole bucket (scan), QC attachment to
``--qc-assets`` assets, a full metadata sync (no lookback) and an incremental rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _task_runs(flow_run_id: Any) -> int:
    from prefect.client.orchestration import get_client

    body = {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}}
    with get_client(sync_client=True) as client:
        # Task-run states reach the server as events; wait until the count settles.
        last = -1
        for _ in range(30):
            count = int(client.request("POST", "/task_runs/count", json=body).json())
            if count == last:
                return count
            last = count
            time.sleep(2)
        return last


def _run(label: str, flow: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    state = flow(**kwargs, return_state=True)
    seconds = time.perf_counter() - t0
    result = state.result()
    tasks = _task_runs(state.state_details.flow_run_id)
    counts = getattr(result, "counts", None) or {
        k: v for k, v in result.model_dump().items() if isinstance(v, int)
    }
    print(f"{label:<34} {seconds:8.1f} s  {tasks:5d} task runs  {json.dumps(counts)}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="workdir of the seeded sandbox")
    parser.add_argument("--api-url", help="Prefect API (default: start a server)")
    parser.add_argument("--qc-assets", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500, help="sync batch size")
    parser.add_argument(
        "--only", nargs="*", default=["registration", "qc", "sync"], help="flows to time"
    )
    args = parser.parse_args(argv)

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from prefect_neurodata.sandbox.launcher import Sandbox
    from tests.fixtures.prefect import run_prefect_server
    from tests.flows.aind_helpers import docdb_block

    env = Sandbox(args.workdir).env
    bucket = env.get("NEURODATA_S3_BUCKET", "aind-open-data")
    with contextlib.ExitStack() as stack:
        api_url = args.api_url or stack.enter_context(
            run_prefect_server(Path(tempfile.mkdtemp(prefix="bench-prefect-")))
        )
        stack.enter_context(
            temporary_settings({PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
        )
        from prefect_neurodata.flows.metadata_sync import MetadataSyncRequest, sync_metadata
        from prefect_neurodata.flows.qc_attachment import AssetRef, QcAttachmentRequest, attach_qc
        from prefect_neurodata.flows.registration import RegistrationRequest, register_assets
        from tests.flows.test_qc_attachment import evaluation

        block = docdb_block(env)
        block.save("bench-docdb", overwrite=True)
        with block.get_client() as client:
            total = client._count_records()
        print(f"sandbox {args.workdir}: {total} in v1; bucket {bucket}", flush=True)

        if "registration" in args.only:
            _run(
                "registration (scan whole bucket)",
                register_assets,
                request=RegistrationRequest(bucket=bucket, batch_size=50),
                docdb_block="bench-docdb",
            )
        with block.get_client() as client:
            ids = [
                r["_id"]
                for r in client.retrieve_docdb_records(
                    filter_query={"location": {"$regex": f"^s3://{bucket}/"}},
                    projection={"_id": 1},
                    limit=args.qc_assets,
                )
            ]
        qc_request = QcAttachmentRequest(
            assets=[AssetRef(id=i) for i in ids],
            evaluations=[evaluation("Bench drift"), evaluation("Bench noise")],
            batch_size=50,
        )
        if "qc" in args.only:
            _run(f"QC attachment ({len(ids)} assets)", attach_qc, request=qc_request,
                 docdb_block="bench-docdb")  # fmt: skip
        if "sync" not in args.only:
            return 0
        sync_request = MetadataSyncRequest(
            bucket=bucket, lookback_days=None, batch_size=args.batch_size, export_table=None
        )
        _run("metadata sync (full)", sync_metadata, request=sync_request,
             docdb_block="bench-docdb")  # fmt: skip
        _run("metadata sync (rerun, no changes)", sync_metadata, request=sync_request,
             docdb_block="bench-docdb")  # fmt: skip
        incremental = sync_request.model_copy(update={"lookback_days": 1.0})
        _run("metadata sync (1-day lookback)", sync_metadata, request=incremental,
             docdb_block="bench-docdb")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
