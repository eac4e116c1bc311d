"""Attribute-style query helpers: ``client.materialize.tables.<table>(col=value).query()``.

A small version of caveclient's table manager. Calling a table with column keyword arguments
builds filters: a scalar is an equality, a list/array an ``IN``, a dict of operators
(``{">": 5, "<=": 9}``) inequalities, a string under ``{"regex": "..."}`` a regex filter, and a
``[[x0, y0, z0], [x1, y1, z1]]`` box on a ``*_position`` column a spatial filter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

_OPS = {
    ">": "filter_greater_dict",
    "<": "filter_less_dict",
    ">=": "filter_greater_equal_dict",
    "<=": "filter_less_equal_dict",
    "regex": "filter_regex_dict",
    "in": "filter_in_dict",
    "not in": "filter_out_dict",
    "==": "filter_equal_dict",
}


def _filters(kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for col, value in kwargs.items():
        if value is None:
            continue
        if isinstance(value, dict):
            for op, v in value.items():
                if op not in _OPS:
                    raise ValueError(f"{col}: unknown operator {op!r}; use one of {list(_OPS)}")
                out.setdefault(_OPS[op], {})[col] = v
        elif col.endswith("_position") and np.shape(value) == (2, 3):
            out.setdefault("filter_spatial_dict", {})[col] = value
        elif isinstance(value, (list, tuple, set, np.ndarray)) or hasattr(value, "tolist"):
            out.setdefault("filter_in_dict", {})[col] = list(np.asarray(list(value)).tolist())
        else:
            out.setdefault("filter_equal_dict", {})[col] = value
    return out


class TableQuery:
    """Filters on one table or view, ready to run with `query` (or `live_query`)."""

    def __init__(self, client: Any, name: str, is_view: bool = False, **filters: Any) -> None:
        self._client = client
        self.name = name
        self.is_view = is_view
        self.filter_kwargs = _filters(filters)

    def __call__(self, **filters: Any) -> TableQuery:
        return TableQuery(self._client, self.name, self.is_view, **filters)

    def __repr__(self) -> str:
        return f"TableQuery({self.name!r}, filters={self.filter_kwargs!r})"

    def query(self, **kwargs: Any) -> Any:
        """Run the query; keyword arguments go to ``query_table``/``query_view``."""
        if self.is_view:
            return self._client.query_view(self.name, **self.filter_kwargs, **kwargs)
        return self._client.query_table(self.name, **self.filter_kwargs, **kwargs)

    def live_query(self, timestamp: Any, **kwargs: Any) -> Any:
        """Run the query live at ``timestamp`` (tables only)."""
        if self.is_view:
            raise ValueError("views cannot be queried live")
        return self._client.live_query(self.name, timestamp, **self.filter_kwargs, **kwargs)


class TableManager:
    """The tables of the client's version, as attributes (names fetched on first use)."""

    _kind = "table"

    def __init__(self, client: Any) -> None:
        self._client = client
        self._names: list[str] | None = None

    def _list(self) -> list[str]:
        return list(self._client.get_tables())

    @property
    def table_names(self) -> list[str]:
        """Names available."""
        if self._names is None:
            self._names = sorted(self._list())
        return self._names

    def __getattr__(self, name: str) -> TableQuery:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self.table_names:
            raise AttributeError(f"no {self._kind} named {name!r}")
        return TableQuery(self._client, name, is_view=self._kind == "view")

    def __getitem__(self, name: str) -> TableQuery:
        return self.__getattr__(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.table_names)

    def __len__(self) -> int:
        return len(self.table_names)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.table_names))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.table_names!r})"

    def find(self, pattern: str) -> list[str]:
        """Names containing ``pattern``."""
        return [n for n in self.table_names if pattern in n]


class ViewManager(TableManager):
    """The views of the client's version, as attributes."""

    _kind = "view"

    def _list(self) -> list[str]:
        return list(self._client.get_views())
