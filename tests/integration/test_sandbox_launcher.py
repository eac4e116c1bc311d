"""The sandbox launcher, seed and AWS stand-ins, with real processes on 127.0.0.1.

The session ``sandbox`` fixture (tests/fixtures/sandbox.py) serves the read-only checks; the
lifecycle tests start their own small sandboxes so they can watch ports open and close.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pymongo
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from prefect_neurodata.sandbox.aws import s3_event_keys
from prefect_neurodata.sandbox.launcher import Sandbox, read_env_file
from prefect_neurodata.sandbox.processes import (
    SandboxError,
    ServiceProcess,
    is_same_process,
    port_open,
)
from tests.fixtures.sandbox import SEED, SEED_RECORDS, SEED_S3_ASSETS, SEED_UNREGISTERED

pytestmark = pytest.mark.integration

ENV_KEYS = {
    "NEURODATA_DOCDB_HOST",
    "NEURODATA_MONGO_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "NEURODATA_S3_BUCKET",
    "NEURODATA_SQS_QUEUE_URL",
}
CAVE_KEYS = {
    "NEURODATA_CAVE_GLOBAL_URL",
    "NEURODATA_CAVE_LOCAL_URL",
    "NEURODATA_CAVE_DATASTACK",
    "NEURODATA_CAVE_TOKEN",
    "NEURODATA_CAVE_VIEWER_TOKEN",
    "NEURODATA_CAVE_ADMIN_TOKEN",
}
V1_NAME = re.compile(r"^[A-Za-z-]+_\d{6}_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")
V2_NAME = re.compile(
    r"^([A-Za-z-]+_\d{6}_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}|\d{6}_\d{4}-\d{2}-\d{2}T\d{6})$"
)
DERIVED = re.compile(r"_(processed|sorted|stitched)_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z?$")


def _ports(sb: Sandbox) -> list[tuple[str, int]]:
    out = []
    for proc in json.loads(sb.state_path.read_text())["processes"].values():
        for url in proc["urls"].values():
            hostport = url.split("://", 1)[1].split("/", 1)[0]
            host, port = hostport.split(":")
            out.append((host, int(port)))
    return out


def _aws(env: dict[str, str], service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _signed_get(url: str, env: dict[str, str]) -> requests.Response:
    creds = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    req = AWSRequest(method="GET", url=url, headers={"Content-Type": "application/json"})
    SigV4Auth(creds, "execute-api", env["AWS_DEFAULT_REGION"]).add_auth(req)
    return requests.get(url, headers=dict(req.headers), timeout=30)


# -- lifecycle ---------------------------------------------------------------------------------
def test_up_status_down_stops_only_own_processes(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        sb = Sandbox(tmp_path / "sb", services=("mongo", "aws", "docdb"))
        sb.up()
        try:
            ports = _ports(sb)
            assert len(ports) == 3
            assert all(host == "127.0.0.1" and port_open(host, port) for host, port in ports)
            rows = sb.status()
            assert [r["service"] for r in rows] == ["mongo", "aws", "docdb"]
            assert all(r["running"] and r["healthy"] and r["pid"] for r in rows), rows
            assert sb.start_seconds is not None and sb.start_seconds < 60
            for r in rows:
                assert Path(r["log"]).exists()
            # A second `up` on a healthy sandbox reuses it instead of starting more processes.
            again = Sandbox(tmp_path / "sb", services=("mongo", "aws", "docdb")).up()
            assert [r["pid"] for r in again.status()] == [r["pid"] for r in rows]
            # Pretend the docdb pid now belongs to another process (pid reuse): `down` must
            # leave that process alone.
            state = json.loads(sb.state_path.read_text())
            docdb_pid = state["processes"]["docdb"]["pid"]
            fake = dict(state["processes"]["docdb"], pid=bystander.pid)
            state["processes"]["impostor"] = fake
            sb.state_path.write_text(json.dumps(state))
            assert not is_same_process(ServiceProcess(**fake))
        finally:
            stopped = sb.down()
        assert sorted(stopped) == ["aws", "docdb", "mongo"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(port_open(h, p) for h, p in ports):
            time.sleep(0.1)
        assert not any(port_open(h, p) for h, p in ports)
        assert bystander.poll() is None, "down() killed a process it did not start"
        assert not Path(f"/proc/{docdb_pid}").exists() or _zombie(docdb_pid)
        assert sb.status() == []
        assert not sb.state_path.exists()
        assert sb.down() == []
    finally:
        bystander.send_signal(signal.SIGTERM)
        bystander.wait(10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_failed_start_stops_what_was_started(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path / "bad", services=("mongo", "aws"), mongo_cache_size="not-a-size")
    with pytest.raises(SandboxError, match="mongo"):
        sb.up()
    assert not sb.state_path.exists()
    log = (tmp_path / "bad" / "logs" / "aws.log").read_text()
    assert "moto.server" in log
    assert Sandbox(tmp_path / "bad").status() == []


def test_bad_arguments_fail_before_starting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="services"):
        Sandbox(tmp_path, services=("mongo", "redis"))
    with pytest.raises(ValueError, match="faults"):
        Sandbox(tmp_path, faults={"s3": {"rate": 0.1}})
    with pytest.raises(ValueError, match="page_bytes"):
        Sandbox(tmp_path, page_bytes=0)
    with pytest.raises(ValueError, match="docdb"):
        Sandbox(tmp_path, services=("aws", "docdb")).up()
    assert not (tmp_path / "state.json").exists()


def test_cli_up_status_seed_down(tmp_path: Path) -> None:
    workdir = str(tmp_path / "cli")
    cli = [sys.executable, "-m", "prefect_neurodata.cli", "sandbox"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURODATA_SANDBOX_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args, "--workdir", workdir],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    up = run("up", "--services", "mongo,aws,docdb", "--json")
    try:
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert {s["service"] for s in info["services"]} == {"mongo", "aws", "docdb"}
        assert info["start_seconds"] > 0
        status = run("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(r["healthy"] for r in json.loads(status.stdout))
        seed = run("seed", "--records", "30", "--synapses", "0", "--s3-assets", "3", "--json")
        assert seed.returncode == 0, seed.stderr
        report = json.loads(seed.stdout)
        assert report["records_v1"] + report["records_v2"] == 30
        exported = run("env")
        assert "export NEURODATA_DOCDB_HOST=http://127.0.0.1:" in exported.stdout
    finally:
        down = run("down")
    assert down.returncode == 0
    assert "docdb" in down.stdout
    status = run("status")
    assert status.returncode == 1
    assert "no sandbox running" in status.stdout


def test_cli_help_lists_groups() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "prefect_neurodata.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert "sandbox" in out.stdout
    assert "events" in out.stdout
    relay = subprocess.run(
        [sys.executable, "-m", "prefect_neurodata.cli", "events", "relay", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert relay.returncode == 0 and "--queue-url" in relay.stdout


# -- env file ----------------------------------------------------------------------------------
def test_env_file_has_urls_and_credentials(sandbox: Sandbox, sandbox_env: dict[str, str]) -> None:
    assert set(sandbox_env) >= ENV_KEYS
    if "cave" in sandbox.services:
        assert set(sandbox_env) >= CAVE_KEYS
        assert sandbox_env["NEURODATA_CAVE_DATASTACK"] == "minnie_sandbox"
        assert len({sandbox_env[k] for k in CAVE_KEYS if k.endswith("TOKEN")}) == 3
    for key in ("NEURODATA_DOCDB_HOST", "AWS_ENDPOINT_URL"):
        assert sandbox_env[key].startswith("http://127.0.0.1:")
    assert sandbox_env["NEURODATA_MONGO_URI"].startswith("mongodb://127.0.0.1:")
    assert sandbox_env["AWS_DEFAULT_REGION"] == "us-west-2"
    assert sandbox_env["NEURODATA_SQS_QUEUE_URL"].startswith(sandbox_env["AWS_ENDPOINT_URL"])
    assert read_env_file(sandbox.env_file) == sandbox_env
    assert stat.S_IMODE(sandbox.env_file.stat().st_mode) == 0o600
    # The credentials in the env file are the ones the DocDB stand-in accepts.
    rec = requests.get(
        f"{sandbox_env['NEURODATA_DOCDB_HOST']}/v1/metadata_index/data_assets/find",
        params={"limit": "1", "projection": '{"_id": 1}'},
        timeout=30,
    ).json()[0]
    url = f"{sandbox_env['NEURODATA_DOCDB_HOST']}/v1/data_summary/{rec['_id']}"
    assert requests.get(url, timeout=30).status_code == 403
    assert _signed_get(url, sandbox_env).status_code == 200
    bad = dict(sandbox_env, AWS_SECRET_ACCESS_KEY="wrong" + sandbox_env["AWS_SECRET_ACCESS_KEY"])
    assert _signed_get(url, bad).status_code == 403


def test_status_reports_every_service_healthy(sandbox: Sandbox) -> None:
    rows = sandbox.status()
    assert {r["service"] for r in rows} == set(sandbox.services)
    assert all(r["running"] and r["healthy"] for r in rows), rows


# -- seed --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A DocDB + AWS sandbox of this module's own, seeded like the session one.

    The session ``sandbox`` is shared with contract and flow tests that register, upsert and
    delete records, so exact seed counts can only be checked on a sandbox nobody else writes to.
    """
    sb = Sandbox(tmp_path_factory.mktemp("seeded"), services=("mongo", "aws", "docdb"))
    sb.up()
    try:
        sb.seed(
            records=SEED_RECORDS,
            seed=SEED,
            s3_assets=SEED_S3_ASSETS,
            unregistered=SEED_UNREGISTERED,
        )
        yield sb
    finally:
        sb.down()


