"""Each sandbox service's start-up and readiness: its command line, environment and health.

The launcher runs every stand-in as its own process on a free 127.0.0.1 port:

==========  ====================================================================================
service     process
==========  ====================================================================================
``mongo``   ``secantusd-py --host 127.0.0.1 --port P --storage-path <workdir>/mongo --standalone``
            (skipped when ``mongo_uri`` is given: that database is used instead)
``aws``     ``python -m moto.server -H 127.0.0.1 -p P`` (S3, SQS, Secrets Manager, SSM), then the
            bucket, queue, ObjectCreated notification, secret and SSM parameter are created
``docdb``   ``python -m uvicorn --factory prefect_neurodata.sandbox.docdb.app:create_app``
``cave``    ``python -m prefect_neurodata.sandbox.cave --host 127.0.0.1 --global-port A
            --local-port B`` (global and local CAVE services in one process)
``postgres`` (only when asked for) Debian's PostgreSQL server, ``postgres -D <workdir>/postgres``
            on 127.0.0.1 after ``initdb`` (run as the ``postgres`` user when root): the metadata
            sync's summary export target
==========  ====================================================================================

What differs from one service to the next lives here: whether it can run on this machine, its
:data:`ServicePlan` (command line, environment, URLs), the probe that tells it is healthy, the
provisioning of the AWS stand-ins once moto answers, and the request that sets a service's
faults. Which services run, in which order, the env file's entries for clients, and when the
state and env files are written stay with :class:`~prefect_neurodata.sandbox.launcher.Sandbox`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect_neurodata.sandbox.processes import (
    HOST,
    SandboxError,
    ServiceProcess,
    port_open,
    tail_log,
)

CAVE_MODULE = "prefect_neurodata.sandbox.cave"
DOCDB_FACTORY = "prefect_neurodata.sandbox.docdb.app:create_app"

ServicePlan = tuple[list[str], dict[str, str], dict[str, str]]
"""One service to start: its command line, the environment it adds, its base URLs by role."""


def random_key(n: int, alphabet: str) -> str:
    """``n`` characters drawn from ``alphabet`` with :mod:`secrets` (test credentials)."""
    return "".join(secrets.choice(alphabet) for _ in range(n))


def sandbox_credentials() -> dict[str, str]:
    """Fresh test credentials: an AWS key pair and the CAVE admin, user and viewer tokens."""
    upper = string.ascii_uppercase + string.digits
    return {
        "access_key_id": "AKIA" + random_key(16, upper),
        "secret_access_key": random_key(40, string.ascii_letters + string.digits),
        "cave_admin": secrets.token_hex(16),
        "cave_user": secrets.token_hex(16),
        "cave_viewer": secrets.token_hex(16),
    }


def secantusd_path() -> str | None:
    """The ``secantusd-py`` next to the Python interpreter, else on PATH, else None."""
    local = Path(sys.executable).parent / "secantusd-py"
    return str(local) if local.exists() else shutil.which("secantusd-py")


def cave_available() -> bool:
    """True when the CAVE stand-in can be run as ``python -m prefect_neurodata.sandbox.cave``."""
    try:
        return importlib.util.find_spec(f"{CAVE_MODULE}.__main__") is not None
    except ModuleNotFoundError:
        return False


def postgres_bindir() -> Path | None:
    """Directory of the newest installed PostgreSQL server's binaries (Debian layout)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _make_traversable(path: Path) -> None:
    """Let the unprivileged ``postgres`` user reach ``path`` through private parents."""
    for parent in path.parents:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)


def check_prerequisites(services: Sequence[str], mongo_uri: str | None) -> None:
    """Fail before anything starts when a chosen service cannot run on this machine.

    Args:
        services: The services to start.
        mongo_uri: The MongoDB to use instead of starting SecantusDB, if any.

    Raises:
        ValueError: ``docdb`` without a database.
        SandboxError: PostgreSQL, the CAVE stand-in or ``secantusd-py`` is not installed.
    """
    if "docdb" in services and "mongo" not in services and not mongo_uri:
        raise ValueError("services: 'docdb' needs 'mongo' or a mongo_uri")
    if "postgres" in services and not postgres_bindir():
        raise SandboxError(
            "the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/initdb); "
            "run `make system-deps` (Debian package postgresql)"
        )
    if "cave" in services and not cave_available():
        raise SandboxError(
            f"the CAVE stand-in is not available: module {CAVE_MODULE}.__main__ not found. "
            "Start the sandbox without it, e.g. services=('mongo', 'aws', 'docdb') or "
            "`neurodata sandbox up --services mongo,aws,docdb`"
        )
    if "mongo" in services and not secantusd_path():
        raise SandboxError(
            "secantusd-py not found next to the Python interpreter or on PATH; "
            "install the sandbox extra (`pip install prefect-neurodata[sandbox]`) or pass "
            "a mongo_uri"
        )


