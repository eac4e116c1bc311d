"""Materialization engine client (seed: ``caveclient.materializationengine``).

Queries frozen materialization versions of annotation tables, joins and views, and runs live
queries at arbitrary timestamps. The wire protocol follows the reference (section 1.5): every
filter is nested under its table, results come back as Arrow IPC streams (``data.arrow``) with
ZSTD-compressed buffers, and the server reports what it did in ``Warning``,
``dataframe_resolution`` and ``column_names`` headers.

What is better than the seed:

* **No silent truncation.** The server caps every answer (200,000 rows by default) and says so
  only in a ``Warning`` header. Here a query that reaches the cap is, by default
  (``on_limit="partition"``), split into disjoint ``id`` ranges fetched concurrently, each checked
  to be complete, and concatenated; with ``on_limit="raise"`` a `QueryLimitError` is raised.
* **A streaming form** for big exports: `MaterializationClientV2.iter_query_table_partitions`
  yields one Arrow table per partition, so a flow can write Parquet part by part with bounded
  memory.
* **Speed.** Arrow bodies are decoded without copying, partitions are concatenated as Arrow and
  converted to pandas once, and position columns are stitched from Arrow buffers.

Example:
    ```python
    from prefect_neurodata.clients.cave import CAVEclient

    client = CAVEclient("my_datastack")
    df = client.materialize.query_table(
        "synapses", filter_in_dict={"post_pt_root_id": [864691135000000001]},
        desired_resolution=[4, 4, 40],
    )
    for part in client.materialize.iter_query_table_partitions("synapses"):
        ...  # a pyarrow.Table per partition, e.g. pyarrow.parquet.write_table(part, path)
    ```
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import requests
from packaging.version import Version

from prefect_neurodata.clients.concurrency import TTLMemo
from prefect_neurodata.clients.http import HttpClient, TransportConfig, decode_json, dumps, loads

from . import endpoints as _endpoints
from ._arrow import (
    FrameAssembler,
    content_type,
    is_arrow,
    limit_from_warnings,
    parse_resolution,
    read_ipc,
    scale_factors,
    scale_table_positions,
    split_warning_header,
    table_to_frame,
)
from ._arrow import (
    concatenate_position_columns as concatenate_position_columns,
)
from ._arrow import (
    convert_position_columns as convert_position_columns,
)
from ._partition import (
    Chunk,
    IdRange,
    OnLimit,
    Partitioner,
    QueryLimitError,
    check_on_limit,
)
from ._tables import TableManager, ViewManager, fetch_both
from .base import (
    ApiVersion,
    ClientBase,
    ServerIncompatibilityError,
    Service,
    asked_meanwhile,
    check_version_compatibility,
    document_shared_args,
    fetch_server_version,
    resolve_transport,
    send_checked,
)
from .node_ids import valid_node_ids

__all__ = [
    "MaterializationClient",
    "MaterializationClientV2",
    "MaterializationClientV3",
    "MaterializatonClientV2",
    "MaterializatonClientV3",
    "QueryLimitError",
    "concatenate_position_columns",
    "convert_position_columns",
    "convert_timestamp",
    "deserialize_query_response",
    "string_format_timestamp",
]

logger = logging.getLogger("prefect_neurodata.cave.materialize")

SERVER_KEY = "me_server_address"

DEFAULT_MAX_WORKERS = 4
"""Partitions fetched at once when a query is split (keep it below the session pool size)."""

VERSIONS_TTL = 600.0
"""Seconds the list of versions is cached. The seed caches it 12 h, which hides new versions
from long-running workers; frozen per-version metadata is cached for `METADATA_TTL`."""

METADATA_TTL = 12 * 3600.0

INEQUALITY_MIN_SERVER = ">=4.34.4"
"""Server versions that understand the inequality filters (used for id-range partitions)."""

_FILTER_KEYS: tuple[tuple[str, str, str], ...] = (
    # (user argument, body key, attrs["filters"] key)
    ("filter_in_dict", "filter_in_dict", "inclusive"),
    ("filter_out_dict", "filter_notin_dict", "exclusive"),
    ("filter_equal_dict", "filter_equal_dict", "equal"),
    ("filter_greater_dict", "filter_greater_dict", "greater"),
    ("filter_less_dict", "filter_less_dict", "less"),
    ("filter_greater_equal_dict", "filter_greater_equal_dict", "greater_equal"),
    ("filter_less_equal_dict", "filter_less_equal_dict", "less_equal"),
    ("filter_spatial_dict", "filter_spatial_dict", "spatial"),
    ("filter_regex_dict", "filter_regex_dict", "regex"),
)
_INEQUALITY_ARGS = (
    "filter_greater_dict",
    "filter_less_dict",
    "filter_greater_equal_dict",
    "filter_less_equal_dict",
)
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


# ---------------------------------------------------------------------------------------------
# Module functions of the seed
# ---------------------------------------------------------------------------------------------


def convert_timestamp(ts: dt.datetime | str | float | None) -> dt.datetime:
    """Turn a user timestamp into an aware UTC datetime.

    Accepts ``"now"``, naive datetimes (taken as UTC), aware datetimes (converted to UTC),
    POSIX seconds (int/float, always UTC, unlike the seed which used local time), pandas and
    numpy timestamps, ISO-8601 strings (``%Y-%m-%dT%H:%M:%S.%f`` included), and None (the latest
    representable time).

    Raises:
        ValueError: The value is not a recognisable timestamp.
    """
    if ts is None:
        return dt.datetime.max.replace(tzinfo=dt.timezone.utc)
    if isinstance(ts, str):
        if ts.strip().lower() == "now":
            return dt.datetime.now(dt.timezone.utc)
        try:
            parsed = dt.datetime.strptime(ts, _TIMESTAMP_FORMAT)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"timestamp {ts!r} is not an ISO-8601 date-time") from None
        return convert_timestamp(parsed)
    if isinstance(ts, pd.Timestamp):
        ts = ts.to_pydatetime()
    elif isinstance(ts, np.datetime64):
        ts = pd.Timestamp(ts).to_pydatetime()
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            return ts.replace(tzinfo=dt.timezone.utc)
        return ts.astimezone(dt.timezone.utc)
    if isinstance(ts, (int, float, np.integer, np.floating)) and not isinstance(ts, bool):
        return dt.datetime.fromtimestamp(float(ts), tz=dt.timezone.utc)
    raise ValueError(f"timestamp must be a datetime, 'now', a string or a number, got {ts!r}")


def string_format_timestamp(ts: Any) -> Any:
    """Format a datetime as ``%Y-%m-%dT%H:%M:%S.%f`` (other values are returned unchanged)."""
    if isinstance(ts, dt.datetime):
        return ts.strftime(_TIMESTAMP_FORMAT)
    return ts


def deserialize_query_response(response: requests.Response) -> pd.DataFrame:
    """Decode a materialization query response (Arrow IPC stream) into a DataFrame.

    Raises:
        ValueError: The body is neither Arrow (``data.arrow``) nor JSON.
    """
    if is_arrow(response.headers):
        return table_to_frame(read_ipc(response.content), split_positions=True)
    kind = content_type(response.headers)
    if kind == "application/json":
        return pd.DataFrame.from_records(decode_json(response))
    if kind == "x-application/pyarrow":
        raise ValueError(
            "the server answered in the pre-5.9 'pa.serialize' format, which pyarrow no longer "
            "reads; upgrade the materialization server"
        )
    raise ValueError(f"Unknown response type: {kind or 'no Content-Type'}")


def _parse_version_times(meta: dict[str, Any]) -> dict[str, Any]:
    """Parse ``time_stamp``/``expires_on`` of a version record into aware UTC datetimes."""
    out = dict(meta)
    for key in ("time_stamp", "expires_on"):
        if key not in out:
            continue
        value = out[key]
        if value is None:
            out[key] = pd.Timestamp.max.floor("us").to_pydatetime().replace(tzinfo=dt.timezone.utc)
        elif isinstance(value, str):
            out[key] = convert_timestamp(value)
    return out


def _to_list(values: Any) -> Any:
    """Plain lists for array-likes in filters (numpy, pandas, sets, tuples)."""
    if isinstance(values, (str, bytes, dict)):
        return values
    if isinstance(values, (np.ndarray, pd.Series, pd.Index)):
        return np.asarray(values).tolist()
    if isinstance(values, (set, frozenset, tuple, list)):
        return [_scalar(v) for v in values]
    return values


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _nest(spec: Mapping[str, Any] | None, table: str, kind: str) -> dict[str, Any] | None:
    """Nest a single-table filter ``{col: value}`` under ``table``, validating it."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{kind} must be a dict of column -> value, got {type(spec).__name__}")
    return {table: {str(col): _clean_value(kind, col, v) for col, v in spec.items()}}


def _clean_value(kind: str, col: Any, value: Any) -> Any:
    if kind in ("filter_in_dict", "filter_out_dict"):
        if np.isscalar(value) or isinstance(value, (str, bytes)):
            raise ValueError(
                f"{kind}[{col!r}] must be a list of values, got {type(value).__name__} {value!r}"
            )
        return _to_list(value)
    if kind == "filter_spatial_dict":
        box = np.asarray(value)
        if box.shape != (2, 3):
            raise ValueError(
                f"{kind}[{col!r}] must be a bounding box [[x0, y0, z0], [x1, y1, z1]], "
                f"got {value!r}"
            )
        return box.tolist()
    if kind == "filter_regex_dict":
        if not isinstance(value, str):
            raise ValueError(f"{kind}[{col!r}] must be a regex string, got {value!r}")
        return value
    if isinstance(value, (list, tuple, set, np.ndarray, dict)):
        raise ValueError(f"{kind}[{col!r}] must be a single value, got {value!r}")
    return _scalar(value)


