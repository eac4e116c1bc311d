"""A test-time handle on the local sandbox: lazy start, seeding, clients, blocks, faults, edits.

:class:`NeurodataSandbox` runs the sandbox in two independent parts so a test session pays only
for what it uses:

=========  =========================================================  ==========================
part       processes                                                  seeded with
=========  =========================================================  ==========================
``cave``   the CAVE stand-in (global + local services, one process)   a datastack of
                                                                      ``synapses`` synapses over
                                                                      ``neurons`` neurons, three
                                                                      materialization versions
``aind``   SecantusDB, moto (S3, SQS, Secrets Manager, SSM) and the   ``records`` DocDB records,
           DocDB REST stand-in                                        ``s3_assets`` S3 folders
=========  =========================================================  ==========================

A part starts the first time something needs it (:meth:`NeurodataSandbox.start` starts several
at once, in parallel). :meth:`NeurodataSandbox.stop` stops everything the handle started;
nothing outlives the Python process (the launcher ties its children to it).

Example:
    >>> from prefect_neurodata.testing import NeurodataSandbox, SandboxConfig
    >>> sandbox = NeurodataSandbox(SandboxConfig(synapses=500), "/tmp/nd-test")  # doctest: +SKIP
    >>> client = sandbox.cave_client()  # starts and seeds the CAVE part  # doctest: +SKIP
    >>> client.materialize.most_recent_version()  # doctest: +SKIP
    3
    >>> with sandbox.faults("cave", rate=0.2, seed=7):  # doctest: +SKIP
    ...     client.materialize.query_table("synapses")
    >>> sandbox.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import requests
from requests.adapters import HTTPAdapter

from prefect_neurodata.constants import DocDbVersion
from prefect_neurodata.sandbox.cave import SEED_WORLD_LIMITS
from prefect_neurodata.sandbox.launcher import CAVE_DATASTACK, DATASTACK_NAME, Sandbox
from prefect_neurodata.sandbox.processes import SandboxError

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials

    from prefect_neurodata.blocks import CaveCredentials, DocDbApiCredentials
    from prefect_neurodata.clients.aind.document_db import MetadataDbClient
    from prefect_neurodata.clients.cave.frameworkclient import CAVEclientFull

Part = Literal["cave", "aind"]
PARTS: tuple[Part, ...] = ("cave", "aind")
FaultService = Literal["cave", "docdb"]
CaveRole = Literal["user", "viewer", "admin"]

#: Modules of the ``sandbox`` extra each part needs, by import name.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "cave": ("uvicorn",),
    "aind": ("uvicorn", "moto", "secantus"),
}
_PART_SERVICES: dict[str, tuple[str, ...]] = {
    "cave": ("cave",),
    "aind": ("mongo", "aws", "docdb"),
}
_FAULT_PART: dict[str, Part] = {"cave": "cave", "docdb": "aind"}
_TOKEN_KEYS: dict[str, str] = {
    "user": "NEURODATA_CAVE_TOKEN",
    "viewer": "NEURODATA_CAVE_VIEWER_TOKEN",
    "admin": "NEURODATA_CAVE_ADMIN_TOKEN",
}


class SandboxExtraMissing(SandboxError):
    """The ``sandbox`` extra (``pip install 'prefect-neurodata[sandbox]'``) is not installed."""


def missing_extra_modules(part: str) -> list[str]:
    """Modules of the ``sandbox`` extra that ``part`` needs and that are not importable."""
    return [m for m in EXTRA_MODULES[part] if importlib.util.find_spec(m) is None]


@dataclass(frozen=True)
class SandboxConfig:
    """What the test sandbox holds: small, deterministic data by default.

    Args:
        seed: Seed of every random draw: the same seed gives the same records, neurons,
            synapses and root ids.
        records: DocDB records (half v1, half v2).
        s3_assets: Of those, records that also get an S3 asset folder in the bucket.
        unregistered: S3 asset folders with no DocDB record (for registration flows).
        synapses: Rows of the CAVE ``synapses`` table.
        neurons: Neurons of the chunkedgraph world (2 to 5,000).
        neuron_length: Supervoxels along each neuron (10 to 10,000).
        datastack: Name of the CAVE datastack.
        workdir: Reuse a sandbox already running in this directory (started with
            ``neurodata sandbox up --workdir DIR``): nothing is started, seeded or stopped.
        start_timeout: Seconds a part may take to become healthy.

    Raises:
        ValueError: a value is out of range (the message names the field and the value).

    Example:
        >>> SandboxConfig(synapses=500, datastack="my_stack").synapses
        500
    """

    seed: int = 20261204
    records: int = 40
    s3_assets: int = 10
    unregistered: int = 2
    synapses: int = 2_000
    neurons: int = 20
    neuron_length: int = 100
    datastack: str = CAVE_DATASTACK
    workdir: str | None = None
    start_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in ("seed", "records", "s3_assets", "unregistered", "synapses"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.s3_assets > self.records:
            raise ValueError(
                f"s3_assets must be <= records ({self.records}), got {self.s3_assets!r}"
            )
        for name, (low, high) in SEED_WORLD_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.datastack, str) or not DATASTACK_NAME.fullmatch(self.datastack):
            raise ValueError(
                "datastack must be lower-case letters, digits and '_' starting with a letter, "
                f"got {self.datastack!r}"
            )
        if not self.start_timeout > 0:
            raise ValueError(f"start_timeout must be > 0, got {self.start_timeout!r}")


@dataclass
class FaultInjection:
    """Faults switched on in one stand-in; a context manager that switches them off on exit.

    Attributes:
        service: ``"cave"`` or ``"docdb"``.
        config: The configuration the service reports (``rate``, ``statuses``, ...).
    """

    service: FaultService
    config: dict[str, Any]
    _sandbox: NeurodataSandbox = field(repr=False)

    def __enter__(self) -> FaultInjection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sandbox.reset_faults(self.service)

    def stats(self) -> dict[str, Any]:
        """The service's counters since its last fault change (requests seen, faults, drops)."""
        return self._sandbox.fault_stats(self.service)