def mongo_plan(port: int, workdir: Path, cache_size: str) -> ServicePlan:
    """SecantusDB on ``port``, storing under ``<workdir>/mongo``; its URL is the MongoDB URI."""
    cmd = [
        str(secantusd_path()),
        "--host",
        HOST,
        "--port",
        str(port),
        "--storage-path",
        str(workdir / "mongo"),
        "--standalone",
        "--cache-size",
        cache_size,
    ]
    return cmd, {}, {"url": f"mongodb://{HOST}:{port}/?directConnection=true"}


def aws_plan(port: int) -> ServicePlan:
    """moto's server on ``port`` (S3, SQS, Secrets Manager, SSM)."""
    from prefect_neurodata.sandbox.aws import moto_command

    return moto_command(HOST, port), {}, {"url": f"http://{HOST}:{port}"}


def docdb_plan(
    port: int,
    common: Mapping[str, str],
    mongo_uri: str | None,
    page_bytes: int | None,
    request_bytes: int | None,
    faults: Mapping[str, Any] | None,
) -> ServicePlan:
    """The DocDB stand-in under uvicorn on ``port``.

    Args:
        port: Its port.
        common: Environment every HTTP stand-in gets (AWS endpoint, region, credentials).
        mongo_uri: The database it serves from.
        page_bytes: Its ``find`` page cap, if not the default.
        request_bytes: Its request size cap, if not the default.
        faults: Its fault config at start-up, if any.
    """
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        DOCDB_FACTORY,
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    env = {**common, "NEURODATA_SANDBOX_MONGO_URI": str(mongo_uri)}
    if page_bytes:
        env["NEURODATA_SANDBOX_PAGE_BYTES"] = str(int(page_bytes))
    if request_bytes:
        env["NEURODATA_SANDBOX_REQUEST_BYTES"] = str(int(request_bytes))
    if faults is not None:
        env["NEURODATA_SANDBOX_FAULTS_DOCDB"] = json.dumps(faults)
    return cmd, env, {"url": f"http://{HOST}:{port}"}


def cave_plan(
    ports: tuple[int, int],
    common: Mapping[str, str],
    workdir: Path,
    credentials: Mapping[str, str],
    datastack: str,
    db_url: str | None,
    faults: Mapping[str, Any] | None,
) -> ServicePlan:
    """The global and local CAVE stand-ins in one process; creates ``<workdir>/cave``.

    Args:
        ports: The global and the local service's ports.
        common: Environment every HTTP stand-in gets (AWS endpoint, region, credentials).
        workdir: The sandbox directory (CAVE keeps its files in ``<workdir>/cave``).
        credentials: The tokens of :func:`sandbox_credentials`.
        datastack: Name of its datastack.
        db_url: SQLAlchemy URL of its database (default: SQLite in its directory).
        faults: Its fault config at start-up, if any.
    """
    global_port, local_port = ports
    global_url, local_url = f"http://{HOST}:{global_port}", f"http://{HOST}:{local_port}"
    cmd = [
        sys.executable,
        "-m",
        CAVE_MODULE,
        "--host",
        HOST,
        "--global-port",
        str(global_port),
        "--local-port",
        str(local_port),
    ]
    env = {
        **common,
        "NEURODATA_SANDBOX_CAVE_WORKDIR": str(workdir / "cave"),
        "NEURODATA_SANDBOX_CAVE_ADMIN_TOKEN": credentials["cave_admin"],
        "NEURODATA_SANDBOX_CAVE_USER_TOKEN": credentials["cave_user"],
        "NEURODATA_SANDBOX_CAVE_VIEWER_TOKEN": credentials["cave_viewer"],
        "NEURODATA_SANDBOX_CAVE_GLOBAL_URL": global_url,
        "NEURODATA_SANDBOX_CAVE_LOCAL_URL": local_url,
        "NEURODATA_SANDBOX_CAVE_DATASTACK": datastack,
    }
    if db_url:
        env["NEURODATA_SANDBOX_CAVE_DB_URL"] = db_url
    if faults is not None:
        env["NEURODATA_SANDBOX_FAULTS_CAVE"] = json.dumps(faults)
    (workdir / "cave").mkdir(parents=True, exist_ok=True)
    return cmd, env, {"global": global_url, "local": local_url}


