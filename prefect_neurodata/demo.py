"""``python -m prefect_neurodata.demo``: the three AIND flows on a local sandbox, end to end.

1. Starts the sandbox (SecantusDB, the DocDB stand-in, moto S3/SQS) in ``.sandbox`` (or reuses
   a running one) and seeds it (15,000 DocDB records, a few hundred S3 asset folders, some of
   them not yet registered).
2. Starts a Prefect server on 127.0.0.1 (UI included) with its state in ``.sandbox/prefect``.
3. Saves the DocDB block (and an RDS block when ``--postgres-url`` is given), serves the
   deployments (event-triggered registration, scheduled sync, QC from the UI) and starts the
   S3 -> Prefect event relay.
4. Runs asset registration, QC attachment and metadata sync through the Prefect API and prints
   their summaries, then uploads one more asset so the event trigger registers it.
5. Keeps everything running until Ctrl-C, then stops what it started.

Example:
    ```bash
    python -m prefect_neurodata.demo            # or: make demo
    python -m prefect_neurodata.demo --no-wait  # CI: run the flows and stop
    ```
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(home: Path, port: int) -> Iterator[str]:
    """A Prefect server with the UI on 127.0.0.1:``port``; yields the API URL."""
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_API_URL": api_url,
    }
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not _healthy(api_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.5)
        yield api_url
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _start_sandbox(workdir: Path, records: int, s3_assets: int) -> tuple[Any, bool]:
    from prefect_neurodata.sandbox.launcher import Sandbox

    sandbox = Sandbox(workdir, services=("mongo", "aws", "docdb", "cave"), detach=True)
    rows = sandbox.status()
    if rows and all(row.get("healthy") for row in rows):
        _say(f"reusing the running sandbox in {workdir}")
        started = False
    else:
        t0 = time.monotonic()
        sandbox.up()
        _say(f"sandbox up in {time.monotonic() - t0:.1f} s")
        started = True
    marker = workdir / "demo-seed.json"
    wanted = {"records": records, "s3_assets": s3_assets}
    if started or not marker.exists() or json.loads(marker.read_text()) != wanted:
        t0 = time.monotonic()
        sandbox.seed(records=records, synapses=0, s3_assets=s3_assets)
        marker.write_text(json.dumps(wanted))
        _say(f"seeded {records:,} records and {s3_assets} S3 asset folders "
             f"in {time.monotonic() - t0:.1f} s")  # fmt: skip
    return sandbox, started


def _save_blocks(env: dict[str, str], postgres_url: str | None) -> str | None:
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from prefect_neurodata.blocks import DocDbApiCredentials, RdsCredentials

    aws = AwsCredentials(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-west-2"),
        aws_client_parameters=AwsClientParameters(endpoint_url=env["AWS_ENDPOINT_URL"]),
    )
    DocDbApiCredentials(host=env["NEURODATA_DOCDB_HOST"], aws_credentials=aws).save(
        "neurodata-docdb", overwrite=True
    )
    if not postgres_url:
        return None
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    RdsCredentials(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        username=url.username or "postgres",
        password=url.password or "unused",
        database=url.database or "postgres",
        drivername=url.drivername,
    ).save("neurodata-rds", overwrite=True)
    return "neurodata-rds"


def _demo_evaluation() -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "modality": {"name": "Extracellular electrophysiology", "abbreviation": "ecephys"},
        "stage": "Raw data",
        "name": "Demo: probe drift",
        "description": "Added by python -m prefect_neurodata.demo",
        "metrics": [
            {
                "name": "Drift (um)",
                "value": 4.2,
                "status_history": [{"evaluator": "Demo", "status": "Pass", "timestamp": now}],
            }
        ],
        "created": now,
    }


def _timed(label: str, fn: Any) -> Any:
    t0 = time.monotonic()
    result = fn()
    _say(f"{label} finished in {time.monotonic() - t0:.1f} s")
    return result


def run_flows(env: dict[str, str], rds_block: str | None) -> dict[str, Any]:
    """Run the three flows through the Prefect API; returns their summaries."""
    from prefect_neurodata.blocks import DocDbApiCredentials
    from prefect_neurodata.flows.metadata_sync import MetadataSyncRequest, sync_metadata
    from prefect_neurodata.flows.qc_attachment import AssetRef, QcAttachmentRequest, attach_qc
    from prefect_neurodata.flows.registration import RegistrationRequest, register_assets
    from prefect_neurodata.tasks.s3 import list_prefixes

    bucket = env.get("NEURODATA_S3_BUCKET", "aind-open-data")
    block = DocDbApiCredentials.load("neurodata-docdb")
    prefixes = list_prefixes(block.get_s3_client(), bucket)
    registration = _timed(
        "1/3 asset registration",
        lambda: register_assets(
            RegistrationRequest(bucket=bucket, prefixes=prefixes), docdb_block="neurodata-docdb"
        ),
    )
    _say(
        f"registration: {registration.registered} registered, "
        f"{registration.already_registered} already registered, {registration.failed} failed"
    )
    with block.get_client() as client:
        sample = client.retrieve_docdb_records(
            filter_query={"location": {"$regex": f"^s3://{bucket}/"}},
            projection={"_id": 1},
            limit=5,
        )
    qc = _timed(
        "2/3 QC attachment",
        lambda: attach_qc(
            QcAttachmentRequest(
                assets=[AssetRef(id=r["_id"]) for r in sample], evaluations=[_demo_evaluation()]
            ),
            docdb_block="neurodata-docdb",
        ),
    )
    _say(f"QC: {qc.attached} evaluation(s) attached to {qc.assets} asset(s), {qc.skipped} skipped")
    sync = _timed(
        "3/3 metadata sync",
        lambda: sync_metadata(
            MetadataSyncRequest(bucket=bucket, lookback_days=None),
            docdb_block="neurodata-docdb",
            rds_block=rds_block,
        ),
    )
    _say(f"sync: {json.dumps(sync.counts)}; vanished {len(sync.vanished)}; "
         f"exported {sync.exported_rows} row(s)")  # fmt: skip
    return {"registration": registration, "qc": qc, "sync": sync}


def _upload_new_asset(env: dict[str, str]) -> str:
    """Upload one new asset folder; its data_description.json notification starts the chain."""
    import boto3

    bucket = env.get("NEURODATA_S3_BUCKET", "aind-open-data")
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-west-2"),
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    name = time.strftime("behavior_799999_%Y-%m-%d_%H-%M-%S", time.gmtime())
    subject = {"subject_id": "799999", "sex": "Female", "date_of_birth": "2025-01-01"}
    description = {
        "name": name,
        "subject_id": "799999",
        "creation_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_level": "raw",
        "modality": [{"name": "Behavior", "abbreviation": "behavior"}],
    }
    for stem, body in (("subject", subject), ("data_description", description)):
        s3.put_object(Bucket=bucket, Key=f"{name}/{stem}.json", Body=json.dumps(body).encode())
    return f"s3://{bucket}/{name}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo (see the module docs)."""
    parser = argparse.ArgumentParser(prog="python -m prefect_neurodata.demo")
    parser.add_argument("--workdir", default=".sandbox", help="sandbox and Prefect state")
    parser.add_argument("--records", type=int, default=15_000, help="DocDB records to seed")
    parser.add_argument("--s3-assets", type=int, default=300, help="S3 asset folders to seed")
    parser.add_argument("--port", type=int, default=4200, help="Prefect server port if free")
    parser.add_argument("--postgres-url", default=os.environ.get("NEURODATA_DEMO_POSTGRES_URL"),
                        help="SQLAlchemy URL for the summary export (skipped without)")  # fmt: skip
    parser.add_argument("--no-wait", action="store_true", help="stop after the flows")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).absolute()
    t_start = time.monotonic()
    sandbox, started_sandbox = _start_sandbox(workdir, args.records, args.s3_assets)
    env = sandbox.env
    port = _free_port(args.port)
    serve_proc: subprocess.Popen[bytes] | None = None
    stop_relay = threading.Event()
    try:
        with prefect_server(workdir / "prefect", port) as api_url:
            os.environ["PREFECT_API_URL"] = api_url
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: api_url}):
                _say(f"Prefect server ready at http://127.0.0.1:{port}")
                rds_block = _save_blocks(env, args.postgres_url)
                if rds_block is None:
                    _say("no --postgres-url: the sync's summary export is skipped")
                serve_script = REPO / "deployments" / "serve.py"
                if serve_script.exists():
                    serve_log = (workdir / "serve.log").open("ab")
                    command = [sys.executable, str(serve_script), "--bucket",
                               env.get("NEURODATA_S3_BUCKET", "aind-open-data")]  # fmt: skip
                    if rds_block:
                        command += ["--rds-block", rds_block]
                    serve_proc = subprocess.Popen(
                        command, cwd=REPO, stdout=serve_log, stderr=subprocess.STDOUT,
                        env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
                        start_new_session=True,
                    )  # fmt: skip
                import boto3

                from prefect_neurodata.relay import EventRelay, prefect_api_headers

                sqs = boto3.client(
                    "sqs",
                    endpoint_url=env["AWS_ENDPOINT_URL"],
                    region_name=env.get("AWS_DEFAULT_REGION", "us-west-2"),
                    aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                )
                relay = EventRelay(sqs, env["NEURODATA_SQS_QUEUE_URL"], api_url,
                                   headers=prefect_api_headers(), wait_seconds=2)  # fmt: skip
                threading.Thread(target=relay.run, args=(stop_relay,), daemon=True).start()

                run_flows(env, rds_block)
                from prefect_neurodata.demo_cave import run_cave_flows

                cave = run_cave_flows(env, workdir)
                _say(f"all five flows done {time.monotonic() - t_start:.0f} s after start")
                location = _upload_new_asset(env)
                _say(
                    f"uploaded {location}: the relay turns its S3 notification into a "
                    "'neurodata.asset.uploaded' event and the served deployment registers it"
                )
                print()
                print(
                    f"  Prefect UI:  http://127.0.0.1:{port}  (flow runs, artifacts, deployments)"
                )
                print(f"  Sandbox env: {sandbox.env_file}")
                print(f"  Snapshot:    {cave['snapshot'].manifest}")
                print()
                if args.no_wait:
                    time.sleep(15)
                    return 0
                _say("services keep running; press Ctrl-C to stop")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
    finally:
        stop_relay.set()
        if serve_proc is not None:
            _stop(serve_proc, signal.SIGINT)
        if started_sandbox:
            sandbox.down()
            _say("sandbox stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
