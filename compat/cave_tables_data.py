"""CAVE answers and table-interface calls shared by `make compat` and our unit tests.

`answer` plays every server a ``CAVEclient`` talks to when it builds ``materialize.tables`` /
``.views`` and queries through them (info, materialization, schema services), from the data
below (caveclient 5.25's own test data, trimmed); `SCENARIOS` are the calls. They run on
caveclient 5.25 in ``compat/cave_wire_check.py`` and on ours there and in
``tests/unit/test_cave_tables.py``, so both compare the same requests. Needs only the standard
library, pandas and pyarrow.

Example:
    >>> sorted(SCENARIOS)[:2]
    ['join', 'join_at_timestamp']
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa

GLOBAL = "https://global.example.org"
LOCAL = "https://local.example.org"
DS = "test_stack"
MAT = f"{LOCAL}/materialize/api/v3/datastack/{DS}"
ROOT = 864691135000000001
NOW = dt.datetime(2024, 6, 5, 10, 10, 1, tzinfo=dt.timezone.utc)

INFO = {
    "aligned_volume": {"name": "test_volume", "id": 1, "description": "test"},
    "synapse_table": "synapses",
    "local_server": LOCAL,
    "segmentation_source": f"graphene://{LOCAL}/segmentation/table/test_v1",
    "soma_table": "nucleus_detection_v0",
    "viewer_resolution_x": 4.0,
    "viewer_resolution_y": 4.0,
    "viewer_resolution_z": 40,
}
RESOLUTION = {"voxel_resolution_x": 4.0, "voxel_resolution_y": 4.0, "voxel_resolution_z": 40.0}
# get_tables_metadata as the server answers it (caveclient 5.25's own test data, trimmed)
TABLES_METADATA = [
    {
        "table_name": "allen_column_mtypes_v2",
        "schema": "cell_type_reference",
        "schema_type": "cell_type_reference",
        "description": "M-types of the column.",
        "reference_table": "nucleus_detection_v0",
        "valid": True,
        **RESOLUTION,
    },
    {
        "table_name": "nucleus_detection_v0__minnie3_v1",
        "annotation_table": "nucleus_detection_v0",
        "schema": "nucleus_detection",
        "schema_type": "nucleus_detection",
        "description": "Nucleus detections.",
        "reference_table": None,
        "valid": True,
        **RESOLUTION,
    },
]
POINT = {"$ref": "#/definitions/SpatialPoint", "type": "object"}
SCHEMAS = {
    "cell_type_reference": {
        "$ref": "#/definitions/CellTypeReference",
        "definitions": {
            "CellTypeReference": {
                "properties": {
                    "cell_type": {"type": "string"},
                    "classification_system": {"type": "string"},
                    "target_id": {"type": "integer"},
                    "valid": {"type": ["boolean", "null"]},
                }
            }
        },
    },
    "nucleus_detection": {
        "$ref": "#/definitions/NucleusDetection",
        "definitions": {
            "NucleusDetection": {
                "properties": {
                    "bb_end": POINT,
                    "bb_start": POINT,
                    "pt": {"$ref": "#/definitions/BoundSpatialPoint", "type": "object"},
                    "valid": {"type": ["boolean", "null"]},
                    "volume": {"type": "number", "format": "float"},
                }
            }
        },
    },
}
VIEWS = {"single_neurons": {"id": 5, "description": "Single neurons.", **RESOLUTION}}
VIEW_SCHEMAS = {
    "single_neurons": {
        "id": {"type": "integer"},
        "pt_root_id": {"type": "integer"},
        "pt_position": {"type": "SpatialPoint"},
        "cell_type": {"type": "string"},
    }
}


def arrow_body(df: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


ROWS = pd.DataFrame({"id": pd.array([1, 2], dtype="Int64"), "valid": [True, True]})


def answer(request: Any) -> tuple[int, dict[str, str], Any]:
    """The servers' answers, by path (unknown paths are a 404 the test would see)."""
    path = urlsplit(request.url).path

    def ok(value: Any) -> tuple[int, dict[str, str], str]:
        return 200, {"Content-Type": "application/json"}, json.dumps(value)

    table_meta = re.search(r"/version/1/table/([^/]+)/metadata$", path)
    if path.endswith(f"/datastack/full/{DS}"):
        return ok(INFO)
    if path.endswith(("/segmentation/api/version", "/materialize/version")):
        return ok("5.26.4")
    if path.endswith(("/api/versions", "/schema/versions")):
        return ok([1, 2, 3])
    if path.endswith("/versions"):
        return ok([1])
    if path.endswith("/version/1/tables/metadata"):
        return ok(TABLES_METADATA)
    if path.endswith("/schema/api/v2/types_all"):
        return ok(SCHEMAS)
    if path.endswith("/version/1/views"):
        return ok(VIEWS)
    if path.endswith("/version/1/views/schemas"):
        return ok(VIEW_SCHEMAS)
    if path.endswith("/views/single_neurons/metadata"):
        return ok(VIEWS["single_neurons"])
    if path.endswith("/views/single_neurons/schema"):
        return ok(VIEW_SCHEMAS["single_neurons"])
    if table_meta:
        for meta in TABLES_METADATA:
            if table_meta.group(1) in (meta["table_name"], meta.get("annotation_table")):
                return ok(meta)
    if request.method == "POST":
        return 200, {"Content-Type": "data.arrow"}, arrow_body(ROWS)
    return 404, {"Content-Type": "application/json"}, json.dumps({"message": path})


# Each call through the table interface, by name (a client built with `answer` behind it).
SCENARIOS: dict[str, Callable[[Any], Any]] = {
    "plain": lambda c: c.materialize.tables.nucleus_detection_v0(
        pt_root_id=[ROOT, ROOT + 1], volume=12.5, pt_position_bbox=[[0, 0, 0], [100, 100, 100]]
    ).query(limit=10),
    "options": lambda c: c.materialize.tables.nucleus_detection_v0(id=[1, 2]).query(
        split_positions=True,
        desired_resolution=[1, 1, 1],
        select_columns=["id", "pt_root_id"],
        offset=2,
    ),
    "join": lambda c: c.materialize.tables.allen_column_mtypes_v2(
        pt_root_id=[ROOT], cell_type="L2a", target_id=5
    ).query(),
    "join_live": lambda c: c.materialize.tables.allen_column_mtypes_v2(
        pt_root_id=[ROOT], cell_type="L2a"
    ).live_query(NOW),
    "join_at_timestamp": lambda c: c.materialize.tables.allen_column_mtypes_v2(
        pt_root_id=[ROOT], cell_type="L2a"
    ).query(timestamp=NOW),
    "plain_live": lambda c: c.materialize.tables.nucleus_detection_v0(id=7).live_query(
        NOW, limit=5
    ),
    "view": lambda c: c.materialize.views.single_neurons(pt_root_id=[ROOT, 2]).query(
        limit=3, metadata=False
    ),
}
