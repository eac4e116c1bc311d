"""``client.materialize.tables`` / ``.views``: one query class per table or view, as caveclient.

caveclient 5.25's table interface, rebuilt from its public behaviour. Each table of a
materialization version becomes an attribute of `TableManager`: a class whose keyword arguments
are the table's filterable columns, generated from the table's annotation schema:

* ``<point>_root_id`` for every bound spatial point, and ``id`` plus every integer, float,
  boolean and string column of the schema;
* ``<point>_position_bbox`` for every spatial point (a ``[[x0, y0, z0], [x1, y1, z1]]`` box).

A scalar is an equality filter, a list (array, tuple, set) an ``IN`` filter, and a dict with
``"<"``, ``">"``, ``"<="``, ``">="`` keys inequalities on numeric columns (as newer caveclient
releases accept). An instance holds the request arguments in ``filter_kwargs_live`` (filters
nested per table, for `live_live_query`), ``filter_kwargs_mat`` (for `query_table` /
`query_view`: nested only when two tables are involved) and ``joins_kwargs``.

A table that references another (``reference_table`` in its metadata) is joined to its target:
the target's columns keep their names, the reference table's colliding ones get ``_ref``
(``id_ref``), and `query` runs `join_query` on ``[[table, "target_id"], [target, "id"]]``.

Differences from 5.25, each fixing a request the server would refuse: every renamed column of a
filter is sent under its server name (5.25 renames only the last one per table, and never the
``_ref`` boxes); the two tables of a join are listed target first (5.25 iterates a set, so the
order of its JSON keys changes from run to run).

Example:
    >>> from prefect_neurodata.clients.cave import CAVEclient  # doctest: +SKIP
    >>> client = CAVEclient("minnie65_public")  # doctest: +SKIP
    >>> query = client.materialize.tables.allen_column_mtypes_v2(
    ...     pt_root_id=[864691135000000001], cell_type="L2a"
    ... )  # doctest: +SKIP
    >>> query.joins_kwargs  # doctest: +SKIP
    {'joins': [['allen_column_mtypes_v2', 'target_id', 'nucleus_detection_v0', 'id']]}
    >>> df = query.query(limit=10)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

# JSON-schema column types that can be filtered on (caveclient's lists).
ALLOW_COLUMN_TYPES = ["integer", "boolean", "string", "float"]
NUMERIC_COLUMN_TYPES = ["integer", "float"]
SPATIAL_POINT_TYPES = ["SpatialPoint"]
BOUND_POINT_REF = "#/definitions/BoundSpatialPoint"
UNBOUND_POINT_REF = "#/definitions/SpatialPoint"
# Suffixes of colliding column names: the target table's keep theirs, the reference table's
# get "_ref" (also the suffixes the join query asks the server for).
TARGET_SUFFIX = ""
REFERENCE_SUFFIX = "_ref"
BBOX_SUFFIX = "_bbox"
# Inequality keys of a dict-valued filter and the query argument each one fills.
INEQUALITY_FILTERS = {
    ">": "filter_greater_dict",
    "<": "filter_less_dict",
    ">=": "filter_greater_equal_dict",
    "<=": "filter_less_equal_dict",
}
# Order of the filter arguments in filter_kwargs_live / filter_kwargs_mat.
FILTER_ARGUMENTS = (
    "filter_equal_dict",
    "filter_in_dict",
    "filter_spatial_dict",
    *INEQUALITY_FILTERS.values(),
)
EXPERIMENTAL = (
    "The `client.materialize.{}` interface is experimental and might experience breaking "
    "changes before the feature is stabilized."
)


class InvalidInequalityException(ValueError):
    """An inequality (``{">": v}``) on a column that is not numeric, or an unknown operator."""


@dataclasses.dataclass(frozen=True)
class Column:
    """One keyword argument of a query class and the server column it filters.

    Attributes:
        name: The keyword argument (``pt_root_id``, ``id_ref``, ``pt_position_bbox``).
        table: The table the column belongs to.
        column: The column's name on the server (``pt_root_id``, ``id``, ``pt_position``).
        bbox: True for a spatial box filter.
        numeric: True when inequalities are allowed.
    """

    name: str
    table: str
    column: str
    bbox: bool = False
    numeric: bool = False


@dataclasses.dataclass(frozen=True)
class SchemaColumns:
    """The filterable parts of one annotation schema.

    Attributes:
        points: Bound spatial points (each has ``<pt>_root_id`` and ``<pt>_position``).
        values: ``id`` and every column of an allowed type, in schema order.
        numeric: The numeric ones among ``values``.
        unbound_points: Spatial points without segmentation.
    """

    points: list[str]
    values: list[str]
    numeric: frozenset[str]
    unbound_points: list[str]


def schema_columns(definition: Mapping[str, Any]) -> SchemaColumns:
    """The filterable columns of a JSON schema from the schema service.

    Args:
        definition: ``schema_definition(name)``: ``{"$ref": "#/definitions/X", "definitions":
            {"X": {"properties": {...}}, ...}}``.

    Example:
        >>> cols = schema_columns({"$ref": "#/definitions/S", "definitions": {"S": {
        ...     "properties": {"pt": {"$ref": "#/definitions/BoundSpatialPoint"},
        ...     "size": {"type": "float"}, "note": {"type": "string"},
        ...     "created": {"type": "string", "format": "date-time"}}}}})
        >>> cols.points, cols.values, sorted(cols.numeric)
        (['pt'], ['id', 'size', 'note'], ['id', 'size'])
    """
    name = definition["$ref"].split("/")[-1]
    points: list[str] = []
    unbound: list[str] = []
    values = ["id"]
    numeric = {"id"}
    for column, spec in definition["definitions"][name]["properties"].items():
        ref = spec.get("$ref", "")
        if ref == BOUND_POINT_REF:
            points.append(column)
        elif ref == UNBOUND_POINT_REF:
            unbound.append(column)
        else:
            # A column's type is its format when it has one (date-times are strings otherwise).
            kind = spec.get("format", spec.get("type"))
            if kind in ALLOW_COLUMN_TYPES:
                values.append(column)
                if kind in NUMERIC_COLUMN_TYPES:
                    numeric.add(column)
    return SchemaColumns(points, values, frozenset(numeric), unbound)


def _combine(
    target: str, target_names: list[str], ref: str | None, ref_names: list[str]
) -> list[tuple[str, str, str]]:
    """``(keyword, table, column)`` of both tables' names, colliding ones suffixed."""
    out = []
    for table, names, others, suffix in (
        (target, target_names, ref_names, TARGET_SUFFIX),
        (ref, ref_names, target_names, REFERENCE_SUFFIX),
    ):
        for name in names:
            out.append((f"{name}{suffix}" if name in others else name, str(table), name))
    return out