def postgres_plan(port: int, workdir: Path) -> ServicePlan:
    """PostgreSQL on ``port``; ``initdb`` of ``<workdir>/postgres`` runs once, here."""
    url = f"postgresql+psycopg2://postgres@{HOST}:{port}/postgres"
    return _postgres_command(port, workdir), {}, {"url": url}


def _postgres_command(port: int, workdir: Path) -> list[str]:
    """``initdb`` the cluster in ``<workdir>/postgres`` once; the server's command line."""
    bindir = postgres_bindir()
    assert bindir is not None  # checked in Sandbox._preflight
    root = workdir / "postgres"
    data = root / "data"
    as_postgres = os.geteuid() == 0  # initdb and postgres refuse to run as root
    root.mkdir(parents=True, exist_ok=True)
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
        _make_traversable(root)
    if not (data / "PG_VERSION").exists():
        result = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, user="postgres" if as_postgres else None,
        )  # fmt: skip
        if result.returncode != 0:
            raise SandboxError(f"initdb of {data} failed: {result.stderr[-2000:]}")
    return [
        str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
        "-c", f"listen_addresses={HOST}", "-c", "fsync=off",
        "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    ]  # fmt: skip


def check_service(name: str, urls: Mapping[str, str]) -> tuple[bool, str]:
    """One health probe of service ``name`` at ``urls``: ``(healthy, detail)``."""
    import requests

    try:
        for url in urls.values():
            # A closed port answers at once; pymongo would wait for its selection timeout.
            hostport = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
            host, _, port = hostport.rpartition(":")
            if host in (HOST, "localhost") and port.isdigit() and not port_open(host, int(port)):
                return False, f"nothing listening on {hostport}"
        if name == "postgres":
            import psycopg2

            host, port = hostport.split("@")[-1].rsplit(":", 1)
            if not port_open(host, int(port)):
                return False, f"nothing listening on {host}:{port}"
            psycopg2.connect(
                host=host, port=int(port), user="postgres", dbname="postgres", connect_timeout=2
            ).close()
            return True, "ok"
        if name == "mongo":
            import pymongo

            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                urls["url"], serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
            )
            try:
                client.admin.command("ping")
            finally:
                client.close()
            return True, "ok"
        if name == "aws":
            resp = requests.get(f"{urls['url']}/moto-api/", timeout=2)
            return resp.status_code < 500, f"HTTP {resp.status_code}"
        for url in urls.values():
            resp = requests.get(f"{url}/__sandbox__/health", timeout=3)
            if resp.status_code != 200:
                return False, f"{url}: HTTP {resp.status_code} {resp.text[:200]}"
        return True, "ok"
    except Exception as exc:  # any failure to answer means "not healthy yet"
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"


def check_adopted(proc: ServiceProcess) -> tuple[bool, str]:
    """Health of an adopted process: its ``health`` URL answers 200 (running is enough
    when it has none): ``(healthy, detail)``."""
    import requests

    health = proc.urls.get("health")
    if not health:
        return True, "running"
    try:
        resp = requests.get(health, timeout=3)
    except requests.RequestException as exc:
        return False, f"{health}: {type(exc).__name__}"
    return resp.status_code == 200, f"{health}: HTTP {resp.status_code}"


def put_fault_config(urls: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, Any]:
    """Replace the fault configuration at each of a service's ``urls`` (``PUT
    /__sandbox__/faults``); returns the configuration the (last) service now reports.

    Raises:
        SandboxError: A service refused the configuration (with its answer).
    """
    import requests

    result: dict[str, Any] = {}
    for url in dict.fromkeys(urls.values()):
        resp = requests.put(f"{url}/__sandbox__/faults", json=config, timeout=10)
        if resp.status_code >= 400:
            raise SandboxError(
                f"PUT {url}/__sandbox__/faults answered {resp.status_code}: {resp.text[:300]}"
            )
        result = resp.json()
    return result


