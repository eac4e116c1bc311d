"""Start, inspect, seed and stop the local sandbox (MongoDB-wire DB, moto, DocDB, CAVE).

:class:`Sandbox` runs every stand-in as its own process on a free 127.0.0.1 port (the services
and their command lines are listed in :mod:`prefect_neurodata.sandbox.services`; how processes
are started, recognised and stopped is in :mod:`prefect_neurodata.sandbox.processes`). This
module keeps the orchestration: which services to start and in which order, the state and env
files, ``status``, ``seed``, ``faults`` and the order in which ``down`` stops them.

Processes that others start for the sandbox (the demo's Prefect server, deployment runner and
event relay) can be recorded with :meth:`Sandbox.adopt`: ``status`` lists them and ``down``
stops them first.

It waits until every service answers its health check, writes the env file (default
``<workdir>/sandbox.env``, ``KEY=VALUE`` lines, mode 0600, with the URLs and test credentials)
and a state file (``<workdir>/state.json``) with each process's pid and start time. ``down``
stops only those processes, and only while the pid still belongs to the process that was
started (same kernel start time and command line). Each service logs to
``<workdir>/logs/<service>.log``.

Example:
    >>> from prefect_neurodata.sandbox.launcher import Sandbox  # doctest: +SKIP
    >>> with Sandbox(".sandbox", services=("mongo", "aws", "docdb")) as sb:  # doctest: +SKIP
    ...     sb.seed(records=500, synapses=0)
    ...     print(sb.env["NEURODATA_DOCDB_HOST"])
    ...     sb.faults("docdb", rate=0.2, seed=7)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect_neurodata.sandbox.cave import DEFAULT_DATASTACK
from prefect_neurodata.sandbox.processes import (
    SandboxError,
    ServiceProcess,
    free_ports,
    is_same_process,
    process_start_time,
    processes_in_state,
    read_state,
    spawn_service,
    stop_in_waves,
    write_state,
)
from prefect_neurodata.sandbox.services import (
    ServicePlan,
    aws_plan,
    cave_plan,
    check_adopted,
    check_prerequisites,
    check_service,
    docdb_plan,
    mongo_plan,
    postgres_plan,
    provision_aws_standins,
    put_fault_config,
    sandbox_credentials,
    wait_until_healthy,
)

SERVICES: tuple[str, ...] = ("mongo", "aws", "docdb", "cave")
"""The services ``up`` starts by default."""
OPTIONAL_SERVICES: tuple[str, ...] = ("postgres",)
"""Services started only when named (``services=(..., "postgres")``)."""
KNOWN_SERVICES: tuple[str, ...] = SERVICES + OPTIONAL_SERVICES
FAULT_SERVICES: tuple[str, ...] = ("docdb", "cave")
STATE_FILE = "state.json"
ENV_FILE = "sandbox.env"
SEED_FILE = "seed.json"
CAVE_DATASTACK = DEFAULT_DATASTACK
DATASTACK_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` env file with python-dotenv (comments, quotes, ``export``)."""
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