class NeurodataSandbox:
    """The sandbox of one test session, started part by part as tests need it.

    Args:
        config: What to seed (see :class:`SandboxConfig`).
        workdir: Directory for the parts' state, logs and data (ignored when
            ``config.workdir`` reuses a running sandbox).

    Attributes:
        config: The configuration.
        start_seconds: Seconds each part took to start and seed (``{"cave": 2.1, ...}``).
    """

    def __init__(self, config: SandboxConfig, workdir: str | Path) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.start_seconds: dict[str, float] = {}
        self._parts: dict[str, Sandbox] = {}
        self._envs: dict[str, dict[str, str]] = {}
        self._faulted: set[str] = set()
        self._locks: dict[str, threading.Lock] = {part: threading.Lock() for part in PARTS}
        self._http: requests.Session | None = None

    def __repr__(self) -> str:
        return f"NeurodataSandbox(started={sorted(self._envs)}, config={self.config!r})"

    # ------------------------------------------------------------------ lifecycle
    @property
    def started(self) -> tuple[str, ...]:
        """Parts running now."""
        return tuple(p for p in PARTS if p in self._envs)

    def start(self, *parts: Part) -> NeurodataSandbox:
        """Start (and seed) the given parts now, in parallel; default both.

        Raises:
            SandboxExtraMissing: the ``sandbox`` extra is not installed.
            SandboxError: a service did not start (its log tail is in the message).
        """
        wanted = [p for p in (parts or PARTS) if p not in self._envs]
        for part in wanted:
            if part not in PARTS:
                raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        if len(wanted) > 1:
            with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
                for future in [pool.submit(self._ensure, p) for p in wanted]:
                    future.result()
        elif wanted:
            self._ensure(wanted[0])
        return self

    def stop(self) -> list[str]:
        """Stop every service this handle started; returns their names."""
        stopped: list[str] = []
        for part in list(self._parts):
            sb = self._parts.pop(part)
            if not sb.reused:
                stopped += sb.down()
        self._envs.clear()
        if self._http is not None:
            self._http.close()
            self._http = None
        return stopped

    def _ensure(self, part: str) -> dict[str, str]:
        env = self._envs.get(part)
        if env is not None:
            return env
        with self._locks[part]:
            if part in self._envs:
                return self._envs[part]
            missing = missing_extra_modules(part)
            if missing:
                raise SandboxExtraMissing(
                    f"the {part} sandbox needs the sandbox extra "
                    f"(pip install 'prefect-neurodata[sandbox]'); missing modules: {missing}"
                )
            started = time.perf_counter()
            if self.config.workdir:
                sb = self._reuse(part)
            else:
                sb = Sandbox(
                    self.workdir / part,
                    services=_PART_SERVICES[part],
                    start_timeout=self.config.start_timeout,
                    cave_datastack=self.config.datastack,
                )
                sb.up()
                self._parts[part] = sb
                try:
                    self._seed(part, sb)
                except BaseException:
                    self._parts.pop(part)
                    sb.down()
                    raise
            self._envs[part] = sb.env
            self.start_seconds[part] = round(time.perf_counter() - started, 3)
            return self._envs[part]

    def _reuse(self, part: str) -> Sandbox:
        sb = Sandbox(self.config.workdir)  # type: ignore[arg-type]
        rows = {r["service"]: r for r in sb.status()}
        needed = [s for s in _PART_SERVICES[part] if not (s == "mongo" and "docdb" in rows)]
        bad = [s for s in needed if not rows.get(s, {}).get("healthy")]
        if bad:
            raise SandboxError(
                f"workdir={self.config.workdir!r} has no healthy {bad} service(s): {list(rows)}"
            )
        sb.reused = True
        self._parts[part] = sb
        return sb

    def _seed(self, part: str, sb: Sandbox) -> None:
        cfg = self.config
        if part == "aind":
            sb.seed(
                records=cfg.records,
                synapses=0,
                seed=cfg.seed,
                s3_assets=cfg.s3_assets,
                unregistered=cfg.unregistered,
                cave=False,
            )
            return
        from prefect_neurodata.sandbox.seed import seed_cave

        env = sb.env
        seed_cave(
            env["NEURODATA_CAVE_GLOBAL_URL"],
            synapses=cfg.synapses,
            seed=cfg.seed,
            admin_token=env["NEURODATA_CAVE_ADMIN_TOKEN"],
            neurons=cfg.neurons,
            neuron_length=cfg.neuron_length,
            merges=max(1, cfg.neurons // 5),
            splits=max(1, cfg.neurons // 10),
        )

    # ------------------------------------------------------------------ environment
    @property
    def cave_env(self) -> dict[str, str]:
        """URLs, datastack and tokens of the CAVE part (starts it when needed).

        Keys: ``NEURODATA_CAVE_GLOBAL_URL``, ``NEURODATA_CAVE_LOCAL_URL``,
        ``NEURODATA_CAVE_DATASTACK``, ``NEURODATA_CAVE_TOKEN`` (view + edit),
        ``NEURODATA_CAVE_VIEWER_TOKEN`` (view only), ``NEURODATA_CAVE_ADMIN_TOKEN``.
        """
        return dict(self._ensure("cave"))

    @property
    def aind_env(self) -> dict[str, str]:
        """URLs and test credentials of the AIND part (starts it when needed).

        Keys: ``NEURODATA_DOCDB_HOST``, ``NEURODATA_MONGO_URI``, ``AWS_ENDPOINT_URL``,
        ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
        ``NEURODATA_S3_BUCKET``, ``NEURODATA_SQS_QUEUE_URL``, ``NEURODATA_AWS_SECRET_NAME``,
        ``NEURODATA_SSM_SETTINGS_PARAMETER``.
        """
        return dict(self._ensure("aind"))

    @property
    def env(self) -> dict[str, str]:
        """The environment of every part started so far (starts nothing)."""
        merged: dict[str, str] = {}
        for part in PARTS:
            merged.update(self._envs.get(part, {}))
        return merged

    @property
    def datastack(self) -> str:
        """Name of the CAVE datastack."""
        return self.cave_env["NEURODATA_CAVE_DATASTACK"]

    @property
    def bucket(self) -> str:
        """The S3 bucket holding the seeded asset folders."""
        return self.aind_env["NEURODATA_S3_BUCKET"]

    # ------------------------------------------------------------------ clients
    def cave_client(self, role: CaveRole = "user", **kwargs: Any) -> CAVEclientFull:
        """Our seed-compatible ``CAVEclient`` on the sandbox datastack.

        Args:
            role: Whose token: ``"user"`` (view + edit), ``"viewer"`` (view only), ``"admin"``.
            **kwargs: More ``CAVEclient`` arguments (``max_retries``, ``version``, ...).
        """
        from prefect_neurodata.clients.cave import CAVEclient

        env = self.cave_env
        return CAVEclient(
            env["NEURODATA_CAVE_DATASTACK"],
            server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
            auth_token=env[_TOKEN_KEYS[role]],
            write_server_cache=False,
            **kwargs,
        )

    def docdb_client(self, version: DocDbVersion = "v1", **kwargs: Any) -> MetadataDbClient:
        """Our seed-compatible ``MetadataDbClient`` on the DocDB stand-in (SigV4-signed writes).

        Args:
            version: ``"v1"`` or ``"v2"`` records.
            **kwargs: More ``MetadataDbClient`` arguments (``collection``, ``timeout``, ...).
        """
        from prefect_neurodata.clients.aind.document_db import MetadataDbClient

        env = self.aind_env
        return MetadataDbClient(
            host=env["NEURODATA_DOCDB_HOST"], version=version, boto=self.boto3_session(), **kwargs
        )

    def boto3_session(self) -> Any:
        """A ``boto3.Session`` with the sandbox's test credentials and region.

        Pass ``endpoint_url=sandbox.aind_env["AWS_ENDPOINT_URL"]`` to its ``client()`` calls
        (or use :meth:`aws_credentials`, whose clients carry it).
        """
        import boto3

        env = self.aind_env
        return boto3.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )

    # ------------------------------------------------------------------ blocks
    def aws_credentials(self) -> AwsCredentials:
        """A prefect-aws ``AwsCredentials`` block for the moto stand-in (endpoint included)."""
        from prefect_aws import AwsCredentials
        from prefect_aws.client_parameters import AwsClientParameters

        env = self.aind_env
        return AwsCredentials(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_client_parameters=AwsClientParameters(endpoint_url=env["AWS_ENDPOINT_URL"]),
        )

    def cave_block(self, role: CaveRole = "user", **fields: Any) -> CaveCredentials:
        """A ``CaveCredentials`` block for the sandbox datastack (not saved).

        Args:
            role: Whose token (see :meth:`cave_client`).
            **fields: More block fields (``max_retries``, ``timeout``, ...).
        """
        from pydantic import SecretStr

        from prefect_neurodata.blocks import CaveCredentials

        env = self.cave_env
        return CaveCredentials(
            server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
            datastack_name=env["NEURODATA_CAVE_DATASTACK"],
            token=SecretStr(env[_TOKEN_KEYS[role]]),
            **fields,
        )

    def docdb_block(self, version: DocDbVersion = "v1", **fields: Any) -> DocDbApiCredentials:
        """A ``DocDbApiCredentials`` block for the DocDB stand-in (not saved)."""
        from prefect_neurodata.blocks import DocDbApiCredentials

        env = self.aind_env
        return DocDbApiCredentials(
            host=env["NEURODATA_DOCDB_HOST"],
            version=version,
            aws_credentials=self.aws_credentials(),
            **fields,
        )

    # ------------------------------------------------------------------ official clients
    def official_cave_kwargs(self, role: CaveRole = "user") -> dict[str, Any]:
        """Arguments that point the official ``caveclient.CAVEclient`` at the sandbox.

        ``CAVEclient(**sandbox.official_cave_kwargs())``: caveclient accepts ``http://``
        server addresses; ``write_server_cache=False`` leaves ``~/.cloudvolume`` alone.
        """
        env = self.cave_env
        return {
            "datastack_name": env["NEURODATA_CAVE_DATASTACK"],
            "server_address": env["NEURODATA_CAVE_GLOBAL_URL"],
            "auth_token": env[_TOKEN_KEYS[role]],
            "write_server_cache": False,
        }

    def official_docdb_kwargs(self, version: str = "v1") -> dict[str, Any]:
        """Arguments that point the official ``aind_data_access_api`` ``MetadataDbClient`` here.

        The official client hard-codes ``https://``; the returned ``session`` sends its
        requests over plain HTTP to the loopback stand-in (only the scheme changes: the SigV4
        signature covers host, path, query and body). Export :meth:`aws_environment` so its
        boto3 signs with the sandbox credentials.
        """
        env = self.aind_env
        session = requests.Session()
        session.mount("https://", PlainHttpAdapter())
        return {
            "host": env["NEURODATA_DOCDB_HOST"].split("://", 1)[-1],
            "version": version,
            "session": session,
        }

    def aws_environment(self) -> dict[str, str]:
        """``AWS_*`` variables that point boto3 (and anything built on it) at the moto stand-in."""
        env = self.aind_env
        return {k: v for k, v in env.items() if k.startswith("AWS_")}

    # ------------------------------------------------------------------ faults
    def faults(self, service: FaultService, **config: Any) -> FaultInjection:
        """Inject faults into a stand-in until the returned handle exits or the test ends.

        Args:
            service: ``"cave"`` (every CAVE service) or ``"docdb"`` (the DocDB REST API).
            **config: ``rate`` (share of requests that fail), ``statuses`` (drawn from, default
                429/500/502/503/504), ``latency_ms``, ``drop_rate`` (connections closed without
                an answer), ``lost_rate`` (requests carried out, then answered 504: the answer
                is lost), ``seed``, ``retry_after`` (seconds, on 429/503).

        Returns:
            A :class:`FaultInjection` (a context manager).

        Example:
            >>> with sandbox.faults("cave", rate=0.2, seed=7):  # doctest: +SKIP
            ...     table = client.materialize.query_table("synapses")
        """
        part = self._fault_part(service)
        self._ensure(part)
        self._faulted.add(service)
        applied = self._parts[part].faults(service, **config)
        return FaultInjection(service=service, config=applied, _sandbox=self)

    def reset_faults(self, *services: str) -> None:
        """Switch faults off again (default: in every service that had them)."""
        for service in services or tuple(self._faulted):
            part = self._fault_part(service)
            if part in self._parts:
                self._parts[part].faults(service)
            self._faulted.discard(service)

    @property
    def faulted(self) -> tuple[str, ...]:
        """Services with faults switched on through this handle."""
        return tuple(sorted(self._faulted))

    def fault_stats(self, service: FaultService) -> dict[str, Any]:
        """Counters of a stand-in's fault middleware (requests, faults by status, drops, lost)."""
        url = self._admin_urls(service)[0]
        resp = self._session().get(f"{url}/__sandbox__/stats", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def _fault_part(self, service: str) -> Part:
        if service not in _FAULT_PART:
            raise ValueError(f"service must be one of {tuple(_FAULT_PART)}, got {service!r}")
        return _FAULT_PART[service]

    def _admin_urls(self, service: str) -> list[str]:
        env = self.cave_env if service == "cave" else self.aind_env
        if service == "cave":
            return [env["NEURODATA_CAVE_GLOBAL_URL"], env["NEURODATA_CAVE_LOCAL_URL"]]
        return [env["NEURODATA_DOCDB_HOST"]]

    # ------------------------------------------------------------------ CAVE edits
    def materialize(self, timestamp: Any = None, days_to_expire: float | None = 7) -> int:
        """Freeze a new materialization version of every annotation table now (or at
        ``timestamp``, a datetime or POSIX seconds); returns its number.

        Root ids in the new version reflect every chunkedgraph edit made before it.
        """
        body: dict[str, Any] = {"days_to_expire": days_to_expire}
        if timestamp is not None:
            body["timestamp"] = (
                timestamp.isoformat() if hasattr(timestamp, "isoformat") else timestamp
            )
        resp = self._cave_admin("POST", "/__sandbox__/materialize", json=body)
        return int(resp["version"])

    def split(
        self,
        root_id: int,
        sources: Iterable[int] | None = None,
        sinks: Iterable[int] | None = None,
    ) -> list[int]:
        """Split a neuron in the chunkedgraph (as a proofreader would); returns the new roots.

        Args:
            root_id: The root to split.
            sources: Supervoxels that stay on one side (default: the root's first supervoxel).
            sinks: Supervoxels of the other side (default: its last supervoxel).

        Raises:
            requests.HTTPError: the chunkedgraph refused the split (its message says why).
        """
        cg = self.cave_client().chunkedgraph
        if sources is None or sinks is None:
            leaves = [int(x) for x in cg.get_leaves(int(root_id))]
            if len(leaves) < 2:
                raise ValueError(f"root_id {root_id!r} has {len(leaves)} supervoxel(s): no split")
            sources = [leaves[0]] if sources is None else sources
            sinks = [leaves[-1]] if sinks is None else sinks
        src, snk = [int(s) for s in sources], [int(s) for s in sinks]
        _, new_roots = cg.execute_split(
            [[0, 0, 0]] * len(src),
            [[0, 0, 0]] * len(snk),
            int(root_id),
            source_supervoxels=src,
            sink_supervoxels=snk,
        )
        return [int(r) for r in new_roots]

    def merge(self, supervoxel_a: int, supervoxel_b: int) -> int:
        """Merge the objects of two nearby supervoxels (e.g. the pre- and post-synaptic
        supervoxels of one synapse); returns the new root id.

        Raises:
            requests.HTTPError: the chunkedgraph refused the merge (same object, too far apart).
        """
        cg = self.cave_client().chunkedgraph
        answer = cg.do_merge([int(supervoxel_a), int(supervoxel_b)], [[0, 0, 0], [0, 0, 0]])
        return int(answer["new_root_ids"][0])

    def set_query_limit(self, limit: int | None) -> int:
        """Change the materialization server's row limit (None: back to 200,000)."""
        return int(
            self._cave_admin("PUT", "/__sandbox__/query_limit", json={"limit": limit})["limit"]
        )

    @contextmanager
    def query_limit(self, limit: int) -> Iterator[int]:
        """Lower the materialization row limit inside a ``with`` block (restored after)."""
        try:
            yield self.set_query_limit(limit)
        finally:
            self.set_query_limit(None)

    def _cave_admin(self, method: str, path: str, **kwargs: Any) -> Any:
        env = self.cave_env
        resp = self._session().request(
            method,
            f"{env['NEURODATA_CAVE_LOCAL_URL']}{path}",
            headers={"Authorization": f"Bearer {env['NEURODATA_CAVE_ADMIN_TOKEN']}"},
            timeout=(5, 600),
            **kwargs,
        )
        if resp.status_code >= 400:
            raise SandboxError(f"{method} {path} answered {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def _session(self) -> requests.Session:
        if self._http is None:
            self._http = requests.Session()
        return self._http


class PlainHttpAdapter(HTTPAdapter):
    """Sends an ``https://`` request over plain ``http://``: only the URL's scheme changes.

    Headers (the SigV4 ``Authorization`` covers host, path, query and body, not the scheme),
    body and response handling stay the client's own.
    """

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        """Rewrite the scheme, then send as usual."""
        if request.url and request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, *args, **kwargs)