def table_columns(
    target: str,
    target_schema: SchemaColumns,
    reference: str | None = None,
    reference_schema: SchemaColumns | None = None,
) -> list[Column]:
    """The keyword arguments of a table's query class, in caveclient's order.

    Root ids of bound points first, then values, then position boxes; for a reference table,
    ``target`` is the table it references and ``reference`` the table itself.

    Example:
        >>> nuc = SchemaColumns(["pt"], ["id", "volume"], frozenset({"id", "volume"}), [])
        >>> ref = SchemaColumns([], ["id", "cell_type"], frozenset({"id"}), [])
        >>> [c.name for c in table_columns("nucleus", nuc, "mtypes", ref)]
        ['pt_root_id', 'id', 'volume', 'id_ref', 'cell_type', 'pt_position_bbox']
    """
    other = reference_schema or SchemaColumns([], [], frozenset(), [])
    points = _combine(target, target_schema.points, reference, other.points)
    values = _combine(target, target_schema.values, reference, other.values)
    unbound = _combine(target, target_schema.unbound_points, reference, other.unbound_points)
    schema_of = {target: target_schema, str(reference): other}
    columns = [Column(f"{kw}_root_id", t, f"{col}_root_id") for kw, t, col in points]
    columns += [Column(kw, t, col, numeric=col in schema_of[t].numeric) for kw, t, col in values]
    columns += [
        Column(f"{kw}_position{BBOX_SUFFIX}", t, f"{col}_position", bbox=True)
        for kw, t, col in points + unbound
    ]
    return columns


def view_columns(view: str, schema: Mapping[str, Mapping[str, Any]]) -> list[Column]:
    """The keyword arguments of a view's query class, from ``get_view_schemas()[view]``.

    Example:
        >>> [c.name for c in view_columns("v", {"id": {"type": "integer"},
        ...     "pt_position": {"type": "SpatialPoint"}})]
        ['id', 'pt_position_position_bbox']
    """
    values = [c for c, spec in schema.items() if spec["type"] in ALLOW_COLUMN_TYPES]
    points = [c for c, spec in schema.items() if spec["type"] in SPATIAL_POINT_TYPES]
    columns = [
        Column(c, view, c, numeric=schema[c]["type"] in NUMERIC_COLUMN_TYPES) for c in values
    ]
    # caveclient names a view's point box <column>_position_bbox (even for "pt_position").
    return columns + [
        Column(f"{c}_position{BBOX_SUFFIX}", view, f"{c}_position", bbox=True) for c in points
    ]