@pytest.fixture(scope="module")
def records(seeded: Sandbox) -> dict[str, list[dict[str, Any]]]:
    client = pymongo.MongoClient(seeded.env["NEURODATA_MONGO_URI"])
    try:
        return {
            "v1": list(client.metadata_index.data_assets.find({})),
            "v2": list(client.metadata_index_v2.data_assets.find({})),
        }
    finally:
        client.close()


def test_seed_counts_and_record_shapes(
    seeded: Sandbox, records: dict[str, list[dict[str, Any]]]
) -> None:
    sandbox, sandbox_env = seeded, seeded.env
    assert len(records["v1"]) + len(records["v2"]) == SEED_RECORDS
    assert len(records["v1"]) == len(records["v2"]) == SEED_RECORDS // 2
    for version, pattern in (("v1", V1_NAME), ("v2", V2_NAME)):
        recs = records[version]
        derived = [r for r in recs if r["data_description"]["data_level"] == "derived"]
        raw = [r for r in recs if r["data_description"]["data_level"] == "raw"]
        assert len(derived) > 10 and len(raw) > 10
        for r in raw:
            assert pattern.match(r["name"]), r["name"]
        for r in derived:
            assert DERIVED.search(r["name"]), r["name"]
        for r in recs:
            assert uuid.UUID(r["_id"]).version == 4
            assert r["location"].startswith("s3://")
            if r["location"].startswith("s3://codeocean-"):
                assert r["data_description"]["data_level"] == "derived"
            else:
                assert r["location"].endswith("/" + r["name"])
            assert r["data_description"]["name"] == r["name"]
        stamp = "last_modified" if version == "v1" else "_last_modified"
        assert all(ISO.match(r[stamp]) for r in recs)
    assert all(ISO.match(r["created"]) for r in records["v1"])
    assert len({r["location"] for v in records.values() for r in v}) == SEED_RECORDS
    # The REST API sees the same data.
    counts = requests.get(
        f"{sandbox_env['NEURODATA_DOCDB_HOST']}/v2/metadata_index/data_assets/count_documents",
        timeout=30,
    ).json()
    assert counts["total_record_count"] == SEED_RECORDS // 2
    assert sandbox.last_seed is not None
    assert sandbox.last_seed["records_v1"] == SEED_RECORDS // 2


