"""One measurement of one workload with OUR clients (run in the project venv).

The harness (``python -m bench``) runs this file with ``.venv/bin/python``, once per
measurement, in a fresh process::

    .venv/bin/python bench/ours_driver.py SPEC.json

It mirrors ``bench/official_driver.py`` workload by workload (same setup, same timed call, same
measurement code) with ``prefect_neurodata.clients`` in place of the official clients, called
with their defaults. It prints one line ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import time
import traceback
from typing import Any

import numpy as np
import pandas as pd

SIDE = "ours"


# -- measurement (identical in both drivers) ------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", fh.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so setup does not count as workload memory."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(run: Any, setup: Any) -> dict[str, Any]:
    """Run ``setup()`` (untimed), then ``run(state)`` timed; peak RSS is taken over ``run``."""
    state = setup()
    gc.collect()
    base_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    started = time.perf_counter()
    result = run(state)
    seconds = time.perf_counter() - started
    peak_kb = _status_kb("VmHWM")
    rows, extra = result if isinstance(result, tuple) else (result, {})
    return {
        "ok": True,
        "seconds": seconds,
        "rows": rows,
        "peak_rss_mb": peak_kb / 1024,
        "base_rss_mb": base_kb / 1024,
        "work_rss_mb": max(0.0, (peak_kb - base_kb) / 1024),
        "peak_reset": reset,
        "extra": extra,
    }


# -- our clients ---------------------------------------------------------------------------


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


def _load_json(spec: dict[str, Any], name: str) -> Any:
    with open(os.path.join(spec["data_dir"], name), "rb") as fh:
        return json.loads(fh.read())


# -- workloads ----------------------------------------------------------------------------


def w_docdb_retrieve_all(spec: dict[str, Any]) -> dict[str, Any]:
    def run(_: Any) -> int:
        records = docdb_client(spec).retrieve_docdb_records()
        run.keep = records  # held until the peak is read
        return len(records)

    return measure(run, lambda: None)


def w_docdb_retrieve_filtered(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["params"]

    def run(_: Any) -> int:
        records = docdb_client(spec).retrieve_docdb_records(
            filter_query=params["filter"], projection=params["projection"]
        )
        run.keep = records
        return len(records)

    return measure(run, lambda: None)


def w_docdb_upsert(spec: dict[str, Any]) -> dict[str, Any]:
    def setup() -> list[dict[str, Any]]:
        return _load_json(spec, spec["params"]["records_file"])

    def run(records: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        client = docdb_client(spec, collection=spec["params"]["collection"])
        responses = client.upsert_list_of_docdb_records(records)  # raises if a chunk failed
        return len(records), {"requests": len(responses)}

    return measure(run, setup)


def w_docdb_filter_list(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["params"]

    def run(names: list[str]) -> int:
        records = docdb_client(spec).fetch_records_by_filter_list(
            "name", names, projection=params.get("projection")
        )
        run.keep = records
        return len(records)

    return measure(run, lambda: _load_json(spec, params["names_file"]))


def w_cave_query_all(spec: dict[str, Any]) -> dict[str, Any]:
    def run(_: Any) -> int:
        df = cave_client(spec).materialize.query_table(spec["params"]["table"])
        run.keep = df
        return len(df)

    return measure(run, lambda: None)


def w_cave_query_filtered(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["params"]

    def run(_: Any) -> int:
        df = cave_client(spec).materialize.query_table(
            params["table"], filter_in_dict=params["filter_in_dict"]
        )
        run.keep = df
        return len(df)

    return measure(run, lambda: None)


def w_cave_get_roots(spec: dict[str, Any]) -> dict[str, Any]:
    def setup() -> np.ndarray:
        return np.load(os.path.join(spec["data_dir"], spec["params"]["supervoxels_file"]))

    def run(svids: np.ndarray) -> int:
        roots = cave_client(spec).chunkedgraph.get_roots(svids)
        run.keep = roots
        return int(np.count_nonzero(roots))

    return measure(run, setup)


def annotation_frame(n: int, seed: int) -> pd.DataFrame:
    """``n`` bound_tag annotations (same generator in both drivers)."""
    rng = np.random.default_rng(seed)
    pos = rng.integers(1000, 200_000, size=(n, 3), dtype=np.int64)
    tags = np.array(["spine", "shaft", "soma", "axon"])[rng.integers(0, 4, size=n)]
    return pd.DataFrame(
        {
            "pt_position_x": pos[:, 0],
            "pt_position_y": pos[:, 1],
            "pt_position_z": pos[:, 2],
            "tag": tags.astype(object),
        }
    )


def w_cave_post_annotations(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["params"]
    table = params["table"]

    def setup() -> tuple[Any, pd.DataFrame]:
        client = cave_client(spec)
        client.annotation.create_table(
            table, "bound_tag", description="bench scratch table", voxel_resolution=[4, 4, 40]
        )
        df = annotation_frame(params["rows"], params["seed"])
        df["pt_position"] = list(df[["pt_position_x", "pt_position_y", "pt_position_z"]].values)
        return client, df[["pt_position", "tag"]]

    def run(state: tuple[Any, pd.DataFrame]) -> int:
        client, df = state
        # One call: the client batches by the server's 10,000-annotation limit itself.
        ids = client.annotation.post_annotation_df(table, df, position_columns=["pt_position"])
        return len(ids)

    return measure(run, setup)


WORKLOADS = {
    "docdb.retrieve_all": w_docdb_retrieve_all,
    "docdb.retrieve_filtered": w_docdb_retrieve_filtered,
    "docdb.upsert": w_docdb_upsert,
    "docdb.filter_list": w_docdb_filter_list,
    "docdb.filter_list_full": w_docdb_filter_list,
    "cave.query_all": w_cave_query_all,
    "cave.query_filtered": w_cave_query_filtered,
    "cave.get_roots": w_cave_get_roots,
    "cave.post_annotations": w_cave_post_annotations,
}


def main(argv: list[str]) -> int:
    with open(argv[1], "rb") as fh:
        spec = json.loads(fh.read())
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        if key in spec["env"]:
            os.environ[key] = spec["env"][key]
    try:
        out = WORKLOADS[spec["workload"]](spec)
    except Exception as exc:  # noqa: BLE001 - reported to the harness as a failed measurement
        out = {
            "ok": False,
            "error": f"{type(exc).__name__}: {str(exc)[:500]}",
            "trace": traceback.format_exc()[-3000:],
        }
    out["side"] = SIDE
    print("BENCH_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