def _is_list_like(value: Any) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")


def _as_list(value: Any) -> Any:
    """Lists for tuples and sets (JSON has no other sequence); arrays stay for the client."""
    return list(value) if isinstance(value, (tuple, set, frozenset)) else value


def build_filters(columns: Sequence[Column], values: Mapping[str, Any]) -> dict[str, Any]:
    """``{filter argument: {table: {server column: value}}}`` for the given keyword values.

    Empty lists filter nothing (as in caveclient); tables and arguments without a filter are
    left out.

    Raises:
        InvalidInequalityException: an inequality on a non-numeric column or an unknown key.

    Example:
        >>> cols = [Column("pt_root_id", "t", "pt_root_id"), Column("size", "t", "size",
        ...     numeric=True)]
        >>> build_filters(cols, {"pt_root_id": [1, 2], "size": {">": 5}})
        {'filter_in_dict': {'t': {'pt_root_id': [1, 2]}}, 'filter_greater_dict': {'t': {'size': 5}}}
    """
    found: dict[str, dict[str, dict[str, Any]]] = {arg: {} for arg in FILTER_ARGUMENTS}

    def put(argument: str, column: Column, value: Any) -> None:
        found[argument].setdefault(column.table, {})[column.column] = value

    for column in columns:
        value = values.get(column.name)
        if value is None:
            continue
        if column.bbox:
            put("filter_spatial_dict", column, _as_list(value))
        elif isinstance(value, Mapping):
            unknown = [k for k in value if k not in INEQUALITY_FILTERS]
            if unknown or not column.numeric:
                raise InvalidInequalityException(
                    f"{column.name}={dict(value)!r}: inequalities need a numeric column and "
                    f"keys among {list(INEQUALITY_FILTERS)}"
                )
            for op, bound in value.items():
                put(INEQUALITY_FILTERS[op], column, bound)
        elif _is_list_like(value):
            if len(value):
                put("filter_in_dict", column, _as_list(value))
        else:
            put("filter_equal_dict", column, value)
    return {arg: tables for arg, tables in found.items() if tables}


def _passed(arguments: Mapping[str, Any], *drop: str) -> dict[str, Any]:
    """A method's arguments (its ``locals()`` first thing) without ``self`` and ``drop``, to pass
    on by name to the materialization client method of the same argument names."""
    return {k: v for k, v in arguments.items() if k not in ("self", *drop)}


class QueryFilter:
    """Base of the generated per-table and per-view classes (one dataclass field per keyword).

    Class attributes, set by the manager: ``fields`` (keyword names), ``numeric_fields``,
    ``spatial_fields``, and the private ``_columns``, ``_base_table``, ``_reference_table``,
    ``_client``.
    """

    _columns: ClassVar[tuple[Column, ...]] = ()
    _base_table: ClassVar[str] = ""
    _reference_table: ClassVar[str | None] = None
    _client: ClassVar[Any] = None
    _kind: ClassVar[str] = "tables"
    fields: ClassVar[list[str]] = []
    numeric_fields: ClassVar[list[str]] = []
    spatial_fields: ClassVar[list[str]] = []

    filter_kwargs_live: dict[str, Any]
    filter_kwargs_mat: dict[str, Any]
    joins_kwargs: dict[str, Any]
    basic_join: list[list[str]] | None

    def __post_init__(self) -> None:
        values = {c.name: getattr(self, c.name) for c in self._columns}
        self.filter_kwargs_live = build_filters(self._columns, values)
        if self._reference_table is None:
            # One table: query_table / query_view take the filters un-nested.
            self.filter_kwargs_mat = {
                arg: tables[self._base_table] for arg, tables in self.filter_kwargs_live.items()
            }
            self.joins_kwargs = {"joins": None}
            self.basic_join = None
        else:
            self.filter_kwargs_mat = self.filter_kwargs_live
            self.joins_kwargs = {
                "joins": [[self._reference_table, "target_id", self._base_table, "id"]]
            }
            self.basic_join = [[self._reference_table, "target_id"], [self._base_table, "id"]]

    def _suffixes(self) -> dict[str, str]:
        return {str(self._reference_table): REFERENCE_SUFFIX, self._base_table: TARGET_SUFFIX}