def test_seed_record_sizes_span_5_to_over_100_kb(records: dict[str, list[dict[str, Any]]]) -> None:
    sizes = sorted(len(json.dumps(r)) for v in records.values() for r in v)
    assert sizes[0] >= 5_000
    assert sizes[-1] > 100_000
    # Realistic distribution: most records are small, the heavy tail is rare.
    median = sizes[len(sizes) // 2]
    assert 6_000 <= median <= 20_000
    assert sum(s > 30_000 for s in sizes) < len(sizes) * 0.15


def test_s3_folders_match_records_and_some_are_unregistered(
    seeded: Sandbox, records: dict[str, list[dict[str, Any]]]
) -> None:
    sandbox_env = seeded.env
    bucket = sandbox_env["NEURODATA_S3_BUCKET"]
    s3 = _aws(sandbox_env, "s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/")
    prefixes = {p["Prefix"].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])}
    in_bucket = {
        r["name"]: (v, r)
        for v, recs in records.items()
        for r in recs
        if r["location"] == f"s3://{bucket}/{r['name']}"
    }
    assert len(in_bucket) == SEED_S3_ASSETS
    assert set(in_bucket) <= prefixes
    unregistered = prefixes - set(in_bucket)
    assert len(unregistered) == SEED_UNREGISTERED
    all_names = {r["name"] for recs in records.values() for r in recs}
    assert not unregistered & all_names
    for name in sorted(unregistered):
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=name + "/")["Contents"]}
        assert f"{name}/data_description.json" in keys
        assert f"{name}/metadata.nd.json" not in keys
    for name, (_version, rec) in sorted(in_bucket.items())[:10]:
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=name + "/")["Contents"]}
        assert {f"{name}/data_description.json", f"{name}/metadata.nd.json"} <= keys
        body = s3.get_object(Bucket=bucket, Key=f"{name}/data_description.json")["Body"].read()
        assert json.loads(body) == rec["data_description"]
        if rec.get("subject") is not None:
            assert f"{name}/subject.json" in keys
        nd = json.loads(s3.get_object(Bucket=bucket, Key=f"{name}/metadata.nd.json")["Body"].read())
        assert nd["_id"] == rec["_id"] and nd["location"] == rec["location"]