def _nested_filters(user: Mapping[str, Any], tables: Sequence[str]) -> dict[str, Any]:
    """Validate per-table filters ``{table: {col: value}}`` (join and live-live queries)."""
    body: dict[str, Any] = {}
    for arg, key, _ in _FILTER_KEYS:
        spec = user.get(arg)
        if spec is None:
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(f"{arg} must be a dict of table -> {{column: value}}")
        nested: dict[str, Any] = {}
        for table, cols in spec.items():
            if tables and table not in tables:
                raise ValueError(f"{arg} names table {table!r}, which is not part of the query")
            inner = _nest(cols, table, arg)
            if inner:
                nested.update(inner)
        body[key] = nested
    return body


def _attrs_filters(user: Mapping[str, Any]) -> dict[str, Any]:
    return {name: user.get(arg) for arg, _, name in _FILTER_KEYS}


@dataclasses.dataclass(frozen=True)
class _QueryArgs:
    """The arguments the query methods share, taken once from a public call.

    Every query method (`query_table`, `join_query`, `live_query`, `live_live_query`,
    `query_view`) builds one with `of` and hands it to the one query pipeline
    (``MaterializationClientV2._execute``), so the meaning of each argument lives in one place.
    """

    filters: dict[str, Any]
    select_columns: Any = None
    offset: int | None = None
    limit: int | None = None
    datastack_name: str | None = None
    return_df: bool = True
    split_positions: bool = False
    materialization_version: int | None = None
    metadata: bool = True
    merge_reference: bool = True
    desired_resolution: Iterable[float] | None = None
    get_counts: bool = False
    random_sample: int | None = None
    log_warning: bool = True
    on_limit: OnLimit = "partition"
    max_workers: int | None = None

    @classmethod
    def of(cls, call: Mapping[str, Any]) -> _QueryArgs:
        """The shared arguments of a public call, from its ``locals()``; checks ``on_limit``.

        The nine filter arguments become ``filters`` (``{argument name: value}``); an
        argument the method does not take keeps its default.
        """
        check_on_limit(call["on_limit"])
        names = {field.name for field in dataclasses.fields(cls)} & call.keys()
        return cls(
            filters={arg: call.get(arg) for arg, _, _ in _FILTER_KEYS},
            **{name: call[name] for name in names},
        )

    @property
    def single(self) -> bool:
        """Counts and random samples are one request: they cannot be split into partitions."""
        return self.get_counts or self.random_sample is not None


def _json_safe(value: Any) -> Any:
    """JSON round-trip (orjson), so attrs hold no numpy objects and `pd.concat` works."""
    return loads(dumps(value))


