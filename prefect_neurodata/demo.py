"""``python -m prefect_neurodata.demo``: the five flows on a local sandbox, end to end, through
their deployments, as a user would run them.

1. Starts the sandbox in ``.sandbox`` (SecantusDB, the DocDB and CAVE stand-ins, moto S3/SQS and
   a PostgreSQL server), or reuses a running one, and seeds it.
2. Starts a Prefect server with the UI on 127.0.0.1 (state in ``.sandbox/prefect``).
3. Saves the blocks the deployments name (``neurodata-aws``, ``neurodata-docdb``,
   ``neurodata-rds``, ``neurodata-cave``), serves the five deployments (``deployments/serve.py``)
   and starts the S3 -> Prefect event relay (``neurodata events relay``). ``neurodata sandbox
   status`` lists these processes beside the services.
4. Runs each flow through its deployment (tag ``demo``): asset registration, QC attachment,
   metadata sync with its export to Postgres, annotation upload, materialization snapshot.
5. Uploads one more asset and reports when the event-triggered registration has completed.
6. Keeps everything running until Ctrl-C or SIGTERM, then stops everything it started, saying
   what it stops, within seconds.

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
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from prefect_neurodata.deployments import AWS_BLOCK_NAME, BLOCK_NAMES, deployment_specs

REPO = Path(__file__).resolve().parents[1]
DEMO_TAG = "demo"
PREFECT_SERVER = "prefect-server"
DEPLOYMENT_RUNNER = "deployment-runner"
EVENT_RELAY = "event-relay"


class DemoStopped(Exception):
    """SIGTERM arrived: stop like Ctrl-C does."""


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


def _prefect_env(home: Path, api_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the demo's Prefect processes: state and results under ``home``."""
    env = {
        **os.environ,
        **(extra or {}),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    return env


def _spawn(sandbox: Any, name: str, command: list[str], log: Path, env: dict[str, str],
           urls: dict[str, str] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``command`` in its own session, logging to ``log``; the sandbox adopts it.

    Processes without URLs are clients of the others (runner, relay) and are stopped first.
    """
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    sandbox.adopt(name, process.pid, command, log, urls=urls, group=True, stop_first=not urls)
    return process


def start_prefect_server(sandbox: Any, home: Path, port: int) -> str:
    """A Prefect server with the UI on 127.0.0.1:``port``; returns the API URL."""
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = _prefect_env(home, api_url, {"PREFECT_UI_API_URL": api_url})
    env.pop("PREFECT_API_URL")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    log = home / "server.log"
    urls = {"ui": f"http://127.0.0.1:{port}", "health": f"{api_url}/health"}
    process = _spawn(sandbox, PREFECT_SERVER, command, log, env, urls=urls)
    deadline = time.monotonic() + 180
    while not _healthy(api_url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not start; see {log}")
        time.sleep(0.5)
    return api_url


def _start_sandbox(workdir: Path, records: int, s3_assets: int) -> tuple[Any, bool]:
    from prefect_neurodata.sandbox.launcher import Sandbox

    sandbox = Sandbox(workdir, services=("mongo", "aws", "docdb", "cave", "postgres"), detach=True)
    rows = sandbox.status()
    if rows and all(row.get("healthy") for row in rows if row["service"] in sandbox.services):
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


def save_blocks(env: dict[str, str]) -> dict[str, str | None]:
    """Save the blocks the deployments name, pointing at the sandbox.

    The AWS credentials are a named block that the DocDB block references (not an inline,
    anonymous one): the Prefect UI can then show and keep it when the DocDB block is edited.

    Returns:
        Flow parameter -> block name (``rds_block`` is None without a sandbox Postgres).
    """
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters
    from pydantic import SecretStr

    from prefect_neurodata.blocks import DocDbApiCredentials, RdsCredentials
    from prefect_neurodata.demo_cave import save_cave_block

    AwsCredentials(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-west-2"),
        aws_client_parameters=AwsClientParameters(endpoint_url=env["AWS_ENDPOINT_URL"]),
    ).save(AWS_BLOCK_NAME, overwrite=True)
    DocDbApiCredentials(
        host=env["NEURODATA_DOCDB_HOST"], aws_credentials=AwsCredentials.load(AWS_BLOCK_NAME)
    ).save(BLOCK_NAMES["docdb_block"], overwrite=True)
    saved: dict[str, str | None] = {"docdb_block": BLOCK_NAMES["docdb_block"], "rds_block": None}
    if env.get("NEURODATA_POSTGRES_URL"):
        from sqlalchemy.engine import make_url

        url = make_url(env["NEURODATA_POSTGRES_URL"])
        RdsCredentials(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            username=url.username or "postgres",
            # the sandbox cluster trusts local connections
            password=SecretStr(url.password or "unused"),
            database=url.database or "postgres",
            drivername=url.drivername,
        ).save(BLOCK_NAMES["rds_block"], overwrite=True)
        saved["rds_block"] = BLOCK_NAMES["rds_block"]
    if env.get("NEURODATA_CAVE_GLOBAL_URL"):
        saved["cave_block"] = save_cave_block(env, BLOCK_NAMES["cave_block"])
    return saved


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


def demo_runs(env: dict[str, str], workdir: Path, blocks: dict[str, str | None]) -> list[Any]:
    """``(deployment spec, parameters)`` of each flow run the demo starts, in order."""
    from prefect_neurodata.blocks import DocDbApiCredentials
    from prefect_neurodata.demo_cave import annotation_upload_request
    from prefect_neurodata.tasks.s3 import list_prefixes

    specs = {spec.key: spec for spec in deployment_specs(bucket=env["NEURODATA_S3_BUCKET"])}
    bucket = env["NEURODATA_S3_BUCKET"]
    # Synchronous caller: Prefect's sync_compatible load returns the block itself.
    docdb = cast(DocDbApiCredentials, DocDbApiCredentials.load(BLOCK_NAMES["docdb_block"]))
    prefixes = list_prefixes(docdb.get_s3_client(), bucket)
    with docdb.get_client() as client:
        sample = client.retrieve_docdb_records(
            filter_query={"location": {"$regex": f"^s3://{bucket}/"}},
            projection={"_id": 1},
            limit=5,
        )
    runs: list[Any] = [
        (specs["registration"], {"request": {"bucket": bucket, "prefixes": prefixes}}),
        (
            specs["qc"],
            {
                "request": {
                    "assets": [{"id": record["_id"]} for record in sample],
                    "evaluations": [_demo_evaluation()],
                }
            },
        ),
        (
            specs["sync"],
            {
                "request": {"bucket": bucket, "lookback_days": None},
                "rds_block": blocks["rds_block"],
            },
        ),
    ]
    if blocks.get("cave_block"):
        runs.append(
            (specs["annotations"], {"request": annotation_upload_request(workdir)}),
        )
        runs.append((specs["snapshot"], {}))  # the deployment's own destination (s3://)
    return runs


def run_through_deployments(runs: list[Any], ui_url: str) -> list[Any]:
    """Start each run from its deployment (tag ``demo``) and wait for it; returns the runs."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    finished = []
    for number, (spec, parameters) in enumerate(runs, start=1):
        t0 = time.monotonic()
        _say(f"{number}/{len(runs)} {spec.full_name}: started")
        # Synchronous caller: Prefect's sync_compatible run_deployment returns the flow run.
        flow_run = cast(
            FlowRun,
            run_deployment(
                spec.full_name,
                parameters=parameters,
                tags=[DEMO_TAG],
                timeout=1800,
                poll_interval=1,
                as_subflow=False,
            ),
        )
        state = flow_run.state.name if flow_run.state else "unknown"
        _say(
            f"{number}/{len(runs)} {spec.full_name}: run {flow_run.name!r} {state} in "
            f"{time.monotonic() - t0:.1f} s; {ui_url}/runs/flow-run/{flow_run.id}"
        )
        finished.append(flow_run)
    return finished


def wait_for_event_registration(location: str, since: float, timeout: float = 180) -> Any:
    """Wait for the event-triggered registration run of ``location`` to finish; returns it."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    spec = next(s for s in deployment_specs() if s.key == "registration")
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[spec.name]))
            )
            for flow_run in runs:
                request = (flow_run.parameters or {}).get("request") or {}
                if (
                    location in (request.get("locations") or [])
                    and flow_run.state
                    and (flow_run.state.is_final())
                ):
                    return flow_run
            time.sleep(1)
    raise TimeoutError(f"no finished registration run for {location} after {timeout:.0f} s")


def _wait_for_deployments(timeout: float = 120) -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        for spec in deployment_specs():
            while True:
                try:
                    client.read_deployment_by_name(spec.full_name)
                    break
                except ObjectNotFound:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{spec.full_name} was not served") from None
                    time.sleep(0.5)


def _flush_prefect_clients() -> None:
    """Send queued events and logs while the server still answers (not at exit, after it)."""
    if "prefect.events.worker" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=2)


def _raise_stop(signum: int, frame: object) -> None:
    raise DemoStopped(signal.Signals(signum).name)


def _print_where(port: int, api_url: str, workdir: Path, sandbox: Any) -> None:
    print()
    print(f"  Prefect UI:    http://127.0.0.1:{port}  (runs tagged '{DEMO_TAG}', artifacts)")
    print(f"  Prefect CLI:   export PREFECT_API_URL={api_url}")
    print("                 then e.g. `prefect flow-run ls --limit 5`, `prefect deployment ls`")
    print(f"  Served log:    {workdir / 'serve.log'}  (the deployment runner and its flow runs)")
    print(f"  Relay log:     {workdir / 'relay.log'}")
    print(f"  Server log:    {workdir / 'prefect' / 'server.log'}")
    print(f"  Sandbox:       {sandbox.env_file}; `neurodata sandbox status --workdir {workdir}`")
    print()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo (see the module docs)."""
    parser = argparse.ArgumentParser(
        prog="python -m prefect_neurodata.demo",
        description="The five flows on a local sandbox, through their deployments.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workdir", default=".sandbox", help="sandbox and Prefect state")
    parser.add_argument("--records", type=int, default=15_000, help="DocDB records to seed")
    parser.add_argument("--s3-assets", type=int, default=300, help="S3 asset folders to seed")
    parser.add_argument("--port", type=int, default=4200, help="Prefect server port if free")
    parser.add_argument("--no-wait", action="store_true", help="stop after the flows")
    parser.add_argument(
        "--serve-only",
        action="store_true",
        help="start everything and save the blocks, but run no flows (for trying the UI)",
    )
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).absolute()
    t_start = time.monotonic()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_stop)
    # Ctrl-C even when started from a script that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sandbox: Any = None
    started_sandbox = False
    try:
        sandbox, started_sandbox = _start_sandbox(workdir, args.records, args.s3_assets)
        env = sandbox.env
        port = _free_port(args.port)
        home = workdir / "prefect"
        api_url = start_prefect_server(sandbox, home, port)
        _say(f"Prefect server ready at http://127.0.0.1:{port}")
        os.environ.update(_prefect_env(home, api_url))
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

        with temporary_settings({PREFECT_API_URL: api_url, PREFECT_HOME: home}):
            blocks = save_blocks(env)
            _say(f"saved blocks {AWS_BLOCK_NAME}, " + ", ".join(b for b in blocks.values() if b))
            if blocks.get("cave_block"):
                from prefect_neurodata.demo_cave import ensure_cave_seeded

                ensure_cave_seeded(env)  # the snapshot needs a materialized version
            if blocks["rds_block"] is None:
                _say("no sandbox Postgres: the sync's summary export is skipped")
            runner_env = _prefect_env(home, api_url, {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"})
            _spawn(sandbox, DEPLOYMENT_RUNNER,
                   [sys.executable, str(REPO / "deployments" / "serve.py"),
                    "--bucket", env["NEURODATA_S3_BUCKET"]],
                   workdir / "serve.log", runner_env)  # fmt: skip
            _spawn(sandbox, EVENT_RELAY,
                   [sys.executable, "-m", "prefect_neurodata.cli", "events", "relay",
                    "--env-file", str(sandbox.env_file), "--api-url", api_url,
                    "--wait-seconds", "2"],
                   workdir / "relay.log", _prefect_env(home, api_url))  # fmt: skip
            _wait_for_deployments()
            _say("serving the five deployments; relaying S3 uploads as Prefect events")
            ui_url = f"http://127.0.0.1:{port}"
            if not args.serve_only:
                run_through_deployments(demo_runs(env, workdir, blocks), ui_url)
                _say(f"all flows done {time.monotonic() - t_start:.0f} s after start")
                uploaded = time.monotonic()
                location = _upload_new_asset(env)
                _say(f"uploaded {location}: waiting for its event-triggered registration")
                flow_run = wait_for_event_registration(location, uploaded)
                _say(
                    f"event-triggered registration of {location}: run {flow_run.name!r} "
                    f"{flow_run.state.name} {time.monotonic() - uploaded:.1f} s after the "
                    f"upload; {ui_url}/runs/flow-run/{flow_run.id}"
                )
            _print_where(port, api_url, workdir, sandbox)
            if args.no_wait:
                return 0
            _say("everything keeps running; press Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except (KeyboardInterrupt, DemoStopped) as stop:
        reason = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else str(stop)
        print()
        _say(f"{reason}: stopping everything the demo started")
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _flush_prefect_clients()
        if sandbox is not None:
            t0 = time.monotonic()
            mine = None if started_sandbox else [PREFECT_SERVER, DEPLOYMENT_RUNNER, EVENT_RELAY]
            stopped = sandbox.down(
                only=mine, announce=lambda name, pid: _say(f"stopping {name} (pid {pid})")
            )
            _say(f"stopped {len(stopped)} process(es) in {time.monotonic() - t0:.1f} s")
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