def provision_aws_standins(
    endpoint_url: str,
    credentials: Mapping[str, str],
    region: str,
    bucket: str,
    queue: str,
    docdb_host: str | None,
) -> dict[str, str]:
    """Create the bucket, queue, notification, secret and SSM parameter on moto.

    Args:
        endpoint_url: moto's URL.
        credentials: The AWS key pair of :func:`sandbox_credentials`.
        region: AWS region.
        bucket: S3 bucket of the assets.
        queue: SQS queue receiving the bucket's ObjectCreated notifications.
        docdb_host: ``host:port`` of the DocDB stand-in for the SSM settings, if it runs.

    Returns:
        What :func:`prefect_neurodata.sandbox.aws.provision` created (``bucket``,
        ``queue_url``, ``secret_name``, ``ssm_parameter``).
    """
    from prefect_neurodata.sandbox.aws import AwsTarget, provision

    target = AwsTarget(
        endpoint_url=endpoint_url,
        region=region,
        access_key_id=credentials["access_key_id"],
        secret_access_key=credentials["secret_access_key"],
    )
    return provision(
        target,
        bucket=bucket,
        queue=queue,
        secret_value={"username": "sandbox", "password": random_key(24, string.ascii_letters)},
        ssm_value={
            "s3_buckets": [bucket],
            "doc_db_host": docdb_host,
            "n_partitions": 20,
            "lookback_days": 14,
            "copy_original_md_subdir": "original_metadata",
            "run_docdb_sync": True,
            "run_s3_sync": True,
        },
    )


def wait_until_healthy(
    procs: Mapping[str, ServiceProcess],
    popens: Mapping[int, subprocess.Popen[bytes]],
    start_timeout: float,
    ready_seconds: dict[str, float],
    provision_aws: Callable[[str], dict[str, str]],
) -> dict[str, str]:
    """Poll every service until healthy; provision AWS as soon as moto answers.

    Args:
        procs: The started services by name.
        popens: Their ``Popen`` handles by pid (a service that exits fails at once).
        start_timeout: Seconds to wait for all of them.
        ready_seconds: Filled in with each service's seconds until healthy, as they become so.
        provision_aws: Called with moto's URL in a thread of its own once moto answers.

    Returns:
        What ``provision_aws`` returned (empty without ``aws``).

    Raises:
        SandboxError: A service exited or was not healthy in time (with its log's tail), or
            provisioning failed or timed out.
    """
    started = time.monotonic()
    deadline = started + start_timeout
    pending = dict(procs)
    provisioned: dict[str, str] = {}
    prov_error: list[BaseException] = []
    prov_thread: threading.Thread | None = None
    last: dict[str, str] = {}

    def provision() -> None:
        try:
            provisioned.update(provision_aws(procs["aws"].urls["url"]))
        except BaseException as exc:
            prov_error.append(exc)

    # boto3 takes a noticeable time to import: do it while the services boot.
    warm = threading.Thread(target=lambda: __import__("boto3"), daemon=True)
    warm.start()
    while True:
        for name, proc in list(pending.items()):
            popen = popens.get(proc.pid)
            if popen is not None and popen.poll() is not None:
                raise SandboxError(
                    f"sandbox service {name!r} exited with code {popen.returncode} during "
                    f"start-up; last lines of {proc.log}:\n{tail_log(proc.log)}"
                )
            ok, detail = check_service(name, proc.urls)
            last[name] = detail
            if ok:
                del pending[name]
                ready_seconds[name] = round(time.monotonic() - started, 3)
                if name == "aws":
                    prov_thread = threading.Thread(target=provision, daemon=True)
                    prov_thread.start()
        if not pending:
            break
        if time.monotonic() > deadline:
            details = "; ".join(
                f"{n}: {last.get(n)} (log {p.log}):\n{tail_log(p.log, 10)}"
                for n, p in pending.items()
            )
            raise SandboxError(
                f"sandbox services not healthy after {start_timeout:.0f}s: {details}"
            )
        time.sleep(0.05)
    if prov_thread is not None:
        prov_thread.join(max(1.0, deadline - time.monotonic()))
        if prov_thread.is_alive():
            raise SandboxError("provisioning S3/SQS/Secrets Manager/SSM on moto timed out")
    if prov_error:
        raise SandboxError(f"provisioning AWS stand-ins failed: {prov_error[0]!r}")
    return provisioned
