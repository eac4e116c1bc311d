"""One measurement of one workload with OUR clients (run in the project venv).

The harness (``python -m bench``) runs this file with ``.venv/bin/python``, once per
measurement, in a fresh process::

    .venv/bin/python bench/ours_driver.py SPEC.json

It mirrors ``bench/official_driver.py``: the workloads and the measurement code are shared
(``bench/_driver_common.py``); this file supplies ``prefect_neurodata.clients``, called with
their defaults. ``requests`` is imported up front, as ``official_driver.py`` imports it for its
session, so that neither side's timed call includes it. It prints one line
``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd
import requests  # noqa: F401 - imported before the timed call, as official_driver.py does
from _driver_common import Clients, main


def docdb_client(spec: dict[str, Any], collection: str = "data_assets") -> Any:
    from prefect_neurodata.clients.aind.document_db import MetadataDbClient

    host = spec["env"]["NEURODATA_DOCDB_HOST"]
    return MetadataDbClient(host=host, collection=collection, version="v1")


def cave_client(spec: dict[str, Any]) -> Any:
    from prefect_neurodata.clients.cave import CAVEclient

    env = spec["env"]
    return CAVEclient(
        env["NEURODATA_CAVE_DATASTACK"],
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        auth_token=env["NEURODATA_CAVE_TOKEN"],
        write_server_cache=False,
    )


def upsert(client: Any, records: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    responses = client.upsert_list_of_docdb_records(records)  # raises if a chunk failed
    return len(records), {"requests": len(responses)}


def post_annotations(client: Any, table: str, df: pd.DataFrame, params: dict[str, Any]) -> int:
    # One call: the client batches by the server's 10,000-annotation limit itself.
    ids = client.annotation.post_annotation_df(table, df, position_columns=["pt_position"])
    return len(ids)


if __name__ == "__main__":
    sys.exit(main(sys.argv, "ours", Clients(docdb_client, cave_client, upsert, post_annotations)))