class Sandbox:
    """The local sandbox: every stand-in service as a process on a free loopback port.

    Args:
        workdir: Directory for state, env file, logs and data (created if missing).
        services: Services to start, a subset of ``("mongo", "aws", "docdb", "cave",
            "postgres")``; ``postgres`` is not started unless named.
            ``docdb`` needs a database: ``mongo`` or ``mongo_uri``.
        mongo_uri: Use this MongoDB instead of starting SecantusDB (then ``mongo`` is not
            started even if listed).
        faults: Fault config per service, e.g. ``{"docdb": {"rate": 0.2, "seed": 7}}``, passed
            as ``NEURODATA_SANDBOX_FAULTS_<SERVICE>``.
        latency_ms: Added latency (ms) for every HTTP stand-in (merged into ``faults``).
        page_bytes: DocDB ``find`` page cap (``NEURODATA_SANDBOX_PAGE_BYTES``).
        request_bytes: DocDB request cap (``NEURODATA_SANDBOX_REQUEST_BYTES``).
        env_file: Where to write the env file (default ``<workdir>/sandbox.env``).
        bucket: S3 bucket of the assets.
        queue: SQS queue receiving the bucket's ObjectCreated notifications.
        region: AWS region.
        cave_db_url: SQLAlchemy URL of the CAVE database (default: SQLite in the workdir).
        mongo_cache_size: SecantusDB WiredTiger cache size.
        cave_datastack: Name of the CAVE datastack (lower-case letters, digits and ``_``); its
            aligned volume and PCG table are named after it.
        start_timeout: Seconds to wait for every service to become healthy.
        detach: Start services in their own session so they outlive this Python process
            (the CLI does this); otherwise they are stopped if this process dies.

    Example:
        >>> sb = Sandbox("/tmp/nd-sandbox", services=("mongo", "aws", "docdb"))  # doctest: +SKIP
        >>> sb.up(); sb.seed(records=200, synapses=0); sb.down()  # doctest: +SKIP
    """

    def __init__(
        self,
        workdir: str | Path = ".sandbox",
        *,
        services: Iterable[str] = SERVICES,
        mongo_uri: str | None = None,
        faults: Mapping[str, Mapping[str, Any]] | None = None,
        latency_ms: float | None = None,
        page_bytes: int | None = None,
        request_bytes: int | None = None,
        env_file: str | Path | None = None,
        bucket: str = "aind-open-data",
        queue: str = "neurodata-asset-events",
        region: str = "us-west-2",
        cave_db_url: str | None = None,
        mongo_cache_size: str = "256M",
        start_timeout: float = 90.0,
        detach: bool = False,
        cave_datastack: str = CAVE_DATASTACK,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        services = tuple(dict.fromkeys(services))
        unknown = [s for s in services if s not in KNOWN_SERVICES]
        if unknown:
            raise ValueError(
                f"services: unknown service(s) {unknown}; choose from {KNOWN_SERVICES}"
            )
        if not isinstance(cave_datastack, str) or not DATASTACK_NAME.fullmatch(cave_datastack):
            raise ValueError(
                f"cave_datastack must be lower-case letters, digits and '_' starting with a "
                f"letter, got {cave_datastack!r}"
            )
        self.cave_datastack = cave_datastack
        self.mongo_uri = mongo_uri
        if mongo_uri is not None:
            services = tuple(s for s in services if s != "mongo")
        self.services = services
        faults = dict(faults or {})
        for name, cfg in faults.items():
            if name not in FAULT_SERVICES:
                raise ValueError(f"faults: unknown service {name!r}; choose from {FAULT_SERVICES}")
            if not isinstance(cfg, Mapping):
                raise ValueError(f"faults[{name!r}] must be a mapping, got {cfg!r}")
        if latency_ms is not None:
            if latency_ms < 0:
                raise ValueError(f"latency_ms must be >= 0, got {latency_ms!r}")
            for name in FAULT_SERVICES:
                faults[name] = {"latency_ms": latency_ms, **faults.get(name, {})}
        self.fault_config = {k: dict(v) for k, v in faults.items()}
        for name, value in (("page_bytes", page_bytes), ("request_bytes", request_bytes)):
            if value is not None and int(value) <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.page_bytes = page_bytes
        self.request_bytes = request_bytes
        self.env_file = Path(env_file).absolute() if env_file else self.workdir / ENV_FILE
        self.bucket = bucket
        self.queue = queue
        self.region = region
        self.cave_db_url = cave_db_url
        self.mongo_cache_size = mongo_cache_size
        self.start_timeout = float(start_timeout)
        self.detach = detach
        self.start_seconds: float | None = None
        self.ready_seconds: dict[str, float] = {}
        self.reused = False
        self._env: dict[str, str] | None = None
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def __repr__(self) -> str:
        return f"Sandbox(workdir={str(self.workdir)!r}, services={self.services!r})"

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        """Path of the state file."""
        return self.workdir / STATE_FILE

    def _load_state(self) -> dict[str, Any] | None:
        """The state file's contents, or None when no sandbox runs here."""
        return read_state(self.state_path)

    def _save_state(self, procs: Mapping[str, ServiceProcess], extra: Mapping[str, Any]) -> None:
        """Record ``procs`` and the ``extra`` entries in the state file."""
        state = {
            "workdir": str(self.workdir),
            "env_file": str(self.env_file),
            "processes": {name: asdict(p) for name, p in procs.items()},
            **extra,
        }
        write_state(self.state_path, state)

    def _state_extra(self) -> dict[str, Any]:
        """The state file's entries other than the workdir, env file and processes."""
        state = self._load_state() or {}
        return {k: v for k, v in state.items() if k not in ("workdir", "env_file", "processes")}

    def _processes(self) -> dict[str, ServiceProcess]:
        """The processes the state file records (started or adopted), by name."""
        return processes_in_state(self._load_state())

    @property
    def env(self) -> dict[str, str]:
        """Environment of the running sandbox (the env file's contents)."""
        if self._env is None:
            state = self._load_state()
            path = Path(state["env_file"]) if state else self.env_file
            if not path.exists():
                raise SandboxError(f"no sandbox env file at {path}; run `neurodata sandbox up`")
            self._env = read_env_file(path)
        return dict(self._env)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Sandbox:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Sandbox:
        """Start the services, wait until healthy, write env and state files.

        Returns:
            ``self``.

        Raises:
            SandboxError: a service failed to start or become healthy (its log tail is in
                the message); whatever was started is stopped again. Also raised when this
                workdir already has live processes that are not all healthy.
        """
        t0 = time.perf_counter()
        self._preflight()
        self.workdir.mkdir(parents=True, exist_ok=True)
        existing = {n: p for n, p in self._processes().items() if is_same_process(p)}
        if existing:
            report = self.status()
            if all(s["healthy"] for s in report):
                self._env = None
                self.start_seconds = 0.0
                self.reused = True
                return self
            raise SandboxError(
                f"sandbox in {self.workdir} is partly running ({sorted(existing)}); "
                "run `neurodata sandbox down` first"
            )
        (self.workdir / "logs").mkdir(exist_ok=True)
        procs: dict[str, ServiceProcess] = {}
        try:
            plan = self._plan()
            for name, (cmd, env_extra, urls) in plan.items():
                procs[name], popen = spawn_service(
                    name, cmd, env_extra, urls, workdir=self.workdir, detach=self.detach
                )
                self._popen[popen.pid] = popen
                self._save_state(procs, {"status": "starting"})
            provisioned = wait_until_healthy(
                procs, self._popen, self.start_timeout, self.ready_seconds, self._provision_aws
            )
            env = self._build_env(procs, provisioned)
            self._write_env(env)
            self.start_seconds = time.perf_counter() - t0
            self._save_state(
                procs,
                {
                    "status": "up",
                    "started_at": datetime.now(timezone.utc).isoformat(),
                    "start_seconds": round(self.start_seconds, 3),
                    "ready_seconds": self.ready_seconds,
                },
            )
        except BaseException:
            self._stop(procs)
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            raise
        return self

    def down(
        self,
        only: Iterable[str] | None = None,
        announce: Callable[[str, int], None] | None = None,
    ) -> list[str]:
        """Stop the processes this sandbox started or adopted (and only those).

        Adopted processes stop first, then the HTTP services, then their backends.

        Args:
            only: Stop just these (by name) and keep the rest running and recorded.
            announce: Called with ``(name, pid)`` before each process is signalled.

        Returns:
            Names of the processes that were stopped.
        """
        procs = self._processes()
        chosen = procs if only is None else {n: p for n, p in procs.items() if n in set(only)}
        stopped = self._stop(chosen, announce)
        rest = {n: p for n, p in procs.items() if n not in chosen}
        if rest:
            self._save_state(rest, self._state_extra())
        else:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self._env = None
        return stopped

    def adopt(
        self,
        name: str,
        pid: int,
        cmd: Sequence[str],
        log: str | Path,
        urls: Mapping[str, str] | None = None,
        group: bool = False,
        stop_first: bool = False,
    ) -> None:
        """Record a process someone else started so ``status`` lists it and ``down`` stops it.

        Args:
            name: Its name in ``status`` (must not be a service name).
            pid: Its process id.
            cmd: Its command line (with the kernel start time, it identifies the process).
            log: Where it logs.
            urls: Its URLs; ``health``, if given, must answer 200 while it is healthy.
            group: Stop its whole process group (it leads its own session).
            stop_first: It is a client of the other processes (a deployment runner, an event
                relay): ``down`` stops it before them, so it can shut down cleanly.
        """
        if name in KNOWN_SERVICES:
            raise ValueError(f"name: {name!r} is a sandbox service; adopt other processes")
        state = self._load_state()
        if state is None:
            raise SandboxError(f"no sandbox running in {self.workdir}; run `neurodata sandbox up`")
        procs = self._processes()
        procs[name] = ServiceProcess(
            name=name,
            pid=pid,
            start_time=process_start_time(pid),
            cmd=list(cmd),
            log=str(log),
            urls=dict(urls or {}),
            adopted=True,
            group=group,
            stop_first=stop_first,
        )
        self._save_state(procs, self._state_extra())

    def status(self) -> list[dict[str, Any]]:
        """Each service with its URL, pid, whether its process runs and whether it is healthy."""
        state = self._load_state()
        if not state:
            return []
        env = {}
        with contextlib.suppress(SandboxError, FileNotFoundError):
            env = self.env
        out = []
        for name, proc in self._processes().items():
            running = is_same_process(proc)
            if not running:
                healthy, detail = False, "stopped"
            elif proc.adopted:
                healthy, detail = check_adopted(proc)
            else:
                healthy, detail = check_service(name, proc.urls)
            out.append(
                {
                    "service": name,
                    "url": " ".join(proc.urls.values()),
                    "pid": proc.pid,
                    "running": running,
                    "healthy": healthy,
                    "detail": detail,
                    "log": proc.log,
                }
            )
        if self.mongo_uri or (env.get("NEURODATA_MONGO_URI") and "mongo" not in state["processes"]):
            uri = self.mongo_uri or env["NEURODATA_MONGO_URI"]
            healthy, detail = check_service("mongo", {"url": uri})
            out.append(
                {
                    "service": "mongo (external)",
                    "url": uri,
                    "pid": None,
                    "running": healthy,
                    "healthy": healthy,
                    "detail": detail,
                    "log": None,
                }
            )
        return out

    def seed(
        self,
        records: int = 15_000,
        synapses: int = 1_000_000,
        seed: int = 0,
        **kwargs: Any,
    ) -> Any:
        """Fill the running sandbox with realistic data (see :mod:`prefect_neurodata.sandbox.seed`).

        Args:
            records: DocDB records (v1 + v2).
            synapses: Rows of the CAVE synapse table (ignored when CAVE is not running).
            seed: Seed of every random draw.
            **kwargs: Passed to :func:`prefect_neurodata.sandbox.seed.seed_sandbox`
                (``v2_fraction``, ``s3_assets``, ``unregistered``, ``reset``, ``workers``).

        Returns:
            The :class:`~prefect_neurodata.sandbox.seed.SeedReport`.
        """
        from prefect_neurodata.sandbox.seed import seed_sandbox

        if self._load_state() is None:
            raise SandboxError(f"no sandbox running in {self.workdir}; run `neurodata sandbox up`")
        report = seed_sandbox(self.env, records=records, synapses=synapses, seed=seed, **kwargs)
        (self.workdir / SEED_FILE).write_text(json.dumps(report.as_dict(), indent=2, default=str))
        return report

    @property
    def last_seed(self) -> dict[str, Any] | None:
        """The report of the last :meth:`seed` in this workdir (``seed.json``), if any."""
        try:
            return json.loads((self.workdir / SEED_FILE).read_text())
        except FileNotFoundError:
            return None

    def faults(self, service: str, **config: Any) -> dict[str, Any]:
        """Replace the fault configuration of a running service (``PUT /__sandbox__/faults``).

        Args:
            service: ``"docdb"`` or ``"cave"``.
            **config: The fault config (``rate``, ``statuses``, ``latency_ms``, ``drop_rate``,
                ``lost_rate``, ``seed``, ``retry_after``); none turns faults off.

        Returns:
            The configuration the service now reports.
        """
        if service not in FAULT_SERVICES:
            raise ValueError(f"service must be one of {FAULT_SERVICES}, got {service!r}")
        proc = self._processes().get(service)
        if proc is None:
            raise SandboxError(f"service {service!r} is not running in {self.workdir}")
        return put_fault_config(proc.urls, config)

    # ------------------------------------------------------------------ internals
    def _preflight(self) -> None:
        """Fail before anything starts when a chosen service cannot run here."""
        check_prerequisites(self.services, self.mongo_uri)

    def _plan(self) -> dict[str, ServicePlan]:
        """Command, extra environment and URLs of every service to start."""
        names = [s for s in KNOWN_SERVICES if s in self.services]
        n_ports = sum(2 if s == "cave" else 1 for s in names)
        ports = iter(free_ports(n_ports))
        creds = sandbox_credentials()
        self._creds = creds
        plan: dict[str, ServicePlan] = {}
        mongo_uri = self.mongo_uri
        aws_url = None
        if "mongo" in names:
            plan["mongo"] = mongo_plan(next(ports), self.workdir, self.mongo_cache_size)
            mongo_uri = plan["mongo"][2]["url"]
        self._mongo_uri_effective = mongo_uri
        if "aws" in names:
            plan["aws"] = aws_plan(next(ports))
            aws_url = plan["aws"][2]["url"]
        common = {
            "NEURODATA_SANDBOX_AWS_REGION": self.region,
            "NEURODATA_SANDBOX_ACCESS_KEY_ID": creds["access_key_id"],
            "NEURODATA_SANDBOX_SECRET_ACCESS_KEY": creds["secret_access_key"],
            "AWS_ACCESS_KEY_ID": creds["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
            "AWS_DEFAULT_REGION": self.region,
        }
        if aws_url:
            common["NEURODATA_SANDBOX_AWS_ENDPOINT_URL"] = aws_url
            common["AWS_ENDPOINT_URL"] = aws_url
        if "docdb" in names:
            plan["docdb"] = docdb_plan(
                next(ports),
                common,
                mongo_uri,
                self.page_bytes,
                self.request_bytes,
                self.fault_config.get("docdb"),
            )
        if "cave" in names:
            plan["cave"] = cave_plan(
                (next(ports), next(ports)),
                common,
                self.workdir,
                creds,
                self.cave_datastack,
                self.cave_db_url,
                self.fault_config.get("cave"),
            )
        if "postgres" in names:
            plan["postgres"] = postgres_plan(next(ports), self.workdir)
        self._planned_urls = {name: urls for name, (_, _, urls) in plan.items()}
        return plan

    def _provision_aws(self, endpoint_url: str) -> dict[str, str]:
        """Provision moto at ``endpoint_url`` with this sandbox's credentials and names."""
        docdb = self._planned_urls.get("docdb", {})
        docdb_host = docdb.get("url", "").split("://", 1)[-1] or None
        return provision_aws_standins(
            endpoint_url, self._creds, self.region, self.bucket, self.queue, docdb_host
        )

    def _build_env(
        self, procs: Mapping[str, ServiceProcess], provisioned: Mapping[str, str]
    ) -> dict[str, str]:
        """The env file's entries for the started ``procs``."""
        creds = self._creds
        env: dict[str, str] = {"NEURODATA_SANDBOX_WORKDIR": str(self.workdir)}
        if self._mongo_uri_effective:
            env["NEURODATA_MONGO_URI"] = self._mongo_uri_effective
        if "docdb" in procs:
            from prefect_neurodata.sandbox.docdb.config import DEFAULT_PAGE_BYTES

            env["NEURODATA_DOCDB_HOST"] = procs["docdb"].urls["url"]
            env["NEURODATA_DOCDB_PAGE_BYTES"] = str(int(self.page_bytes or DEFAULT_PAGE_BYTES))
        env.update(
            {
                "AWS_ACCESS_KEY_ID": creds["access_key_id"],
                "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
            }
        )
        if "aws" in procs:
            env["AWS_ENDPOINT_URL"] = procs["aws"].urls["url"]
            env["NEURODATA_S3_BUCKET"] = provisioned["bucket"]
            env["NEURODATA_SQS_QUEUE_URL"] = provisioned["queue_url"]
            env["NEURODATA_AWS_SECRET_NAME"] = provisioned["secret_name"]
            env["NEURODATA_SSM_SETTINGS_PARAMETER"] = provisioned["ssm_parameter"]
        if "postgres" in procs:
            env["NEURODATA_POSTGRES_URL"] = procs["postgres"].urls["url"]
        if "cave" in procs:
            env.update(
                {
                    "NEURODATA_CAVE_GLOBAL_URL": procs["cave"].urls["global"],
                    "NEURODATA_CAVE_LOCAL_URL": procs["cave"].urls["local"],
                    "NEURODATA_CAVE_DATASTACK": self.cave_datastack,
                    "NEURODATA_CAVE_TOKEN": creds["cave_user"],
                    "NEURODATA_CAVE_VIEWER_TOKEN": creds["cave_viewer"],
                    "NEURODATA_CAVE_ADMIN_TOKEN": creds["cave_admin"],
                }
            )
        return env

    def _write_env(self, env: Mapping[str, str]) -> None:
        """Write ``env`` to the env file, readable by its owner only (test credentials)."""
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# written by `neurodata sandbox up`; holds test credentials only"]
        lines += [f"{k}={v}" for k, v in env.items()]
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self._env = dict(env)

    def _stop(
        self,
        procs: Mapping[str, ServiceProcess],
        announce: Callable[[str, int], None] | None = None,
    ) -> list[str]:
        """Stop every process in ``procs`` that is still our own (see :func:`stop_in_waves`)."""
        stopped = stop_in_waves(procs, announce)
        for proc in procs.values():
            self._popen.pop(proc.pid, None)
        return stopped