def test_sqs_receives_object_created_for_data_description(sandbox_env: dict[str, str]) -> None:
    s3, sqs = _aws(sandbox_env, "s3"), _aws(sandbox_env, "sqs")
    queue = sandbox_env["NEURODATA_SQS_QUEUE_URL"]
    bucket = sandbox_env["NEURODATA_S3_BUCKET"]
    prefix = f"ecephys_{uuid.uuid4().int % 900000 + 100000}_2026-11-21_10-00-00"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/notes.txt", Body=b"not a trigger")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/data_description.json", Body=b"{}")
    keys: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and f"{prefix}/data_description.json" not in keys:
        resp = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for msg in resp.get("Messages", []):
            body = json.loads(msg["Body"])
            if body.get("Event") == "s3:TestEvent":
                continue
            assert body["Records"][0]["eventName"].startswith("ObjectCreated:")
            keys.extend(s3_event_keys(msg["Body"]))
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=msg["ReceiptHandle"])
    assert f"{prefix}/data_description.json" in keys
    assert f"{prefix}/notes.txt" not in keys
    s3.delete_objects(
        Bucket=bucket,
        Delete={
            "Objects": [{"Key": f"{prefix}/notes.txt"}, {"Key": f"{prefix}/data_description.json"}]
        },
    )


def test_secret_and_ssm_parameter_exist(sandbox_env: dict[str, str]) -> None:
    sm, ssm = _aws(sandbox_env, "secretsmanager"), _aws(sandbox_env, "ssm")
    secret = json.loads(
        sm.get_secret_value(SecretId=sandbox_env["NEURODATA_AWS_SECRET_NAME"])["SecretString"]
    )
    assert set(secret) == {"username", "password"}
    param = ssm.get_parameter(Name=sandbox_env["NEURODATA_SSM_SETTINGS_PARAMETER"])["Parameter"]
    assert json.loads(param["Value"])["s3_buckets"] == [sandbox_env["NEURODATA_S3_BUCKET"]]


def test_faults_can_be_toggled_at_runtime(sandbox: Sandbox, sandbox_env: dict[str, str]) -> None:
    url = f"{sandbox_env['NEURODATA_DOCDB_HOST']}/v1/metadata_index/data_assets/count_documents"
    try:
        applied = sandbox.faults("docdb", rate=1.0, statuses=[503], seed=3)
        assert applied["rate"] == 1.0
        assert requests.get(url, timeout=30).status_code == 503
    finally:
        sandbox.faults("docdb")
    assert requests.get(url, timeout=30).status_code == 200


def test_cave_seeded_when_present(sandbox: Sandbox, sandbox_env: dict[str, str]) -> None:
    if "cave" not in sandbox.services:
        pytest.fail("the CAVE stand-in is part of the tree but the sandbox did not start it")
    world = requests.get(
        f"{sandbox_env['NEURODATA_CAVE_GLOBAL_URL']}/__sandbox__/world", timeout=30
    )
    assert world.status_code == 200
    assert world.json()["seeded"] is True
    assert sandbox.last_seed["synapses"] > 0


def test_services_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from prefect_neurodata.sandbox.launcher import Sandbox\n"
        f"sb = Sandbox({str(tmp_path / 'orphan')!r}, services=('aws',)).up()\n"
        "print(sb.env['AWS_ENDPOINT_URL'], flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        url = parent.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        port = int(url.rsplit(":", 1)[1])
        assert port_open("127.0.0.1", port)
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and port_open("127.0.0.1", port):
        time.sleep(0.1)
    assert not port_open("127.0.0.1", port), "moto outlived the killed process that started it"