def _metadata_attrs(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {(k if k.startswith("table") else f"table_{k}"): v for k, v in meta.items()}


def _add_id_range(body: dict[str, Any], table: str, rng: IdRange) -> dict[str, Any]:
    """A copy of ``body`` restricted to ``lo <= id < hi`` of ``table`` (tightening user bounds)."""
    out = dict(body)
    lo, hi = rng
    if lo is not None:
        spec = copy.deepcopy(out.get("filter_greater_equal_dict") or {})
        cols = spec.setdefault(table, {})
        cols["id"] = max(lo, cols["id"]) if cols.get("id") is not None else lo
        out["filter_greater_equal_dict"] = spec
    if hi is not None:
        spec = copy.deepcopy(out.get("filter_less_dict") or {})
        cols = spec.setdefault(table, {})
        cols["id"] = min(hi, cols["id"]) if cols.get("id") is not None else hi
        out["filter_less_dict"] = spec
    return out


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


@document_shared_args
def MaterializationClient(  # noqa: N802 - seed name
    server_address: str,
    datastack_name: str | None = None,
    auth_client: Any = None,
    cg_client: Any = None,
    synapse_table: str | None = None,
    api_version: ApiVersion = "latest",
    version: int | None = None,
    verify: bool | str = True,
    max_retries: int | None = None,
    pool_maxsize: int | None = None,
    pool_block: bool | None = None,
    desired_resolution: Iterable[float] | None = None,
    over_client: Any = None,
    transport: TransportConfig | None = None,
) -> MaterializationClientV2:
    """Build the materialization client for the API version the server offers.

    Args:
        server_address: The local server, e.g. ``https://minnie.microns-daf.com``.
        datastack_name: The datastack queried by default.
        cg_client: The chunkedgraph client used by live queries.
        synapse_table: Default table for `synapse_query`.
        api_version: 2, 3, or "latest" (asks the server; falls back to 2).
        version: Materialization version queried by default (None: the most recent; its list
            is asked while the API version is negotiated, as is the server version).
        desired_resolution: Default resolution of returned positions (e.g. ``[4, 4, 40]``).

    Returns:
        A `MaterializationClientV3` (API 3) or `MaterializationClientV2` (API 2).
    """
    config = resolve_transport(transport, verify, max_retries, pool_maxsize, pool_block)
    options = {"cg_client": cg_client, "synapse_table": synapse_table, "version": version}
    options.update(over_client=over_client, desired_resolution=desired_resolution)
    # The server version and (without a fixed version) the version list do not depend on the
    # API versions answer, so they are asked at the same time: one round trip before the
    # first query instead of three. The list is asked below the prefix of the API version
    # asked for, or of the newest one (what a current server negotiates); the client built
    # takes each answer, or raises its error, where it would have asked itself.
    address = server_address.rstrip("/")
    mapping = {SERVER_KEY: address, "datastack_name": datastack_name}
    known = _endpoints.materialization_api_versions
    newest = api_version if api_version in known else max(known)
    questions: dict[str, Callable[[HttpClient], Any]] = {
        "server_version": functools.partial(
            fetch_server_version,
            url=_endpoints.materialization_common["get_version"].format_map(mapping),
            server_address=address,
        )
    }
    if version is None and datastack_name:
        versions_url = known[newest]["versions"]
        questions["versions"] = functools.partial(
            _ask_versions, url=versions_url.format_map(mapping)
        )
    with asked_meanwhile(auth_client, config, questions) as asked:
        token = _ASKED_AT_START.set(_AskedAtStart(server_address, datastack_name, newest, asked))
        try:
            return SERVICE.connect(
                server_address, auth_client, api_version, config, datastack_name, **options
            )
        finally:
            _ASKED_AT_START.reset(token)


def _ask_versions(http: HttpClient, url: str) -> list[int]:
    """The valid versions at ``url``, asked as `MaterializationClientV2.get_versions` does."""
    return decode_json(send_checked(http, "GET", url, params={"expired": False}))


@dataclasses.dataclass(frozen=True)
class _AskedAtStart:
    """What `MaterializationClient` asked while negotiating, for the client it builds."""

    server_address: str
    datastack_name: str | None
    api_version: int
    """The API version whose URLs the questions used."""
    answers: Mapping[str, Future[Any]]


_ASKED_AT_START: ContextVar[_AskedAtStart | None] = ContextVar(
    "materialization_asked_at_start", default=None
)


# ---------------------------------------------------------------------------------------------
# V2
# ---------------------------------------------------------------------------------------------


class MaterializationClientV2(ClientBase):
    """Materialization client for API version 2 (and the base of `MaterializationClientV3`).

    Use the `MaterializationClient` factory or ``CAVEclient(...).materialize`` rather than
    building it directly.

    `query_table`, `join_query`, `live_query` and `live_live_query` take 5.25's last positional
    argument ``log_warning`` (default True: the server's warnings are logged).

    Every query method takes, besides the seed's arguments, these keyword-only ones:

    * ``on_limit``: what to do when the answer reaches the server's row limit:
      ``"partition"`` (default) fetches every row as id-range partitions; ``"raise"`` raises
      `QueryLimitError`.
    * ``max_workers``: partitions fetched at once (default `DEFAULT_MAX_WORKERS`).
    * ``filter_greater_dict``, ``filter_less_dict``, ``filter_greater_equal_dict``,
      ``filter_less_equal_dict``: strict / inclusive inequality filters (server >= 4.34.4).

    When the server cut an answer and rows are fetched in partitions, rows come back ordered by
    id range, and a caller's ``offset``/``limit`` are applied to that order on the client.
    """

    def __init__(
        self,
        server_address: str,
        auth_header: Mapping[str, str] | None,
        api_version: int,
        endpoints: Mapping[str, str],
        server_name: str,
        datastack_name: str | None,
        cg_client: Any = None,
        synapse_table: str | None = None,
        version: int | None = None,
        verify: bool | str = True,
        max_retries: int | None = None,
        pool_maxsize: int | None = None,
        pool_block: bool | None = None,
        over_client: Any = None,
        desired_resolution: Iterable[float] | None = None,
        transport: TransportConfig | None = None,
    ) -> None:
        seed = (server_address, auth_header, api_version, endpoints, server_name)
        super().__init__(
            *seed, verify, max_retries, pool_maxsize, pool_block, over_client, transport
        )
        self._datastack_name = datastack_name
        self._cg_client = cg_client
        self._synapse_table = synapse_table
        self._version = version
        self.desired_resolution = (
            list(desired_resolution) if desired_resolution is not None else None
        )
        self.max_workers = DEFAULT_MAX_WORKERS
        self._server_limit: int | None = None
        self._versions_cache = TTLMemo(VERSIONS_TTL)
        self._meta_cache = TTLMemo(METADATA_TTL)
        self._tables_manager: TableManager | None = None
        self._views_manager: ViewManager | None = None
        # Answers `MaterializationClient` asked for this client while it negotiated; each is
        # taken once, where this client would have asked itself (errors are raised there).
        asked = _ASKED_AT_START.get()
        self._asked: dict[str, Future[Any]] = {}
        if asked is not None and (asked.server_address, asked.datastack_name) == (
            server_address,
            datastack_name,
        ):
            self._asked = {
                name: future
                for name, future in asked.answers.items()
                # the version list was asked below one API version's prefix: take it only if so
                if name != "versions" or api_version == asked.api_version
            }

    # -- properties --------------------------------------------------------------------------
    @property
    def datastack_name(self) -> str | None:
        """The datastack queried by default."""
        return self._datastack_name

    @property
    def cg_client(self) -> Any:
        """The chunkedgraph client used by live queries (the framework client's, by default)."""
        if self._cg_client is None and self.fc is not None:
            self._cg_client = self.fc.chunkedgraph
        return self._cg_client

    @property
    def version(self) -> int:
        """The materialization version queried by default (the most recent unless set)."""
        if self._version is None:
            self._version = self.most_recent_version()
        return self._version

    @version.setter
    def version(self, x: int | None) -> None:
        if x is None:
            self._version = None
            return
        if int(x) in self.get_versions(expired=True):
            self._version = int(x)
        else:
            raise ValueError(
                f"version {x!r} is not available for datastack {self.datastack_name!r}"
            )

    @property
    def homepage(self) -> str:
        """URL of the materialization web pages of the datastack."""
        return _endpoints.materialization_homepage.format_map(
            {SERVER_KEY: self.server_address, "datastack_name": self.datastack_name}
        )

    @property
    def synapse_table(self) -> str | None:
        """The default synapse table (from the info service unless given)."""
        if self._synapse_table is None and self.fc is not None:
            info = self.fc.info.get_datastack_info()
            self._synapse_table = info.get("synapse_table")
        return self._synapse_table

    @property
    def server_limit(self) -> int | None:
        """The server's row limit per answer, once a truncated answer revealed it."""
        return self._server_limit

    @property
    def tables(self) -> TableManager:
        """One query class per table of the version: ``client.materialize.tables.<table>``.

        Built once from every table's metadata and the schema service's definitions (the two
        fetched at once), so it needs the `CAVEclient` this client belongs to.

        Example:
            >>> client.materialize.tables.synapses(pre_pt_root_id=[1, 2]).query()  # doctest: +SKIP
        """
        if self._tables_manager is None:
            schema = self._schema_client()
            v = self.version
            metadata, definitions = fetch_both(
                lambda: self._all_tables_metadata(v), schema.schema_definition_all
            )
            self._tables_manager = TableManager(
                self, metadata, definitions, schema.schema_definition
            )
        return self._tables_manager

    @property
    def views(self) -> ViewManager:
        """One query class per view of the version: ``client.materialize.views.<view>``
        (materialization API 3)."""
        if self._views_manager is None:
            if not isinstance(self, MaterializationClientV3):
                raise ServerIncompatibilityError("views need materialization API version 3")
            v = self.version
            views, schemas = fetch_both(
                lambda: self.get_views(version=v),
                lambda: self.get_view_schemas(materialization_version=v),
            )
            self._views_manager = ViewManager(self, views, schemas)
        return self._views_manager

    def __getstate__(self) -> dict[str, Any]:
        # A future does not pickle: a copy (pickle, deepcopy) asks for itself what the
        # original was answered at start.
        return {**self.__dict__, "_asked": {}}

    def _get_version(self) -> Version | None:
        asked = self._asked.pop("server_version", None)
        return asked.result() if asked is not None else super()._get_version()

    def _schema_client(self) -> Any:
        """The schema service client of the `CAVEclient` this client belongs to."""
        if self.fc is None:
            raise ValueError("No full CAVEclient specified: tables need its schema client")
        return self.fc.schema

    def _all_tables_metadata(self, version: int) -> list[dict[str, Any]]:
        """Metadata of every table (API 2: one request per table, named by ``table_name``)."""
        return [
            {**self.get_table_metadata(t, version=version), "table_name": t}
            for t in self.get_tables(version=version)
        ]

    # -- small helpers -----------------------------------------------------------------------
    def _ds(self, datastack_name: str | None) -> str:
        ds = datastack_name or self.datastack_name
        if not ds:
            raise ValueError("no datastack_name given and none set on the client")
        return ds

    def _v(self, version: int | None) -> int:
        return int(version) if version is not None else self.version

    def _learn_limit(self, limit: int) -> None:
        self._server_limit = limit

    def _supports_inequality(self) -> bool:
        version = self.server_version
        return version is not None and version >= Version(INEQUALITY_MIN_SERVER[2:])

    def _check_inequality(self, user: Mapping[str, Any]) -> None:
        used = [a for a in _INEQUALITY_ARGS if user.get(a)]
        if used and not self._supports_inequality():
            raise ServerIncompatibilityError(
                f"argument {used[0]}= needs materialization server {INEQUALITY_MIN_SERVER}, but "
                f"the server is {self.server_version or 'of unknown version'}"
            )

    # -- versions ----------------------------------------------------------------------------
    def most_recent_version(self, datastack_name: str | None = None) -> int:
        """The most recent valid materialization version of the datastack."""
        versions = self.get_versions(datastack_name=datastack_name)
        if not versions:
            raise ValueError(f"datastack {self._ds(datastack_name)!r} has no valid version")
        return int(np.max(versions))

    def get_versions(self, datastack_name: str | None = None, expired: bool = False) -> list[int]:
        """The materialization versions available (valid ones unless ``expired=True``)."""
        ds = self._ds(datastack_name)
        if not expired and ds == self.datastack_name:
            asked = self._asked.pop("versions", None)
            if asked is not None:
                return asked.result()
        url = self._url("versions", datastack_name=ds)
        return self._json("GET", url, params={"expired": expired})

    def get_versions_metadata(
        self, datastack_name: str | None = None, expired: bool = False
    ) -> list[dict[str, Any]]:
        """Metadata of every available version, with ``time_stamp``/``expires_on`` as aware
        UTC datetimes (cached for `VERSIONS_TTL` seconds)."""
        ds = self._ds(datastack_name)

        def fetch() -> list[dict[str, Any]]:
            url = self._url("versions_metadata", datastack_name=ds)
            return [
                _parse_version_times(m) for m in self._json("GET", url, params={"expired": expired})
            ]

        return self._versions_cache.get(("versions_metadata", ds, bool(expired)), fetch)

    def get_version_metadata(
        self, version: int | None = None, datastack_name: str | None = None
    ) -> dict[str, Any]:
        """Metadata of one version (``time_stamp``, ``expires_on``, ``valid``, ``status``...)."""
        url = self._url(
            "version_metadata", datastack_name=self._ds(datastack_name), version=self._v(version)
        )
        return _parse_version_times(self._json("GET", url))

    def get_timestamp(self, version: int | None = None, datastack_name: str | None = None):
        """The aware UTC datetime at which a version was frozen."""
        return self.get_version_metadata(version=version, datastack_name=datastack_name)[
            "time_stamp"
        ]

    # -- tables ------------------------------------------------------------------------------
    def get_tables(self, datastack_name: str | None = None, version: int | None = None):
        """Names of the tables of a version."""
        url = self._url("tables", datastack_name=self._ds(datastack_name), version=self._v(version))
        return self._json("GET", url)

    def get_annotation_count(
        self, table_name: str, datastack_name: str | None = None, version: int | None = None
    ) -> int:
        """Rows in a table of a version (from the server's materialized metadata)."""
        ds, v = self._ds(datastack_name), self._v(version)

        def fetch() -> int:
            url = self._url("table_count", datastack_name=ds, version=v, table_name=table_name)
            return int(self._json("GET", url))

        return self._meta_cache.get(("count", ds, v, table_name), fetch)

    def get_table_metadata(
        self,
        table_name: str,
        datastack_name: str | None = None,
        version: int | None = None,
        log_warning: bool = True,
    ) -> dict[str, Any]:
        """Metadata of a table; ``voxel_resolution_x/y/z`` become ``voxel_resolution``."""
        ds, v = self._ds(datastack_name), self._v(version)

        def fetch() -> dict[str, Any]:
            url = self._url("metadata", datastack_name=ds, version=v, table_name=table_name)
            return self._process_metadata(self._json("GET", url, log_warning=log_warning))

        return self._meta_cache.get(("metadata", ds, v, table_name), fetch)

    @staticmethod
    def _process_metadata(meta: dict[str, Any]) -> dict[str, Any]:
        meta = dict(meta)
        keys = ("voxel_resolution_x", "voxel_resolution_y", "voxel_resolution_z")
        if all(k in meta for k in keys):
            meta["voxel_resolution"] = [meta.pop(k) for k in keys]
        return meta

    def _reference_table(self, table: str, ds: str, v: int) -> str | None:
        ref = self.get_table_metadata(table, datastack_name=ds, version=v).get("reference_table")
        return ref or None

    def ingest_annotation_table(self, table_name: str, datastack_name: str | None = None) -> Any:
        """Ask the server to look up supervoxels and roots of a table's new annotations.

        Returns:
            The server's JSON answer (None for an empty body).
        """
        url = self._url(
            "ingest_annotation_table",
            datastack_name=self._ds(datastack_name),
            table_name=table_name,
        )
        response = self._request("POST", url)
        return decode_json(response) if response.content else None

    def lookup_supervoxel_ids(
        self,
        table_name: str,
        annotation_ids: list | None = None,
        datastack_name: str | None = None,
    ) -> Any:
        """Ask the server to look up supervoxel ids of annotations (all when ids are None).

        Returns:
            The server's JSON answer (None for an empty body).
        """
        url = self._url(
            "lookup_supervoxel_ids", datastack_name=self._ds(datastack_name), table_name=table_name
        )
        body = {} if annotation_ids is None else {"annotation_ids": _to_list(annotation_ids)}
        response = self._request("POST", url, json=body, headers={"Accept-Encoding": ""})
        return decode_json(response) if response.content else None

    # -- query plumbing ----------------------------------------------------------------------
    @staticmethod
    def _query_params(return_df: bool, get_counts: bool, random_sample: int | None):
        params: dict[str, Any] = {
            "return_pyarrow": bool(return_df),
            "arrow_format": bool(return_df),
            "split_positions": True,
            "direct_sql_pandas": True,
        }
        if get_counts:
            params["count"] = True
        if random_sample is not None:
            params["random_sample"] = int(random_sample)
        return params

    def _post(self, url: str, body: dict[str, Any], params: dict[str, Any], arrow: bool):
        headers = {"Accept-Encoding": "zstd" if arrow else "gzip"}
        return self._request(
            "POST",
            url,
            params=params,
            json=body,
            headers=headers,
            idempotent=True,
            log_warning=False,
        )

    @staticmethod
    def _to_chunk(response: requests.Response, arrow: bool) -> Chunk:
        warnings = split_warning_header(response.headers.get("Warning"))
        if is_arrow(response.headers):
            table: Any = read_ipc(response.content)
        elif content_type(response.headers) == "application/json" or not arrow:
            records = decode_json(response)
            if arrow:
                frame = pd.DataFrame.from_records(records)
                table = pa.Table.from_pandas(frame, preserve_index=False)
            else:
                table = records
        else:
            raise ValueError(f"Unknown response type: {content_type(response.headers)!r}")
        return Chunk(table, warnings, response.headers, limit_from_warnings(warnings))

    def _partitioner(
        self,
        url: str,
        body: dict[str, Any],
        params: dict[str, Any],
        *,
        arrow: bool,
        part_table: str,
        max_workers: int | None,
        can_count: bool = True,
    ) -> Partitioner:
        """The partitioner of one query: its requests, split by id ranges of ``part_table``."""

        def fetch(rng: IdRange | None, lim: int | None, off: int | None) -> Chunk:
            b = _add_id_range(body, part_table, rng) if rng is not None else dict(body)
            if lim is not None:
                b["limit"] = int(lim)
            if off is not None:
                b["offset"] = int(off)
            return self._to_chunk(self._post(url, b, params, arrow), arrow)

        def count(rng: IdRange | None) -> int:
            b = _add_id_range(body, part_table, rng) if rng is not None else dict(body)
            answer = self._to_chunk(
                self._post(url, b, {**params, "count": True}, arrow), arrow
            ).table
            if isinstance(answer, pa.Table):
                return int(answer.column("count")[0].as_py())
            return int(answer[0]["count"])

        return Partitioner(
            fetch,
            count if can_count else None,
            max_workers=max_workers or self.max_workers,
            limit_hint=self._server_limit,
            on_learn_limit=self._learn_limit,
        )

    def _execute(
        self,
        args: _QueryArgs,
        url: str,
        body: dict[str, Any],
        params: dict[str, Any],
        *,
        tables: Sequence[str],
        ds: str,
        v: int | None,
        res: list[float] | None,
        given_resolution: Callable[[], list[float] | None] | None,
        size_hint: Callable[[], int | None] | None = None,
        can_count: bool = True,
        has_id: Callable[[], bool] | None = None,
        **attrs: Any,
    ) -> Any:
        """The one query pipeline: send (partitioned if needed), assemble, describe.

        Partitions are id ranges of ``tables[0]``; ``attrs`` are the query-specific keywords
        of `_assemble_attributes` (``join_query``, ``suffixes``, ``live``, ...).
        """
        limit, offset = args.limit, args.offset
        if limit is not None and (isinstance(limit, bool) or int(limit) <= 0):
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if offset is not None and (isinstance(offset, bool) or int(offset) < 0):
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        assembler = (
            FrameAssembler(
                split_positions=args.split_positions or args.get_counts,
                desired_resolution=res,
                given_resolution=given_resolution,
            )
            if args.return_df
            else None
        )
        partitioner = self._partitioner(
            url,
            body,
            params,
            arrow=args.return_df,
            part_table=tables[0],
            max_workers=args.max_workers,
            can_count=can_count,
        )
        # Only an unfiltered query is certainly as big as the table: then the table count
        # lets the first (certainly cut) request be skipped.
        unfiltered = not any(body.get(key) for _, key, _ in _FILTER_KEYS)
        chunks: list[Chunk] = []
        for chunk in partitioner.run(
            on_limit=args.on_limit,
            limit=limit,
            offset=offset,
            size_hint=size_hint if unfiltered and not args.single else None,
            why_not=(
                "random_sample and count queries cannot be split"
                if args.single
                else self._partition_check(has_id)
            ),
        ):
            if assembler is not None:
                # converted while later partitions are still in flight
                assembler.add(chunk.table, chunk.headers)
                chunk.table = None
            chunks.append(chunk)
        if not chunks:
            raise RuntimeError("the query produced no answer")
        if args.log_warning:
            self._log_warnings(chunks)
        if assembler is None:
            return [record for chunk in chunks for record in chunk.table]
        data = assembler.frame()
        if args.metadata and not args.get_counts:
            data.attrs.update(
                self._assemble_attributes(
                    tables,
                    ds,
                    v,
                    args,
                    resolution=assembler.resolution,
                    desired_resolution=res,
                    headers=chunks[0].headers,
                    chunks=chunks,
                    **attrs,
                )
            )
        return data

    def _partition_check(self, has_id: Callable[[], bool] | None = None):
        def check() -> str | None:
            if not self._supports_inequality():
                return (
                    f"partitioning needs inequality filters (server {INEQUALITY_MIN_SERVER}), "
                    f"but the server is {self.server_version or 'of unknown version'}"
                )
            if has_id is not None and not has_id():
                return "it has no 'id' column to partition on"
            return None

        return check

    @staticmethod
    def _log_warnings(chunks: list[Chunk]) -> None:
        seen: set[str] = set()
        for chunk in chunks:
            for message in chunk.warnings:
                if limit_from_warnings([message]) is not None or message in seen:
                    continue
                seen.add(message)
                logger.warning(message)

    def _resolution_for(self, desired_resolution: Iterable[float] | None) -> list[float] | None:
        if desired_resolution is None:
            desired_resolution = self.desired_resolution
        if desired_resolution is None:
            return None
        res = [float(x) for x in desired_resolution]
        if len(res) != 3:
            raise ValueError(f"desired_resolution must have 3 values, got {res}")
        return res

    # -- query_table -------------------------------------------------------------------------
    def query_table(
        self,
        table: str,
        filter_in_dict: dict | None = None,
        filter_out_dict: dict | None = None,
        filter_equal_dict: dict | None = None,
        filter_spatial_dict: dict | None = None,
        filter_regex_dict: dict | None = None,
        select_columns: list[str] | None = None,
        offset: int | None = None,
        limit: int | None = None,
        datastack_name: str | None = None,
        return_df: bool = True,
        split_positions: bool = False,
        materialization_version: int | None = None,
        timestamp: dt.datetime | None = None,
        metadata: bool = True,
        merge_reference: bool = True,
        desired_resolution: Iterable[float] | None = None,
        get_counts: bool = False,
        random_sample: int | None = None,
        log_warning: bool = True,
        *,
        filter_greater_dict: dict | None = None,
        filter_less_dict: dict | None = None,
        filter_greater_equal_dict: dict | None = None,
        filter_less_equal_dict: dict | None = None,
        on_limit: OnLimit = "partition",
        max_workers: int | None = None,
    ) -> pd.DataFrame | list[dict[str, Any]]:
        """Query a table of a materialization version (or, with ``timestamp``, live).

        Args:
            table: Table name.
            filter_in_dict: ``{column: [allowed values]}``.
            filter_out_dict: ``{column: [excluded values]}``.
            filter_equal_dict: ``{column: value}``.
            filter_spatial_dict: ``{position column: [[x0, y0, z0], [x1, y1, z1]]}`` in the
                table's voxel units (not ``desired_resolution``).
            filter_regex_dict: ``{string column: postgres regex}``.
            select_columns: Columns to return (default all).
            offset: Rows to skip.
            limit: Maximum rows (None: all, in partitions if the server's limit is reached).
            datastack_name: Datastack (default the client's).
            return_df: Return a DataFrame (Arrow on the wire); False returns JSON records.
            split_positions: Keep positions as ``<pt>_position_x/_y/_z`` columns (faster);
                otherwise each becomes one column of ``np.ndarray([x, y, z])``.
            materialization_version: Version (default the client's).
            timestamp: Query live at this time instead (see `live_query`).
            metadata: Put table and query metadata into ``df.attrs``.
            merge_reference: For a reference table, join the referenced table's rows.
            desired_resolution: Resolution of returned positions (default the client's).
            get_counts: Return the number of matching rows instead of rows.
            random_sample: Sample about this many rows of the table (before filters).
            filter_greater_dict: ``{column: value}`` strictly greater.
            filter_less_dict: ``{column: value}`` strictly less.
            filter_greater_equal_dict: ``{column: value}`` greater or equal.
            filter_less_equal_dict: ``{column: value}`` less or equal.
            on_limit: ``"partition"`` or ``"raise"`` when the server's row limit is reached.
            max_workers: Partitions fetched at once.

        Returns:
            A DataFrame (or JSON records with ``return_df=False``).

        Raises:
            QueryLimitError: The row limit was reached and ``on_limit="raise"`` (or the query
                cannot be partitioned).
            ValueError: Invalid arguments (nothing is sent).

        Example:
            ```python
            df = client.materialize.query_table("nucleus_detection_v0", limit=10)
            df.attrs["table_voxel_resolution"]
            ```
        """
        if timestamp is not None:
            if materialization_version is not None:
                raise ValueError("pass either timestamp or materialization_version, not both")
            if not return_df:
                raise ValueError("a live query (timestamp=...) always returns a DataFrame")
            # live_query takes neither get_counts nor a version: the seed ignores the first
            args = dataclasses.replace(_QueryArgs.of(locals()), get_counts=False)
            return self._live_query(table, timestamp, args, post_filter=True)
        return self._query_table(table, _QueryArgs.of(locals()))

    def _simple_body(
        self,
        table: str,
        user: Mapping[str, Any],
        select_columns: Any,
        desired_resolution: list[float] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for arg, key, _ in _FILTER_KEYS:
            nested = _nest(user.get(arg), table, arg)
            if nested is not None:
                body[key] = nested
        if select_columns is not None:
            if isinstance(select_columns, str) or not all(
                isinstance(c, str) for c in select_columns
            ):
                raise ValueError(
                    f"select_columns must be a list of column names, got {select_columns!r}"
                )
            body["select_columns"] = list(select_columns)
        if desired_resolution is not None:
            body["desired_resolution"] = desired_resolution
        return body

    def _table_request(
        self, table: str, args: _QueryArgs
    ) -> tuple[str, dict[str, Any], str | None, str, int, list[float] | None]:
        """URL, body, reference table, datastack, version and resolution of a table query."""
        self._check_inequality(args.filters)
        ds = self._ds(args.datastack_name)
        v = self._v(args.materialization_version)
        res = self._resolution_for(args.desired_resolution)
        body = self._simple_body(table, args.filters, args.select_columns, res)
        reference = self._reference_table(table, ds, v) if args.merge_reference else None
        if reference:
            body = self._reference_join_body(table, reference, body)
            url = self._url("join_query", datastack_name=ds, version=v)
        else:
            url = self._url("simple_query", datastack_name=ds, version=v, table_name=table)
        return url, body, reference, ds, v, res

    def _query_table(self, table: str, args: _QueryArgs, live: dict[str, Any] | None = None) -> Any:
        url, body, reference, ds, v, res = self._table_request(table, args)
        params = self._query_params(args.return_df, args.get_counts, args.random_sample)
        return self._execute(
            args,
            url,
            body,
            params,
            tables=[table] + ([reference] if reference else []),
            ds=ds,
            v=v,
            res=res,
            given_resolution=lambda: self._table_resolution(table, ds, v),
            size_hint=lambda: self.get_annotation_count(table, datastack_name=ds, version=v),
            join_query=False,
            suffixes={table: "", reference: "_ref"} if reference else None,
            live=live,
        )

    def _reference_join_body(self, table: str, reference: str, body: dict[str, Any]):
        body = dict(body)
        body["tables"] = [[table, "target_id"], [reference, "id"]]
        select = body.pop("select_columns", None)
        if self.api_version >= 3:
            body["suffix_map"] = {table: "", reference: "_ref"}
            if select is not None:
                body["select_column_map"] = {table: select}
        else:
            body["suffixes"] = ["", "ref"]
            if select is not None:
                body["select_columns"] = select
        return body

    def _table_resolution(self, table: str, ds: str, v: int) -> list[float] | None:
        return self.get_table_metadata(table, datastack_name=ds, version=v).get("voxel_resolution")

    def _assemble_attributes(
        self,
        tables: Sequence[str],
        ds: str,
        v: int | None,
        args: _QueryArgs,
        *,
        resolution: list[float] | None,
        desired_resolution: list[float] | None,
        headers: Any,
        join_query: bool,
        suffixes: Mapping[str, str] | None = None,
        join_columns: Mapping[str, str] | None = None,
        chunks: list[Chunk] | None = None,
        live: Mapping[str, Any] | None = None,
        views: bool = False,
    ) -> dict[str, Any]:
        """The ``df.attrs`` of a query (reference 7.7), JSON-safe."""
        attrs: dict[str, Any] = {"datastack_name": ds, "join_query": join_query}
        metas: dict[str, dict[str, Any]] = {}
        for name in tables:
            try:
                if views:  # only MaterializationClientV3 asks for views
                    meta = cast("MaterializationClientV3", self).get_view_metadata(
                        name, materialization_version=v, datastack_name=ds
                    )
                else:
                    meta = self.get_table_metadata(name, datastack_name=ds, version=v)
            except Exception as exc:  # attrs are a convenience: never fail the query for them
                logger.debug("metadata for %s unavailable: %s", name, exc)
                meta = {}
            metas[name] = self._process_metadata(meta)
        if not join_query and len(tables) == 1:
            attrs.update(_metadata_attrs(metas[tables[0]]))
        else:
            attrs["tables"] = {
                name: {
                    **_metadata_attrs(meta),
                    "join_column": (join_columns or {}).get(name),
                    "suffix": (suffixes or {}).get(name),
                }
                for name, meta in metas.items()
            }
        if resolution is None:
            resolution = desired_resolution
        if resolution is None:
            found = {tuple(m.get("voxel_resolution") or ()) for m in metas.values()}
            found.discard(())
            if len(found) == 1:
                resolution = list(found.pop())
            elif len(found) > 1:
                resolution = "mixed_resolutions"  # type: ignore[assignment]
        attrs["dataframe_resolution"] = resolution
        attrs["filters"] = _attrs_filters(args.filters)
        attrs["select_columns"] = args.select_columns
        attrs["offset"] = args.offset
        attrs["limit"] = args.limit
        attrs["live_query"] = bool(live)
        attrs["timestamp"] = (live or {}).get("timestamp")
        attrs["materialization_version"] = v
        attrs["column_names"] = headers.get("column_names") if headers is not None else None
        if chunks is not None:
            attrs["partitions"] = len(chunks)
            attrs["truncated"] = False
        return _json_safe(attrs)

    # -- streaming ---------------------------------------------------------------------------
    def iter_query_table_partitions(
        self,
        table: str,
        filter_in_dict: dict | None = None,
        filter_out_dict: dict | None = None,
        filter_equal_dict: dict | None = None,
        filter_spatial_dict: dict | None = None,
        filter_regex_dict: dict | None = None,
        select_columns: list[str] | None = None,
        datastack_name: str | None = None,
        materialization_version: int | None = None,
        merge_reference: bool = True,
        desired_resolution: Iterable[float] | None = None,
        *,
        filter_greater_dict: dict | None = None,
        filter_less_dict: dict | None = None,
        filter_greater_equal_dict: dict | None = None,
        filter_less_equal_dict: dict | None = None,
        max_workers: int | None = None,
    ) -> Iterator[pa.Table]:
        """Yield every row of a versioned table query as Arrow tables, one per partition.

        Memory stays bounded (about ``max_workers`` partitions at a time), so a flow can write
        each part to Parquet as it arrives. Positions stay split (``<pt>_position_x/_y/_z``)
        and are in ``desired_resolution`` when one is given. Parts come in ascending id-range
        order; each is complete (never cut at the server's limit) and no row appears twice.

        Example:
            ```python
            import pyarrow.parquet as pq

            for i, part in enumerate(client.materialize.iter_query_table_partitions(
                    "synapses", materialization_version=943)):
                pq.write_table(part, f"synapses/part-{i:05d}.parquet")
            ```
        """
        args = _QueryArgs.of(locals() | {"on_limit": "partition"})
        url, body, _, ds, v, res = self._table_request(table, args)
        params = self._query_params(True, False, None)
        partitioner = self._partitioner(
            url, body, params, arrow=True, part_table=table, max_workers=max_workers
        )
        factors: Any = None
        checked = False
        unfiltered = not any(body.get(key) for _, key, _ in _FILTER_KEYS)
        for chunk in partitioner.run(
            on_limit="partition",
            size_hint=(
                (lambda: self.get_annotation_count(table, datastack_name=ds, version=v))
                if unfiltered
                else None
            ),
            why_not=self._partition_check(),
        ):
            self._log_warnings([chunk])
            if not checked:
                checked = True
                header = parse_resolution(chunk.headers.get("dataframe_resolution"))
                if res is not None and header is None:
                    factors = scale_factors(self._table_resolution(table, ds, v), res)
            yield scale_table_positions(chunk.table, factors)

    # -- join_query --------------------------------------------------------------------------
    def join_query(
        self,
        tables: list,
        filter_in_dict: dict | None = None,
        filter_out_dict: dict | None = None,
        filter_equal_dict: dict | None = None,
        filter_spatial_dict: dict | None = None,
        filter_regex_dict: dict | None = None,
        select_columns: dict | list | None = None,
        offset: int | None = None,
        limit: int | None = None,
        suffixes: list | dict | None = None,
        datastack_name: str | None = None,
        return_df: bool = True,
        split_positions: bool = False,
        materialization_version: int | None = None,
        metadata: bool = True,
        desired_resolution: Iterable[float] | None = None,
        random_sample: int | None = None,
        log_warning: bool = True,
        *,
        filter_greater_dict: dict | None = None,
        filter_less_dict: dict | None = None,
        filter_greater_equal_dict: dict | None = None,
        filter_less_equal_dict: dict | None = None,
        on_limit: OnLimit = "partition",
        max_workers: int | None = None,
    ) -> pd.DataFrame | list[dict[str, Any]]:
        """Join two tables of a version: ``tables=[[t1, col1], [t2, col2]]``.

        Filters are per table: ``{table: {column: value}}``; ``select_columns`` is
        ``{table: [columns]}``; ``suffixes`` is ``{table: suffix}`` (a list is accepted too).
        When partitioned, partitions are id ranges of the first table. ``return_df=False``
        returns the JSON records (the seed returned None). See `query_table` for the rest.
        """
        args = _QueryArgs.of(locals())
        if (
            not isinstance(tables, (list, tuple))
            or len(tables) != 2
            or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in tables)
        ):
            raise ValueError(
                f"tables must be [[table1, join_column1], [table2, join_column2]], got {tables!r}"
            )
        self._check_inequality(args.filters)
        names = [str(t[0]) for t in tables]
        ds = self._ds(datastack_name)
        v = self._v(materialization_version)
        res = self._resolution_for(desired_resolution)
        body: dict[str, Any] = _nested_filters(args.filters, names)
        body["tables"] = [[str(t), str(c)] for t, c in tables]
        if select_columns is not None:
            if isinstance(select_columns, Mapping):
                unknown = [t for t in select_columns if t not in names]
                if unknown:
                    raise ValueError(f"select_columns names tables not in the query: {unknown}")
                body["select_column_map"] = {t: list(c) for t, c in select_columns.items()}
            else:
                body["select_columns"] = list(select_columns)
        suffix_map: dict[str, str] | None = None
        if suffixes is not None:
            if isinstance(suffixes, Mapping):
                suffix_map = {str(k): str(s) for k, s in suffixes.items()}
            else:
                suffix_map = dict(zip(names, [str(s) for s in suffixes], strict=False))
            if self.api_version >= 3:
                body["suffix_map"] = suffix_map
            else:
                body["suffixes"] = [suffix_map.get(n, "") for n in names]
        if res is not None:
            body["desired_resolution"] = res
        return self._execute(
            args,
            self._url("join_query", datastack_name=ds, version=v),
            body,
            self._query_params(return_df, False, random_sample),
            tables=names,
            ds=ds,
            v=v,
            res=res,
            given_resolution=lambda: self._table_resolution(names[0], ds, v),
            size_hint=lambda: self.get_annotation_count(names[0], datastack_name=ds, version=v),
            join_query=True,
            suffixes=suffix_map,
            join_columns={str(t): str(c) for t, c in tables},
        )

    # -- live queries ------------------------------------------------------------------------
    def _version_before(self, ts: dt.datetime, ds: str) -> dict[str, Any]:
        """The newest valid version frozen at or before ``ts``."""
        candidates = [
            m
            for m in self.get_versions_metadata(datastack_name=ds)
            if m.get("valid", True) and m["time_stamp"] <= ts
        ]
        if not candidates:
            raise ValueError(
                f"timestamp {ts.isoformat()} is older than every valid materialization version "
                f"of {ds!r}; the timestamp is not recent enough for a live query"
            )
        return max(candidates, key=lambda m: m["time_stamp"])

    def map_filters(
        self,
        filters: Sequence[dict | None],
        timestamp: dt.datetime,
        timestamp_past: dt.datetime,
    ) -> tuple[list[dict | None], dict[int, int]]:
        """Translate root-id filters from ``timestamp`` back to ``timestamp_past``.

        Every value of a column ending in ``root_id`` must be a root that is current at
        ``timestamp`` and was created before it. Each is replaced by its past ids at
        ``timestamp_past``; an equality filter becomes an in-filter (one root may have several
        past ids).

        Args:
            filters: ``[filter_in_dict, filter_out_dict, filter_equal_dict]`` (None allowed).
            timestamp: The query time.
            timestamp_past: The version's time.

        Returns:
            ``(new_filters, future_map)``: the filters in the same order (an equality on a
            root id moves into the in-filter, index 0) and ``{past_id: root_at_timestamp}``.

        Raises:
            ValueError: Some root ids are not valid at ``timestamp``, or are negative or
                >= 2**63 (they are named).
        """
        timestamp = convert_timestamp(timestamp)
        timestamp_past = convert_timestamp(timestamp_past)
        roots: set[int] = set()
        for spec in filters:
            for col, value in (spec or {}).items():
                if str(col).endswith("root_id"):
                    values = value if isinstance(value, (list, tuple, set, np.ndarray)) else [value]
                    roots.update(int(x) for x in values)
        new_filters: list[dict | None] = [dict(f) if f is not None else None for f in filters]
        if not roots:
            return new_filters, {}
        ids = valid_node_ids(sorted(roots), "root-id filter values")  # 0 <= id < 2**63
        cg = self.cg_client
        if cg is None:
            raise ValueError("a live query with root-id filters needs a chunkedgraph client")
        latest = np.asarray(cg.is_latest_roots(ids, timestamp=timestamp), dtype=bool)
        created = cg.get_root_timestamps(ids)
        created_ts = [convert_timestamp(t) for t in created]
        too_recent = [int(i) for i, t in zip(ids, created_ts, strict=True) if t > timestamp]
        expired = [int(i) for i, ok in zip(ids, latest, strict=True) if not ok]
        expired = [i for i in expired if i not in too_recent]
        problems = {
            f"expired (not latest at {timestamp.isoformat()})": expired,
            f"too recent (created after {timestamp.isoformat()})": too_recent,
        }
        if too_recent or expired:
            raise ValueError(
                "root ids are not valid at the query timestamp: "
                + "; ".join(f"{what}: {bad}" for what, bad in problems.items() if bad)
                + ". Use client.chunkedgraph.suggest_latest_roots or get_latest_roots."
            )
        mapping = cg.get_past_ids(ids, timestamp_past=timestamp_past, timestamp_future=timestamp)
        past_map = {int(k): [int(x) for x in v] for k, v in mapping["past_id_map"].items()}
        future_map = {int(k): int(v) for k, v in mapping.get("future_id_map", {}).items()}

        def past(values: Any) -> list[int]:
            values = values if isinstance(values, (list, tuple, set, np.ndarray)) else [values]
            out: list[int] = []
            for x in values:
                out.extend(past_map.get(int(x), [int(x)]))
            return sorted(set(out))

        for index, spec in enumerate(new_filters):
            if not spec:
                continue
            for col in list(spec):
                if not str(col).endswith("root_id"):
                    continue
                if index == 2:  # equality -> in
                    value = spec.pop(col)
                    target = new_filters[0] if new_filters[0] is not None else {}
                    existing = set(target.get(col, [])) if col in target else None
                    mapped = past(value)
                    target[col] = sorted(existing & set(mapped)) if existing is not None else mapped
                    new_filters[0] = target
                else:
                    spec[col] = past(spec[col])
        if new_filters[2] is not None and not new_filters[2]:
            new_filters[2] = None
        return new_filters, future_map

    def live_query(
        self,
        table: str,
        timestamp: dt.datetime,
        filter_in_dict: dict | None = None,
        filter_out_dict: dict | None = None,
        filter_equal_dict: dict | None = None,
        filter_spatial_dict: dict | None = None,
        filter_regex_dict: dict | None = None,
        select_columns: list[str] | None = None,
        offset: int | None = None,
        limit: int | None = None,
        datastack_name: str | None = None,
        split_positions: bool = False,
        post_filter: bool = True,
        metadata: bool = True,
        merge_reference: bool = True,
        desired_resolution: Iterable[float] | None = None,
        random_sample: int | None = None,
        log_warning: bool = True,
        *,
        filter_greater_dict: dict | None = None,
        filter_less_dict: dict | None = None,
        filter_greater_equal_dict: dict | None = None,
        filter_less_equal_dict: dict | None = None,
        on_limit: OnLimit = "partition",
        max_workers: int | None = None,
    ) -> pd.DataFrame:
        """Query a table as it was at ``timestamp`` (client-side live query, reference 4.4).

        Root-id filters are mapped back to the newest version frozen before ``timestamp``, the
        version is queried, root ids are brought forward to ``timestamp`` with the
        chunkedgraph, and (``post_filter=True``) the original filters are applied again.

        Raises:
            ValueError: No version precedes ``timestamp``, or a filtered root id is not valid
                at ``timestamp``.
        """
        return self._live_query(table, timestamp, _QueryArgs.of(locals()), post_filter)

    def _live_query(
        self, table: str, timestamp: dt.datetime, args: _QueryArgs, post_filter: bool
    ) -> pd.DataFrame:
        user = args.filters
        for arg in ("filter_in_dict", "filter_out_dict", "filter_equal_dict"):
            if user[arg] is not None:
                _nest(user[arg], table, arg)  # validate before any request
        ts = convert_timestamp(timestamp)
        ds = self._ds(args.datastack_name)
        version_meta = self._version_before(ts, ds)
        live = {"timestamp": string_format_timestamp(ts)}

        def query_version(filters: dict[str, Any], columns: Any, split: bool) -> pd.DataFrame:
            # The query of the materialized version: a timestamp that is exactly the version's
            # and one whose roots are brought forward differ only in filters, columns and
            # position layout.
            version_args = dataclasses.replace(
                args,
                filters=filters,
                select_columns=columns,
                split_positions=split,
                datastack_name=ds,
                materialization_version=int(version_meta["version"]),
                return_df=True,
                get_counts=False,
            )
            return self._query_table(table, version_args, live=live)

        if version_meta["time_stamp"] == ts:
            return query_version(user, args.select_columns, args.split_positions)
        (in_f, out_f, eq_f), future_map = self.map_filters(
            [user["filter_in_dict"], user["filter_out_dict"], user["filter_equal_dict"]],
            ts,
            version_meta["time_stamp"],
        )
        mapped = {
            **user,
            "filter_in_dict": in_f,
            "filter_out_dict": out_f,
            "filter_equal_dict": eq_f,
        }
        if post_filter:
            # An exclusion or inequality on root ids cannot be translated to the version: a
            # past root may hold rows of several current roots, some wanted, some not. Those
            # filters are applied only after the roots are brought forward.
            for arg in ("filter_out_dict", *_INEQUALITY_ARGS):
                spec = mapped.get(arg)
                if spec:
                    kept = {c: v for c, v in spec.items() if not str(c).endswith("root_id")}
                    mapped[arg] = kept or None
        select_columns = args.select_columns
        select = list(select_columns) if select_columns is not None else None
        if select is not None:
            # root updating needs the supervoxel ids next to each selected root id
            for col in list(select):
                if col.endswith("_root_id"):
                    sv = col[: -len("root_id")] + "supervoxel_id"
                    if sv not in select:
                        select.append(sv)
        df = query_version(mapped, select, True)
        attrs = dict(df.attrs)
        df = self._update_rootids(df, ts, future_map)
        if post_filter:
            df = _post_filter(df, user)
        if select_columns is not None:
            extra = [c for c in (select or []) if c not in select_columns and c in df.columns]
            df = df.drop(columns=extra)
        if not args.split_positions:
            df = concatenate_position_columns(df, inplace=False)
        df.attrs = attrs
        if args.metadata:
            df.attrs["filters"] = _json_safe(_attrs_filters(user))
        return df

    def _update_rootids(
        self, df: pd.DataFrame, timestamp: dt.datetime, future_map: Mapping[int, int]
    ) -> pd.DataFrame:
        """Bring every ``<pt>_root_id`` column forward to ``timestamp``.

        Every root that is not the latest at ``timestamp`` is recomputed from the row's
        supervoxel. ``future_map`` is deliberately not used as a shortcut (the seed does): a
        past root that was split maps to only one of its pieces, which would give rows of the
        other pieces the wrong root and let them through the post-filter.
        """
        del future_map
        cg = self.cg_client
        sv_cols = [c for c in df.columns if str(c).endswith("supervoxel_id")]
        pairs = [
            (sv, sv[: -len("supervoxel_id")] + "root_id")
            for sv in sv_cols
            if sv[: -len("supervoxel_id")] + "root_id" in df.columns
        ]
        if df.empty or not pairs:
            return df
        roots_by_col = {root: df[root].to_numpy(dtype=np.uint64, na_value=0) for _, root in pairs}
        unique = np.unique(np.concatenate(list(roots_by_col.values())))
        unique = unique[unique != 0]
        stale = np.zeros(0, dtype=np.uint64)
        if len(unique):
            latest = np.asarray(cg.is_latest_roots(unique, timestamp=timestamp), dtype=bool)
            stale = unique[~latest]
        if not len(stale):
            return df
        for sv_col, root_col in pairs:
            roots = roots_by_col[root_col]
            rows = np.isin(roots, stale)
            if not rows.any():
                continue
            svs = df[sv_col].to_numpy(dtype=np.uint64, na_value=0)[rows]
            new = np.asarray(cg.get_roots(svs, timestamp=timestamp), dtype=np.uint64)
            roots = roots.copy()
            roots[rows] = new
            df[root_col] = pd.array(roots.astype(np.int64), dtype=df[root_col].dtype)
        return df

    def live_live_query(
        self,
        table: str,
        timestamp: dt.datetime,
        joins: list | None = None,
        filter_in_dict: dict | None = None,
        filter_out_dict: dict | None = None,
        filter_equal_dict: dict | None = None,
        filter_spatial_dict: dict | None = None,
        select_columns: dict | None = None,
        offset: int | None = None,
        limit: int | None = None,
        datastack_name: str | None = None,
        split_positions: bool = False,
        metadata: bool = True,
        suffixes: dict | None = None,
        desired_resolution: Iterable[float] | None = None,
        allow_missing_lookups: bool = False,
        random_sample: int | None = None,
        log_warning: bool = True,
        *,
        filter_regex_dict: dict | None = None,
        allow_invalid_root_ids: bool | None = None,
        filter_greater_dict: dict | None = None,
        filter_less_dict: dict | None = None,
        filter_greater_equal_dict: dict | None = None,
        filter_less_equal_dict: dict | None = None,
        on_limit: OnLimit = "partition",
        max_workers: int | None = None,
    ) -> pd.DataFrame:
        """Server-side live query at ``timestamp`` (beta on the server), with optional joins.

        Filters and ``select_columns`` are per table: ``{table: {column: value}}``;
        ``joins`` is ``[[table1, column1, table2, column2], ...]``; ``suffixes`` is
        ``{table: suffix}``. Partitions, when needed, are id ranges of ``table``.
        """
        args = _QueryArgs.of(locals())
        if filter_regex_dict is not None and self.api_version < 3:
            raise ServerIncompatibilityError("filter_regex_dict in live_live_query needs API v3")
        if allow_invalid_root_ids is not None and self.api_version < 3:
            raise ServerIncompatibilityError(
                "allow_invalid_root_ids in live_live_query needs API v3"
            )
        self._check_inequality(args.filters)
        logger.warning(
            "Deprecation: live_live_query is a beta method of the materialization server; its "
            "interface may change"
        )
        ts = convert_timestamp(timestamp)
        ds = self._ds(datastack_name)
        names = [table]
        for join in joins or []:
            if not isinstance(join, (list, tuple)) or len(join) != 4:
                raise ValueError(
                    f"each join must be [table1, column1, table2, column2], got {join!r}"
                )
            for name in (join[0], join[2]):
                if name not in names:
                    names.append(str(name))
        body: dict[str, Any] = {"table": table, "timestamp": ts.isoformat()}
        if joins:
            body["join_tables"] = [[str(x) for x in j] for j in joins]
        body.update(_nested_filters(args.filters, names))
        if select_columns is not None:
            if not isinstance(select_columns, Mapping):
                raise ValueError("select_columns of live_live_query must be {table: [columns]}")
            body["select_columns"] = {t: list(c) for t, c in select_columns.items()}
        if suffixes is not None:
            if not isinstance(suffixes, Mapping):
                raise ValueError("suffixes of live_live_query must be {table: suffix}")
            body["suffixes"] = dict(suffixes)
        res = self._resolution_for(desired_resolution)
        if res is not None and self.api_version >= 3:
            body["desired_resolution"] = res
        params: dict[str, Any] = {
            "return_pyarrow": True,
            "arrow_format": True,
            "merge_reference": False,
            "allow_missing_lookups": bool(allow_missing_lookups),
            "direct_sql_pandas": True,
        }
        if self.api_version >= 3:
            params["allow_invalid_root_ids"] = bool(allow_invalid_root_ids)
        if random_sample is not None:
            params["random_sample"] = int(random_sample)
        return self._execute(
            args,
            self._url("live_live_query", datastack_name=ds),
            body,
            params,
            tables=names,
            ds=ds,
            v=None,
            res=res,
            given_resolution=None,
            can_count=False,
            join_query=bool(joins),
            suffixes=suffixes,
            live={"timestamp": string_format_timestamp(ts)},
        )

    # -- synapse_query -----------------------------------------------------------------------
    def synapse_query(
        self,
        pre_ids: int | Iterable | np.ndarray | None = None,
        post_ids: int | Iterable | np.ndarray | None = None,
        bounding_box: Any = None,
        bounding_box_column: str = "post_pt_position",
        timestamp: dt.datetime | None = None,
        remove_autapses: bool = True,
        include_zeros: bool = True,
        limit: int | None = None,
        offset: int | None = None,
        split_positions: bool = False,
        desired_resolution: Iterable[float] | None = None,
        materialization_version: int | None = None,
        synapse_table: str | None = None,
        datastack_name: str | None = None,
        metadata: bool = True,
        *,
        on_limit: OnLimit = "partition",
        max_workers: int | None = None,
    ) -> pd.DataFrame:
        """Synapses between given pre- and/or post-synaptic roots (autapses removed).

        Unlike the seed, an unfiltered query is not cut at the server's limit: every row is
        fetched in partitions (or `QueryLimitError` with ``on_limit="raise"``).
        """
        table = synapse_table or self.synapse_table
        if not table:
            raise ValueError("no synapse_table given and the datastack names none")
        filter_in: dict[str, Any] = {}
        filter_equal: dict[str, Any] = {}
        filter_out: dict[str, Any] = {}
        for col, ids in (("pre_pt_root_id", pre_ids), ("post_pt_root_id", post_ids)):
            if ids is None:
                continue
            if np.isscalar(ids):
                filter_equal[col] = int(cast("int | np.integer", ids))
            else:
                filter_in[col] = [int(x) for x in np.asarray(ids).ravel().tolist()]
        if not include_zeros:
            filter_out = {"pre_pt_root_id": [0], "post_pt_root_id": [0]}
        spatial = {bounding_box_column: bounding_box} if bounding_box is not None else None
        # return_df is left at True, so this is a DataFrame.
        df = cast(
            pd.DataFrame,
            self.query_table(
                table,
                filter_in_dict=filter_in or None,
                filter_out_dict=filter_out or None,
                filter_equal_dict=filter_equal or None,
                filter_spatial_dict=spatial,
                offset=offset,
                limit=limit,
                datastack_name=datastack_name,
                split_positions=split_positions,
                materialization_version=materialization_version,
                timestamp=timestamp,
                metadata=metadata,
                merge_reference=False,
                desired_resolution=desired_resolution,
                on_limit=on_limit,
                max_workers=max_workers,
            ),
        )
        if remove_autapses and not df.empty:
            attrs = dict(df.attrs)
            df = df[df["pre_pt_root_id"] != df["post_pt_root_id"]]
            df.attrs = attrs
        if not include_zeros and not df.empty:
            attrs = dict(df.attrs)
            df = df[(df["pre_pt_root_id"] != 0) & (df["post_pt_root_id"] != 0)]
            df.attrs = attrs
        if metadata:
            df.attrs["remove_autapses"] = remove_autapses
        return df


def _post_filter(df: pd.DataFrame, user: Mapping[str, Any]) -> pd.DataFrame:
    """Apply the value filters again in pandas (live query, after root ids moved forward)."""
    if df.empty:
        return df
    mask = np.ones(len(df), dtype=bool)
    for col, values in (user.get("filter_in_dict") or {}).items():
        mask &= df[col].isin(_to_list(values)).to_numpy(dtype=bool, na_value=False)
    for col, values in (user.get("filter_out_dict") or {}).items():
        mask &= ~df[col].isin(_to_list(values)).to_numpy(dtype=bool, na_value=True)
    for col, value in (user.get("filter_equal_dict") or {}).items():
        mask &= (df[col] == value).to_numpy(dtype=bool, na_value=False)
    ops = {
        "filter_greater_dict": "__gt__",
        "filter_less_dict": "__lt__",
        "filter_greater_equal_dict": "__ge__",
        "filter_less_equal_dict": "__le__",
    }
    for arg, op in ops.items():
        for col, value in (user.get(arg) or {}).items():
            mask &= getattr(df[col], op)(value).to_numpy(dtype=bool, na_value=False)
    attrs = dict(df.attrs)
    out = df[mask]
    out.attrs = attrs
    return out


# ---------------------------------------------------------------------------------------------
# V3
# ---------------------------------------------------------------------------------------------


class MaterializationClientV3(MaterializationClientV2):
    """Materialization client for API version 3: views, all-tables metadata, unique values,
    and server-side desired resolution (``dataframe_resolution`` header)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def _all_tables_metadata(self, version: int) -> list[dict[str, Any]]:
        """Metadata of every table in one request (``.../tables/metadata``)."""
        return self.get_tables_metadata(version=version)

    @check_version_compatibility(method_api_constraint=">=3")
    def get_tables_metadata(
        self,
        datastack_name: str | None = None,
        version: int | None = None,
        log_warning: bool = True,
    ) -> list[dict[str, Any]]:
        """Metadata of every table of a version (cached per datastack and version)."""
        ds, v = self._ds(datastack_name), self._v(version)

        def fetch() -> list[dict[str, Any]]:
            url = self._url("all_tables_metadata", datastack_name=ds, version=v)
            answer = self._json("GET", url, log_warning=log_warning)
            return [self._process_metadata(m) for m in answer]

        return self._meta_cache.get(("all_metadata", ds, v), fetch)

    @check_version_compatibility(method_api_constraint=">=3")
    def get_unique_string_values(
        self, table: str, datastack_name: str | None = None
    ) -> dict[str, list[str]]:
        """The distinct values of every string column of a table."""
        url = self._url(
            "unique_string_values", datastack_name=self._ds(datastack_name), table_name=table
        )
        return self._json("GET", url)

    @check_version_compatibility(method_api_constraint=">=3")
    def get_views(
        self, version: int | None = None, datastack_name: str | None = None
    ) -> dict[str, Any]:
        """The views of a version (``{view_name: metadata}``)."""
        url = self._url(
            "get_views", datastack_name=self._ds(datastack_name), version=self._v(version)
        )
        return self._json("GET", url)

    @check_version_compatibility(method_api_constraint=">=3")
    def get_view_metadata(
        self,
        view_name: str,
        materialization_version: int | None = None,
        datastack_name: str | None = None,
        log_warning: bool = True,
    ) -> dict[str, Any]:
        """Metadata of a view."""
        return self._view_json(
            "view_metadata", view_name, materialization_version, datastack_name, log_warning
        )

    @check_version_compatibility(method_api_constraint=">=3")
    def get_view_schema(
        self,
        view_name: str,
        materialization_version: int | None = None,
        datastack_name: str | None = None,
        log_warning: bool = True,
    ) -> dict[str, Any]:
        """Column types of a view (``{column: {"type": ...}}``)."""
        return self._view_json(
            "view_schema", view_name, materialization_version, datastack_name, log_warning
        )

    def _view_json(
        self,
        endpoint: str,
        view_name: str,
        materialization_version: int | None,
        datastack_name: str | None,
        log_warning: bool,
    ) -> dict[str, Any]:
        """GET a per-view endpoint, cached per endpoint, datastack, version and view."""
        ds, v = self._ds(datastack_name), self._v(materialization_version)

        def fetch() -> dict[str, Any]:
            url = self._url(endpoint, datastack_name=ds, version=v, view_name=view_name)
            return self._json("GET", url, log_warning=log_warning)

        return self._meta_cache.get((endpoint, ds, v, view_name), fetch)

    @check_version_compatibility(method_api_constraint=">=3")
    def get_view_schemas(
        self,
        materialization_version: int | None = None,
        datastack_name: str | None = None,
        log_warning: bool = True,
    ) -> dict[str, Any]:
        """Column types of every view of a version."""
        url = self._url(
            "view_schemas",
            datastack_name=self._ds(datastack_name),
            version=self._v(materialization_version),
        )
        return self._json("GET", url, log_warning=log_warning)

    @check_version_compatibility(method_api_constraint=">=3")
    def query_view(
        self,
        view_name: str,
        filter_in_dict: dict | None = None,
        filter_out_dict: dict | None = None,
        filter_equal_dict: dict | None = None,
        filter_spatial_dict: dict | None = None,
        filter_regex_dict: dict | None = None,
        select_columns: list[str] | None = None,
        offset: int | None = None,
        limit: int | None = None,
        datastack_name: str | None = None,
        return_df: bool = True,
        split_positions: bool = False,
        materialization_version: int | None = None,
        metadata: bool = True,
        merge_reference: bool = True,
        desired_resolution: Iterable[float] | None = None,
        get_counts: bool = False,
        random_sample: int | None = None,
        *,
        filter_greater_dict: dict | None = None,
        filter_less_dict: dict | None = None,
        filter_greater_equal_dict: dict | None = None,
        filter_less_equal_dict: dict | None = None,
        on_limit: OnLimit = "partition",
        max_workers: int | None = None,
    ) -> pd.DataFrame | list[dict[str, Any]]:
        """Query a view of a version; arguments as in `query_table` (filters nested under the
        view name, no reference merge). A view without an ``id`` column cannot be partitioned:
        reaching the limit then raises `QueryLimitError`."""
        args = _QueryArgs.of(locals())
        self._check_inequality(args.filters)
        ds = self._ds(datastack_name)
        v = self._v(materialization_version)
        res = self._resolution_for(desired_resolution)
        body = self._simple_body(view_name, args.filters, select_columns, res)

        def has_id() -> bool:
            schema = self.get_view_schema(view_name, materialization_version=v, datastack_name=ds)
            return "id" in schema

        def view_resolution() -> list[float] | None:
            meta = self.get_view_metadata(view_name, materialization_version=v, datastack_name=ds)
            keys = ("voxel_resolution_x", "voxel_resolution_y", "voxel_resolution_z")
            return [meta[k] for k in keys] if all(k in meta for k in keys) else None

        return self._execute(
            args,
            self._url("view_query", datastack_name=ds, version=v, view_name=view_name),
            body,
            self._query_params(return_df, get_counts, random_sample),
            tables=[view_name],
            ds=ds,
            v=v,
            res=res,
            given_resolution=view_resolution,
            can_count=True,
            has_id=has_id,
            join_query=False,
            views=True,
        )

    def live_live_query(  # type: ignore[override]  # caveclient's V3 signature: filter_regex_dict is positional there
        self,
        table: str,
        timestamp: dt.datetime,
        joins: list | None = None,
        filter_in_dict: dict | None = None,
        filter_out_dict: dict | None = None,
        filter_equal_dict: dict | None = None,
        filter_spatial_dict: dict | None = None,
        filter_regex_dict: dict | None = None,
        select_columns: dict | None = None,
        offset: int | None = None,
        limit: int | None = None,
        datastack_name: str | None = None,
        split_positions: bool = False,
        metadata: bool = True,
        suffixes: dict | None = None,
        desired_resolution: Iterable[float] | None = None,
        allow_missing_lookups: bool = False,
        allow_invalid_root_ids: bool = False,
        random_sample: int | None = None,
        log_warning: bool = True,
        *,
        filter_greater_dict: dict | None = None,
        filter_less_dict: dict | None = None,
        filter_greater_equal_dict: dict | None = None,
        filter_less_equal_dict: dict | None = None,
        on_limit: OnLimit = "partition",
        max_workers: int | None = None,
    ) -> pd.DataFrame:
        """Server-side live query at ``timestamp`` (see `MaterializationClientV2.live_live_query`);
        API v3 adds ``filter_regex_dict`` and ``allow_invalid_root_ids``.

        Example:
            ```python
            import datetime
            df = client.materialize.live_live_query(
                "synapses", datetime.datetime.now(datetime.timezone.utc),
                filter_equal_dict={"synapses": {"post_pt_root_id": 864691135000000001}},
            )
            ```
        """
        # The V2 method holds the one implementation (it already guards the v3-only arguments
        # by ``api_version``); only the seed's positional order and defaults differ here, so
        # every argument is passed on by name.
        arguments = {name: value for name, value in locals().items() if name != "self"}
        return MaterializationClientV2.live_live_query(self, **arguments)


MaterializatonClientV2 = MaterializationClientV2
MaterializatonClientV3 = MaterializationClientV3

client_mapping: dict[int | str, type[MaterializationClientV2]] = {
    2: MaterializationClientV2,
    3: MaterializationClientV3,
    "latest": MaterializationClientV3,
}

SERVICE = Service(
    client_mapping,
    SERVER_KEY,
    _endpoints.materialization_common,
    _endpoints.materialization_api_versions,
    fallback_version=_endpoints.materialization_fallback_version,
)
"""The materialization engine as `MaterializationClient` connects to it."""
