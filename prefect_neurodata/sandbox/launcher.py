"""Start, inspect, seed and stop the local sandbox (MongoDB-wire DB, moto, DocDB, CAVE).

:class:`Sandbox` runs every stand-in as its own process on a free 127.0.0.1 port:

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
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from prefect_neurodata.sandbox.cave import DEFAULT_DATASTACK

SERVICES: tuple[str, ...] = ("mongo", "aws", "docdb", "cave")
"""The services ``up`` starts by default."""
OPTIONAL_SERVICES: tuple[str, ...] = ("postgres",)
"""Services started only when named (``services=(..., "postgres")``)."""
KNOWN_SERVICES: tuple[str, ...] = SERVICES + OPTIONAL_SERVICES
STOP_SIGNALS: dict[str, int] = {"postgres": int(signal.SIGINT)}
"""Services stopped by another signal than SIGTERM (SIGINT is PostgreSQL's fast shutdown; its
SIGTERM waits for every client to disconnect)."""
FAULT_SERVICES: tuple[str, ...] = ("docdb", "cave")
HOST = "127.0.0.1"
STATE_FILE = "state.json"
ENV_FILE = "sandbox.env"
SEED_FILE = "seed.json"
CAVE_MODULE = "prefect_neurodata.sandbox.cave"
DOCDB_FACTORY = "prefect_neurodata.sandbox.docdb.app:create_app"
CAVE_DATASTACK = DEFAULT_DATASTACK
DATASTACK_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
STOP_TIMEOUT = 15.0


class SandboxError(RuntimeError):
    """A sandbox service could not be started, reached or stopped."""


@dataclass
class ServiceProcess:
    """One process the launcher started (persisted in the state file).

    Attributes:
        name: Service name (``mongo``, ``aws``, ``docdb``, ``cave``).
        pid: Process id.
        start_time: Start time of the process (psutil's ``create_time``, seconds since the
            epoch); with ``cmd`` it tells the started process apart from a later one reusing
            the pid.
        cmd: The command line.
        log: Path of its log file.
        urls: Its base URLs by role (``url``, or ``global``/``local`` for CAVE); an adopted
            process may have a ``health`` URL that answers 200 while it is healthy.
        adopted: Started by someone else and recorded with :meth:`Sandbox.adopt`.
        group: Stop the whole process group (the process leads its own session).
        stop_first: An adopted client of other processes: stopped before all of them.
    """

    name: str
    pid: int
    start_time: float | None
    cmd: list[str]
    log: str
    urls: dict[str, str] = field(default_factory=dict)
    adopted: bool = False
    group: bool = False
    stop_first: bool = False


def free_ports(n: int, host: str = HOST) -> list[int]:
    """Return ``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch), or None when it does not exist.

    With the command line it tells a started process apart from a later one reusing its pid.
    """
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_same_process(proc: ServiceProcess) -> bool:
    """True while ``proc.pid`` is alive and is still the process the launcher started."""
    try:
        found = psutil.Process(proc.pid)
        if found.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        if proc.start_time is not None and found.create_time() != proc.start_time:
            return False
        cmdline = found.cmdline()
    except psutil.AccessDenied:
        # Alive and ours by pid and start time; only its command line is not readable.
        return True
    except psutil.NoSuchProcess:
        return False
    # A script started through its shebang shows up as "<interpreter> <script> args...", so
    # compare the arguments, which must end the command line.
    args = proc.cmd[1:]
    return cmdline[-len(args) :] == args if args else bool(cmdline)


def _tail(path: str | Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` env file with python-dotenv (comments, quotes, ``export``)."""
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _postgres_bindir() -> Path | None:
    """Directory of the newest installed PostgreSQL server's binaries (Debian layout)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _make_traversable(path: Path) -> None:
    """Let the unprivileged ``postgres`` user reach ``path`` through private parents."""
    for parent in path.parents:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)


def cave_available() -> bool:
    """True when the CAVE stand-in can be run as ``python -m prefect_neurodata.sandbox.cave``."""
    try:
        return importlib.util.find_spec(f"{CAVE_MODULE}.__main__") is not None
    except ModuleNotFoundError:
        return False


def _pdeathsig_hook() -> Any:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent thread dies, or None.

    Resolved in the parent: the child runs between fork and exec, where importing modules
    could deadlock on locks held by other threads.
    """
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(1, sigterm)  # PR_SET_PDEATHSIG

    return hook


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
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def _save_state(self, procs: Mapping[str, ServiceProcess], extra: Mapping[str, Any]) -> None:
        state = {
            "workdir": str(self.workdir),
            "env_file": str(self.env_file),
            "processes": {name: asdict(p) for name, p in procs.items()},
            **extra,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def _state_extra(self) -> dict[str, Any]:
        """The state file's entries other than the workdir, env file and processes."""
        state = self._load_state() or {}
        return {k: v for k, v in state.items() if k not in ("workdir", "env_file", "processes")}

    def _processes(self) -> dict[str, ServiceProcess]:
        state = self._load_state() or {}
        known = {f.name for f in fields(ServiceProcess)}
        # A state file from an older launcher has ``start_ticks`` instead of ``start_time``:
        # unknown keys are dropped, and pid and command line still identify the process.
        return {
            n: ServiceProcess(**{"start_time": None, **{k: v for k, v in p.items() if k in known}})
            for n, p in state.get("processes", {}).items()
        }

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
                procs[name] = self._spawn(name, cmd, env_extra, urls)
                self._save_state(procs, {"status": "starting"})
            provisioned = self._wait_healthy(procs)
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
                healthy, detail = self._check_adopted(proc)
            else:
                healthy, detail = self._check(name, proc.urls, env)
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
            healthy, detail = self._check("mongo", {"url": uri}, env)
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
        import requests

        if service not in FAULT_SERVICES:
            raise ValueError(f"service must be one of {FAULT_SERVICES}, got {service!r}")
        proc = self._processes().get(service)
        if proc is None:
            raise SandboxError(f"service {service!r} is not running in {self.workdir}")
        result: dict[str, Any] = {}
        for url in dict.fromkeys(proc.urls.values()):
            resp = requests.put(f"{url}/__sandbox__/faults", json=config, timeout=10)
            if resp.status_code >= 400:
                raise SandboxError(
                    f"PUT {url}/__sandbox__/faults answered {resp.status_code}: {resp.text[:300]}"
                )
            result = resp.json()
        return result

    # ------------------------------------------------------------------ internals
    def _preflight(self) -> None:
        if "docdb" in self.services and "mongo" not in self.services and not self.mongo_uri:
            raise ValueError("services: 'docdb' needs 'mongo' or a mongo_uri")
        if "postgres" in self.services and not _postgres_bindir():
            raise SandboxError(
                "the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/initdb); "
                "run `make system-deps` (Debian package postgresql)"
            )
        if "cave" in self.services and not cave_available():
            raise SandboxError(
                f"the CAVE stand-in is not available: module {CAVE_MODULE}.__main__ not found. "
                "Start the sandbox without it, e.g. services=('mongo', 'aws', 'docdb') or "
                "`neurodata sandbox up --services mongo,aws,docdb`"
            )
        if "mongo" in self.services and not self._secantusd():
            raise SandboxError(
                "secantusd-py not found next to the Python interpreter or on PATH; "
                "install the sandbox extra (`pip install prefect-neurodata[sandbox]`) or pass "
                "a mongo_uri"
            )

    @staticmethod
    def _secantusd() -> str | None:
        local = Path(sys.executable).parent / "secantusd-py"
        return str(local) if local.exists() else shutil.which("secantusd-py")

    def _credentials(self) -> dict[str, str]:
        upper = string.ascii_uppercase + string.digits
        return {
            "access_key_id": "AKIA" + _random_key(16, upper),
            "secret_access_key": _random_key(40, string.ascii_letters + string.digits),
            "cave_admin": secrets.token_hex(16),
            "cave_user": secrets.token_hex(16),
            "cave_viewer": secrets.token_hex(16),
        }

    def _plan(self) -> dict[str, tuple[list[str], dict[str, str], dict[str, str]]]:
        """Command, extra environment and URLs of every service to start."""
        names = [s for s in KNOWN_SERVICES if s in self.services]
        n_ports = sum(2 if s == "cave" else 1 for s in names)
        ports = iter(free_ports(n_ports))
        creds = self._credentials()
        self._creds = creds
        plan: dict[str, tuple[list[str], dict[str, str], dict[str, str]]] = {}
        mongo_uri = self.mongo_uri
        aws_url = None
        if "mongo" in names:
            port = next(ports)
            cmd = [
                str(self._secantusd()),
                "--host",
                HOST,
                "--port",
                str(port),
                "--storage-path",
                str(self.workdir / "mongo"),
                "--standalone",
                "--cache-size",
                self.mongo_cache_size,
            ]
            mongo_uri = f"mongodb://{HOST}:{port}/?directConnection=true"
            plan["mongo"] = (cmd, {}, {"url": mongo_uri})
        self._mongo_uri_effective = mongo_uri
        if "aws" in names:
            from prefect_neurodata.sandbox.aws import moto_command

            port = next(ports)
            aws_url = f"http://{HOST}:{port}"
            plan["aws"] = (moto_command(HOST, port), {}, {"url": aws_url})
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
            port = next(ports)
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
            if self.page_bytes:
                env["NEURODATA_SANDBOX_PAGE_BYTES"] = str(int(self.page_bytes))
            if self.request_bytes:
                env["NEURODATA_SANDBOX_REQUEST_BYTES"] = str(int(self.request_bytes))
            if "docdb" in self.fault_config:
                env["NEURODATA_SANDBOX_FAULTS_DOCDB"] = json.dumps(self.fault_config["docdb"])
            plan["docdb"] = (cmd, env, {"url": f"http://{HOST}:{port}"})
        if "cave" in names:
            gport, lport = next(ports), next(ports)
            gurl, lurl = f"http://{HOST}:{gport}", f"http://{HOST}:{lport}"
            cmd = [
                sys.executable,
                "-m",
                CAVE_MODULE,
                "--host",
                HOST,
                "--global-port",
                str(gport),
                "--local-port",
                str(lport),
            ]
            env = {
                **common,
                "NEURODATA_SANDBOX_CAVE_WORKDIR": str(self.workdir / "cave"),
                "NEURODATA_SANDBOX_CAVE_ADMIN_TOKEN": creds["cave_admin"],
                "NEURODATA_SANDBOX_CAVE_USER_TOKEN": creds["cave_user"],
                "NEURODATA_SANDBOX_CAVE_VIEWER_TOKEN": creds["cave_viewer"],
                "NEURODATA_SANDBOX_CAVE_GLOBAL_URL": gurl,
                "NEURODATA_SANDBOX_CAVE_LOCAL_URL": lurl,
                "NEURODATA_SANDBOX_CAVE_DATASTACK": self.cave_datastack,
            }
            if self.cave_db_url:
                env["NEURODATA_SANDBOX_CAVE_DB_URL"] = self.cave_db_url
            if "cave" in self.fault_config:
                env["NEURODATA_SANDBOX_FAULTS_CAVE"] = json.dumps(self.fault_config["cave"])
            (self.workdir / "cave").mkdir(parents=True, exist_ok=True)
            plan["cave"] = (cmd, env, {"global": gurl, "local": lurl})
        if "postgres" in names:
            port = next(ports)
            plan["postgres"] = (
                self._postgres_command(port),
                {},
                {"url": f"postgresql+psycopg2://postgres@{HOST}:{port}/postgres"},
            )
        self._planned_urls = {name: urls for name, (_, _, urls) in plan.items()}
        return plan

    def _postgres_command(self, port: int) -> list[str]:
        """``initdb`` the cluster in ``<workdir>/postgres`` once; the server's command line."""
        bindir = _postgres_bindir()
        assert bindir is not None  # checked in _preflight
        root = self.workdir / "postgres"
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

    def _spawn(
        self, name: str, cmd: list[str], env_extra: Mapping[str, str], urls: Mapping[str, str]
    ) -> ServiceProcess:
        env = {
            k: v
            for k, v in os.environ.items()
            # The launcher decides the services' configuration; stale exports must not leak in.
            if not k.startswith("NEURODATA_SANDBOX_")
        }
        env.update(env_extra)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log_path = self.workdir / "logs" / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"--- {datetime.now(timezone.utc).isoformat()} {' '.join(cmd)}\n".encode())
            log.flush()
            if name == "postgres" and os.geteuid() == 0:
                os.chown(log_path, pwd.getpwnam("postgres").pw_uid, -1)
            popen = subprocess.Popen(
                cmd,
                user="postgres" if name == "postgres" and os.geteuid() == 0 else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=self.detach,
                # Non-detached children die with their parent, so a killed test run leaves no
                # servers behind. PDEATHSIG follows the parent *thread*: only use it from the
                # main thread, or a sandbox started in a worker thread would die with it.
                preexec_fn=(
                    _pdeathsig_hook()
                    if not self.detach and threading.current_thread() is threading.main_thread()
                    else None
                ),
            )
        self._popen[popen.pid] = popen
        return ServiceProcess(
            name=name,
            pid=popen.pid,
            start_time=process_start_time(popen.pid),
            cmd=list(cmd),
            log=str(log_path),
            urls=dict(urls),
        )

    def _check(
        self, name: str, urls: Mapping[str, str], env: Mapping[str, str]
    ) -> tuple[bool, str]:
        """One health probe: ``(healthy, detail)``."""
        import requests

        try:
            for url in urls.values():
                # A closed port answers at once; pymongo would wait for its selection timeout.
                hostport = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
                host, _, port = hostport.rpartition(":")
                if (
                    host in (HOST, "localhost")
                    and port.isdigit()
                    and not port_open(host, int(port))
                ):
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

    def _wait_healthy(self, procs: Mapping[str, ServiceProcess]) -> dict[str, str]:
        """Poll every service until healthy; provision AWS as soon as moto answers."""
        started = time.monotonic()
        deadline = started + self.start_timeout
        pending = dict(procs)
        provisioned: dict[str, str] = {}
        prov_error: list[BaseException] = []
        prov_thread: threading.Thread | None = None
        last: dict[str, str] = {}

        def provision() -> None:
            try:
                provisioned.update(self._provision_aws(procs["aws"].urls["url"]))
            except BaseException as exc:
                prov_error.append(exc)

        # boto3 takes a noticeable time to import: do it while the services boot.
        warm = threading.Thread(target=lambda: __import__("boto3"), daemon=True)
        warm.start()
        while True:
            for name, proc in list(pending.items()):
                popen = self._popen.get(proc.pid)
                if popen is not None and popen.poll() is not None:
                    raise SandboxError(
                        f"sandbox service {name!r} exited with code {popen.returncode} during "
                        f"start-up; last lines of {proc.log}:\n{_tail(proc.log)}"
                    )
                ok, detail = self._check(name, proc.urls, {})
                last[name] = detail
                if ok:
                    del pending[name]
                    self.ready_seconds[name] = round(time.monotonic() - started, 3)
                    if name == "aws":
                        prov_thread = threading.Thread(target=provision, daemon=True)
                        prov_thread.start()
            if not pending:
                break
            if time.monotonic() > deadline:
                details = "; ".join(
                    f"{n}: {last.get(n)} (log {p.log}):\n{_tail(p.log, 10)}"
                    for n, p in pending.items()
                )
                raise SandboxError(
                    f"sandbox services not healthy after {self.start_timeout:.0f}s: {details}"
                )
            time.sleep(0.05)
        if prov_thread is not None:
            prov_thread.join(max(1.0, deadline - time.monotonic()))
            if prov_thread.is_alive():
                raise SandboxError("provisioning S3/SQS/Secrets Manager/SSM on moto timed out")
        if prov_error:
            raise SandboxError(f"provisioning AWS stand-ins failed: {prov_error[0]!r}")
        return provisioned

    def _provision_aws(self, endpoint_url: str) -> dict[str, str]:
        from prefect_neurodata.sandbox.aws import AwsTarget, provision

        creds = self._creds
        target = AwsTarget(
            endpoint_url=endpoint_url,
            region=self.region,
            access_key_id=creds["access_key_id"],
            secret_access_key=creds["secret_access_key"],
        )
        docdb = self._planned_urls.get("docdb", {})
        docdb_host = docdb.get("url", "").split("://", 1)[-1] or None
        return provision(
            target,
            bucket=self.bucket,
            queue=self.queue,
            secret_value={"username": "sandbox", "password": _random_key(24, string.ascii_letters)},
            ssm_value={
                "s3_buckets": [self.bucket],
                "doc_db_host": docdb_host,
                "n_partitions": 20,
                "lookback_days": 14,
                "copy_original_md_subdir": "original_metadata",
                "run_docdb_sync": True,
                "run_s3_sync": True,
            },
        )

    def _build_env(
        self, procs: Mapping[str, ServiceProcess], provisioned: Mapping[str, str]
    ) -> dict[str, str]:
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
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# written by `neurodata sandbox up`; holds test credentials only"]
        lines += [f"{k}={v}" for k, v in env.items()]
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self._env = dict(env)

    def _check_adopted(self, proc: ServiceProcess) -> tuple[bool, str]:
        import requests

        health = proc.urls.get("health")
        if not health:
            return True, "running"
        try:
            resp = requests.get(health, timeout=3)
        except requests.RequestException as exc:
            return False, f"{health}: {type(exc).__name__}"
        return resp.status_code == 200, f"{health}: HTTP {resp.status_code}"

    def _stop(
        self,
        procs: Mapping[str, ServiceProcess],
        announce: Callable[[str, int], None] | None = None,
    ) -> list[str]:
        """Stop every process that is still our own, in waves: adopted processes (clients of
        the services), the HTTP services and adopted servers, then their backends.

        The HTTP services shut down cleanly only while their database is still up, so they get
        SIGTERM first; whatever does not exit within :data:`STOP_TIMEOUT` gets SIGKILL.
        """
        # Adopted clients (a deployment runner) stop while the servers they talk to still
        # answer; adopted servers (a Prefect server) stop with the HTTP services.
        clients = [n for n, p in procs.items() if p.adopted and p.stop_first]
        front = [n for n, p in procs.items() if p.adopted and not p.stop_first]
        front += [n for n in ("cave", "docdb") if n in procs]
        back = [n for n in procs if n not in front and n not in clients]
        stopped: list[str] = []
        for wave in (clients, front, back):
            live = {n: procs[n] for n in wave if is_same_process(procs[n])}
            if announce is not None:
                for name, proc in live.items():
                    announce(name, proc.pid)
            self._terminate(live)
            stopped += list(live)
        for proc in procs.values():
            self._popen.pop(proc.pid, None)
        return stopped

    def _terminate(self, live: Mapping[str, ServiceProcess]) -> None:
        """Send each process its stop signal, wait up to :data:`STOP_TIMEOUT` for all of them,
        then SIGKILL whatever still runs (psutil reaps our own children while it waits)."""
        handles: dict[psutil.Process, ServiceProcess] = {}
        for name, proc in live.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                handle = psutil.Process(proc.pid)
                handles[handle] = proc
                _send(handle, proc.group, STOP_SIGNALS.get(name, signal.SIGTERM))
        remaining = _wait_exited(list(handles), STOP_TIMEOUT)
        for handle in remaining:
            _send(handle, handles[handle].group, signal.SIGKILL)
        _wait_exited(remaining, 5.0)


def _send(handle: psutil.Process, group: bool, sig: int) -> None:
    """Signal ``handle`` (its whole process group when ``group``), unless it is gone."""
    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
        if group:
            os.killpg(handle.pid, sig)
        else:
            # psutil refuses to signal a pid that now belongs to another process.
            handle.send_signal(sig)


def _wait_exited(handles: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (or ``timeout`` passed); return those still running.

    A zombie counts as exited: its parent may be another process that reaps it later.
    """
    deadline = time.monotonic() + timeout
    alive = handles
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=0.05)
        alive = [h for h in alive if _running(h)]
    return alive


def _running(handle: psutil.Process) -> bool:
    try:
        return handle.is_running() and handle.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