class TableQueryFilter(QueryFilter):
    """Query methods of a table's class (`query`, `live_query`, `get_all`, `get_all_live`)."""

    def query(
        self,
        select_columns: list[str] | dict[str, list[str]] | None = None,
        offset: int | None = None,
        limit: int | None = None,
        split_positions: bool = False,
        materialization_version: int | None = None,
        timestamp: dt.datetime | None = None,
        metadata: bool = True,
        desired_resolution: Sequence[float] | None = None,
        get_counts: bool = False,
        log_warning: bool = True,
        random_sample: int | None = None,
    ) -> Any:
        """Query the table (joined to its target when it references one).

        With a ``timestamp`` a reference table is queried live (`live_query`); a plain table
        through `query_table` (root ids looked up at the timestamp). Arguments are
        `query_table`'s; ``log_warning`` and ``random_sample`` (N random rows) as in newer
        caveclient.
        """
        args = _passed(locals())
        if self._reference_table is None:
            return self._client.query_table(self._base_table, **args, **self.filter_kwargs_mat)
        if timestamp is not None:
            # as 5.25: a live join takes neither columns, a version nor counts
            live = _passed(args, "select_columns", "materialization_version", "get_counts")
            return self.live_query(**live)
        logger.warning(EXPERIMENTAL.format(self._kind))
        return self._client.join_query(
            tables=self.basic_join,
            suffixes=self._suffixes(),
            **_passed(args, "timestamp", "get_counts"),
            **self.filter_kwargs_mat,
        )

    def live_query(
        self,
        timestamp: dt.datetime,
        offset: int | None = None,
        limit: int | None = None,
        split_positions: bool = False,
        metadata: bool = True,
        desired_resolution: Sequence[float] | None = None,
        allow_missing_lookups: bool = False,
        log_warning: bool = True,
        random_sample: int | None = None,
    ) -> Any:
        """Query the table at ``timestamp`` on the server (`live_live_query`), joined to its
        target when it references one."""
        args = _passed(locals())
        logger.warning(EXPERIMENTAL.format(self._kind))
        joins: dict[str, Any] = {}
        if self._reference_table is not None:
            joins = {"suffixes": self._suffixes(), **self.joins_kwargs}
        return self._client.live_live_query(
            table=self._reference_table or self._base_table,
            **args,
            **self.filter_kwargs_live,
            **joins,
        )

    @classmethod
    def get_all(cls, **kwargs: Any) -> Any:
        """The whole table, unfiltered: ``tables.<table>.get_all(limit=...)`` (as newer
        caveclient); keyword arguments are `query`'s."""
        return cls().query(**kwargs)

    @classmethod
    def get_all_live(cls, timestamp: dt.datetime, **kwargs: Any) -> Any:
        """The whole table at ``timestamp`` (`live_query` without filters)."""
        return cls().live_query(timestamp, **kwargs)


class ViewQueryFilter(QueryFilter):
    """Query method of a view's class."""

    _kind = "views"

    def query(
        self,
        select_columns: list[str] | None = None,
        offset: int | None = None,
        limit: int | None = None,
        split_positions: bool = False,
        materialization_version: int | None = None,
        metadata: bool = True,
        desired_resolution: Sequence[float] | None = None,
        get_counts: bool = False,
        random_sample: int | None = None,
    ) -> Any:
        """Query the view (`query_view`); arguments as there."""
        args = _passed(locals())
        logger.warning(EXPERIMENTAL.format(self._kind))
        return self._client.query_view(self._base_table, **args, **self.filter_kwargs_mat)

    @classmethod
    def get_all(cls, **kwargs: Any) -> Any:
        """The whole view, unfiltered; keyword arguments are `query`'s."""
        return cls().query(**kwargs)


def make_query_class(
    name: str,
    columns: Sequence[Column],
    base: type[QueryFilter],
    client: Any,
    target: str,
    reference: str | None = None,
    description: str | None = None,
) -> type[QueryFilter]:
    """A dataclass named after the table whose fields are ``columns`` (all default None)."""
    namespace = {
        "_columns": tuple(columns),
        "_base_table": target,
        "_reference_table": reference,
        "_client": client,
        "fields": [c.name for c in columns],
        "numeric_fields": [c.name for c in columns if c.numeric],
        "spatial_fields": [c.name for c in columns if c.bbox],
        "__doc__": description,
    }
    spec = [(c.name, Any, dataclasses.field(default=None)) for c in columns]
    return dataclasses.make_dataclass(name, spec, bases=(base,), namespace=namespace)


