"""The shared runtime object of the CAVE stand-in (``app.state.world``).

Every CAVE route reaches the data through one :class:`CaveWorld`:

* ``world.config`` (:class:`CaveConfig`): names (datastack ``minnie_sandbox``, aligned volume
  ``minnie_sandbox_av``, PCG table ``minnie_sandbox_pcg``), voxel resolution ``(4, 4, 40)``,
  tokens, DB URL, the public global/local base URLs.
* ``world.engine``: the SQLAlchemy engine (SQLite file by default, Postgres by URL). Part B keeps
  its own tables there; this module owns the ``cave_sandbox_meta`` and ``cave_cg_operations``
  tables (``world.metadata``).
* ``world.chunkedgraph``: the in-memory :class:`~.chunkedgraph.ChunkedGraph` (``None`` until the
  world is seeded; use :meth:`CaveWorld.require_chunkedgraph`). Main entry points for part B:
  ``get_roots(svids, timestamp, stop_layer=None)``, ``lookup_supervoxels(points_voxel)``,
  ``sample_points(n, rng)``, ``sample_contacts(n, rng)``, ``somas()``, ``is_latest_roots``,
  ``get_root_timestamps``, ``past_id_mapping``, ``lineage_graph``.
* ``world.auth`` (:class:`~.auth.AuthRegistry`), ``world.schemas``
  (:class:`~.schemas.SchemaRegistry`, ``world.schemas.validate(schema, annotation) -> list[str]``),
  ``world.states`` (:class:`~.state.StateStore`).
* ``world.lock``: a re-entrant lock; hold it around multi-step mutations.

Example:
    >>> cfg = CaveConfig(db_url="sqlite://")
    >>> world = CaveWorld(cfg)
    >>> world.config.datastack
    'minnie_sandbox'
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from . import DEFAULT_DATASTACK, DEFAULT_PCG_TABLE, VOXEL_RESOLUTION
from .chunkedgraph import ChunkedGraph
from .chunkedgraph_types import OperationRecord, WorldParams

ENV_PREFIX = "NEURODATA_SANDBOX_"


def _default_token(role: str) -> str:
    """Deterministic 32-hex default token for a role (used when the env does not set one)."""
    return hashlib.sha256(f"neurodata-sandbox-cave-{role}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CaveConfig:
    """Configuration of the CAVE stand-in.

    Args:
        db_url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg2://...``). The
            default ``sqlite://`` is a throwaway database in a private temporary file, removed
            with the world's engine.
        workdir: Directory for the default SQLite file and other state.
        admin_token: Token of the superadmin user (id 1).
        user_token: Token of an ordinary user with view+edit on the dataset (id 2).
        viewer_token: Token of a user with view only (id 3).
        noperm_token: Token of a user without any permission on the dataset (id 4).
        tos_token: Token of a user who has not accepted the dataset's terms of service (id 5).
        global_url: Public base URL of the global services (info, auth, schema, state), e.g.
            ``http://127.0.0.1:9001``. ``None``: derived from each request's base URL.
        local_url: Public base URL of the local services (chunkedgraph, materialize, annotation,
            l2cache). ``None``: derived from each request's base URL.
        faults: JSON text of the fault-injection config (``NEURODATA_SANDBOX_FAULTS_CAVE``).
        auth_disabled: Every request runs as user 0 ``AUTH_DISABLED`` (superadmin), like the
            real services' AUTH_DISABLED mode (``NEURODATA_SANDBOX_CAVE_AUTH_DISABLED=1``).
    """

    db_url: str = "sqlite://"
    workdir: Path = field(default_factory=lambda: Path(".sandbox/cave"))
    admin_token: str = field(default_factory=lambda: _default_token("admin"))
    user_token: str = field(default_factory=lambda: _default_token("user"))
    viewer_token: str = field(default_factory=lambda: _default_token("viewer"))
    noperm_token: str = field(default_factory=lambda: _default_token("noperm"))
    tos_token: str = field(default_factory=lambda: _default_token("tos"))
    global_url: str | None = None
    local_url: str | None = None
    faults: str | None = None
    auth_disabled: bool = False
    datastack: str = DEFAULT_DATASTACK
    aligned_volume: str = f"{DEFAULT_DATASTACK}_av"
    aligned_volume_id: int = 1
    pcg_table: str = DEFAULT_PCG_TABLE
    auth_dataset: str = DEFAULT_DATASTACK
    voxel_resolution: tuple[float, float, float] = VOXEL_RESOLUTION

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> CaveConfig:
        """Build the config from ``NEURODATA_SANDBOX_*`` environment variables.

        Reads ``CAVE_DB_URL``, ``CAVE_WORKDIR``, ``CAVE_ADMIN_TOKEN``, ``CAVE_USER_TOKEN``,
        ``CAVE_VIEWER_TOKEN``, ``CAVE_NOPERM_TOKEN``, ``CAVE_TOS_TOKEN``, ``CAVE_GLOBAL_URL``,
        ``CAVE_LOCAL_URL``, ``CAVE_AUTH_DISABLED``, ``CAVE_DATASTACK``, ``FAULTS_CAVE``. Without
        ``CAVE_DB_URL`` the DB is the SQLite file ``<workdir>/cave.sqlite``. ``CAVE_DATASTACK``
        names the datastack; its aligned volume, PCG table and auth dataset are named after it
        (``<name>_av``, ``<name>_pcg``, ``<name>``).

        Args:
            env: Mapping to read (default ``os.environ``).
            **overrides: Field values that win over the environment.
        """
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value else None

        workdir = Path(overrides.pop("workdir", None) or get("CAVE_WORKDIR") or ".sandbox/cave")
        db_url = overrides.pop("db_url", None) or get("CAVE_DB_URL")
        if db_url is None:
            db_url = f"sqlite:///{(workdir / 'cave.sqlite').resolve()}"
        values: dict[str, Any] = {"workdir": workdir, "db_url": db_url}
        for role in ("admin", "user", "viewer", "noperm", "tos"):
            token = get(f"CAVE_{role.upper()}_TOKEN")
            if token:
                values[f"{role}_token"] = token
        for key, name in (("global_url", "CAVE_GLOBAL_URL"), ("local_url", "CAVE_LOCAL_URL")):
            if get(name):
                values[key] = get(name).rstrip("/")  # type: ignore[union-attr]
        if get("FAULTS_CAVE"):
            values["faults"] = get("FAULTS_CAVE")
        if (get("CAVE_AUTH_DISABLED") or "").lower() in ("1", "true", "yes"):
            values["auth_disabled"] = True
        datastack = get("CAVE_DATASTACK")
        if datastack:
            values.update(
                datastack=datastack,
                aligned_volume=f"{datastack}_av",
                pcg_table=f"{datastack}_pcg",
                auth_dataset=datastack,
            )
        values.update(overrides)
        return cls(**values)


class CaveWorld:
    """Runtime state shared by every CAVE route (``request.app.state.world``).

    Args:
        config: The configuration.

    Attributes:
        config: The :class:`CaveConfig`.
        engine: SQLAlchemy engine over ``config.db_url``.
        metadata: SQLAlchemy metadata of this module's tables.
        chunkedgraph: The chunkedgraph model, or ``None`` before seeding.
        auth: Users, tokens, groups and permissions.
        schemas: The annotation schema registry.
        states: The JSON state store.
        lock: Re-entrant lock for multi-step mutations.
        seed_params: The seed parameters of the current world (``None`` before seeding).
    """

    def __init__(self, config: CaveConfig) -> None:
        from .auth import AuthRegistry
        from .schemas import SchemaRegistry
        from .state import StateStore

        self.config = config
        self.lock = threading.RLock()
        self.started_at = time.time()
        if config.db_url.startswith("sqlite:///"):
            Path(config.db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = _make_engine(config.db_url)
        self.metadata = sa.MetaData()
        self.meta_table = sa.Table(
            "cave_sandbox_meta",
            self.metadata,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        self.ops_table = sa.Table(
            "cave_cg_operations",
            self.metadata,
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("record", sa.Text, nullable=False),
        )
        self.auth = AuthRegistry(config)
        self.schemas = SchemaRegistry()
        self.states = StateStore(self.engine, self.metadata)
        self.metadata.create_all(self.engine)
        self.chunkedgraph: ChunkedGraph | None = None
        self.seed_params: dict[str, Any] | None = None
        self._load_persisted()

    # ------------------------------------------------------------------ urls
    def global_url(self, request: Any = None) -> str:
        """Public base URL of the global services (no trailing slash)."""
        if self.config.global_url:
            return self.config.global_url
        return _base_of(request)

    def local_url(self, request: Any = None) -> str:
        """Public base URL of the local services (no trailing slash)."""
        if self.config.local_url:
            return self.config.local_url
        return _base_of(request)

    # ------------------------------------------------------------- chunkedgraph
    def require_chunkedgraph(self) -> ChunkedGraph:
        """Return the chunkedgraph, raising a 503-style error when the world is not seeded."""
        from .errors import CaveHTTPError

        if self.chunkedgraph is None:
            raise CaveHTTPError(503, "The sandbox has not been seeded yet (POST /__sandbox__/seed)")
        return self.chunkedgraph

    def build_chunkedgraph(self, params: WorldParams) -> ChunkedGraph:
        """Build (or rebuild) the chunkedgraph world from ``params`` and persist the parameters.

        Replaces any existing chunkedgraph and forgets operations done through the API.

        Args:
            params: The world parameters (seed, size, base timestamp ...).
        """
        with self.lock:
            cg = ChunkedGraph.build(
                params, table_id=self.config.pcg_table, resolution=self.config.voxel_resolution
            )
            with self.engine.begin() as conn:
                conn.execute(self.ops_table.delete())
                conn.execute(self.meta_table.delete().where(self.meta_table.c.key == "cg_params"))
                conn.execute(
                    self.meta_table.insert().values(
                        key="cg_params", value=orjson.dumps(params.to_dict()).decode()
                    )
                )
            cg.on_operation = self._persist_operation
            self.chunkedgraph = cg
            return cg

    def set_meta(self, key: str, value: Any) -> None:
        """Persist a JSON-serialisable value under ``key`` (e.g. the last seed request)."""
        with self.engine.begin() as conn:
            conn.execute(self.meta_table.delete().where(self.meta_table.c.key == key))
            conn.execute(
                self.meta_table.insert().values(key=key, value=orjson.dumps(value).decode())
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        """Read a value stored with :meth:`set_meta`."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(self.meta_table.c.value).where(self.meta_table.c.key == key)
            ).first()
        return default if row is None else orjson.loads(row[0])

    def _persist_operation(self, record: OperationRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.ops_table.insert().values(
                    seq=record.seq, record=orjson.dumps(record.to_dict()).decode()
                )
            )

    def _load_persisted(self) -> None:
        params = self.get_meta("cg_params")
        if params is None:
            return
        cg = ChunkedGraph.build(
            WorldParams.from_dict(params),
            table_id=self.config.pcg_table,
            resolution=self.config.voxel_resolution,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(self.ops_table.c.record).order_by(self.ops_table.c.seq)
            ).all()
        for (text,) in rows:
            cg.replay(OperationRecord.from_dict(orjson.loads(text)))
        cg.on_operation = self._persist_operation
        self.chunkedgraph = cg
        self.seed_params = self.get_meta("seed_request")


def _make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        scratch = None
        if url in ("sqlite://", "sqlite:///:memory:"):
            # An in-memory SQLite database lives in one connection, which every thread would
            # then share: one request's rollback would undo another's writes. A private file
            # that goes with the engine gives each thread its own connection, as on disk.
            scratch = tempfile.TemporaryDirectory(prefix="cave-sandbox-")
            url = f"sqlite:///{scratch.name}/cave.sqlite"
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        if scratch is not None:
            weakref.finalize(engine, scratch.cleanup)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _base_of(request: Any) -> str:
    if request is None:
        return "http://127.0.0.1"
    return str(request.base_url).rstrip("/")