def _table_name(meta: Mapping[str, Any]) -> str:
    return str(meta.get("annotation_table") or meta["table_name"])


def _schema_name(meta: Mapping[str, Any]) -> str:
    return str(meta.get("schema") or meta.get("schema_type"))


class _Manager:
    """Names as attributes, ``in``, ``[]``, ``len`` and a list-like repr (caveclient's)."""

    _classes: dict[str, type[QueryFilter]]

    def __getattr__(self, name: str) -> type[QueryFilter]:
        classes = self.__dict__.get("_classes", {})
        if name in classes:
            return classes[name]
        raise AttributeError(f"{type(self).__name__} has no table or view named {name!r}")

    def __getitem__(self, key: str) -> type[QueryFilter]:
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.table_names)

    def __len__(self) -> int:
        return len(self._classes)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._classes))

    def __repr__(self) -> str:
        return str(self.table_names)

    @property
    def table_names(self) -> list[str]:
        """The names, sorted."""
        return sorted(self._classes)

    def find(self, pattern: str) -> list[str]:
        """Names containing ``pattern``."""
        return [n for n in self.table_names if pattern in n]

    def __getstate__(self) -> dict[str, Any]:
        # Generated classes cannot be pickled by reference: keep the inputs, rebuild on load.
        return {k: v for k, v in self.__dict__.items() if k != "_classes"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build()

    def _build(self) -> None:
        raise NotImplementedError


class TableManager(_Manager):
    """The tables of a version as query classes: ``client.materialize.tables.<table>``.

    Args:
        client: The materialization client the queries run on.
        metadata: ``get_tables_metadata()`` (a list of table metadata dicts).
        schema: ``{schema name: definition}`` (``schema.schema_definition_all()``); schemas
            missing from it are fetched with ``schema_definition``.
        schema_definition: Fetches one schema definition by name.

    Example:
        >>> tables = client.materialize.tables  # doctest: +SKIP
        >>> "synapses" in tables, tables.synapses.fields[:2]  # doctest: +SKIP
        (True, ['pre_pt_root_id', 'post_pt_root_id'])
    """

    def __init__(
        self,
        client: Any,
        metadata: Sequence[Mapping[str, Any]],
        schema: Mapping[str, Any] | None,
        schema_definition: Callable[[str], Any],
    ) -> None:
        self._client = client
        self._metadata = {_table_name(m): dict(m) for m in metadata}
        self._schema = dict(schema or {})
        self._schema_definition = schema_definition
        self._build()

    def _schema_columns(self, name: str) -> SchemaColumns:
        if name not in self._schema:
            self._schema[name] = self._schema_definition(name)
        return schema_columns(self._schema[name])

    def _build(self) -> None:
        self._classes = {}
        for table in sorted(self._metadata):
            meta = self._metadata[table]
            reference = meta.get("reference_table") or None
            if reference is None:
                columns = table_columns(table, self._schema_columns(_schema_name(meta)))
                target = table
            else:
                target_schema = _schema_name(self._metadata.get(reference) or {})
                if target_schema == "None":
                    target_schema = _schema_name(self._client.get_table_metadata(reference))
                columns = table_columns(
                    reference,
                    self._schema_columns(target_schema),
                    table,
                    # target_id stays a keyword, as in 5.25 (its schema cache ignores the omit).
                    self._schema_columns(_schema_name(meta)),
                )
                target = reference
            self._classes[table] = make_query_class(
                table,
                columns,
                TableQueryFilter,
                self._client,
                target,
                reference=table if reference else None,
                description=meta.get("description"),
            )


class ViewManager(_Manager):
    """The views of a version as query classes: ``client.materialize.views.<view>``.

    Args:
        client: The materialization client the queries run on.
        view_metadata: ``get_views()`` (``{view: metadata}``).
        view_schema: ``get_view_schemas()`` (``{view: {column: {"type": ...}}}``).
    """

    def __init__(
        self,
        client: Any,
        view_metadata: Mapping[str, Mapping[str, Any]],
        view_schema: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self._client = client
        self._view_metadata = dict(view_metadata or {})
        self._view_schema = dict(view_schema or {})
        self._build()

    def _build(self) -> None:
        self._classes = {
            view: make_query_class(
                view,
                view_columns(view, self._view_schema.get(view, {})),
                ViewQueryFilter,
                self._client,
                view,
                description=self._view_metadata[view].get("description", ""),
            )
            for view in sorted(self._view_metadata)
        }


def fetch_both(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """Run two independent metadata GETs at once (as caveclient does for tables and views)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        return a.result(), b.result()
