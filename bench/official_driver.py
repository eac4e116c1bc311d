"""One measurement of one workload with the OFFICIAL clients (run in ``bench/.official-venv``).

The harness (``python -m bench``) runs this file with the official venv's interpreter, once per
measurement, in a fresh process::

    bench/.official-venv/bin/python bench/official_driver.py SPEC.json

It imports only the official clients (``aind-data-access-api`` 1.10.0, ``caveclient`` 5.25.0),
the standard library, numpy and pandas; it mirrors ``bench/ours_driver.py`` workload by
workload so the two can be read side by side. It prints one line ``BENCH_RESULT {json}``.

The only wiring the official clients need against the loopback sandbox:

* ``aind_data_access_api`` hard-codes ``https://`` in every URL (reference 1.1). The client is
  given, through its public ``session=`` argument, a ``requests.Session`` whose ``https://``
  transport adapter rewrites the scheme of the outgoing URL to ``http://`` right before the
  socket is opened (`PlainHttpAdapter`). Nothing else is touched: the client builds, signs
  (SigV4 covers host, path, query and body, not the scheme), sends and decodes exactly as it
  does in production, with its default ``Session`` settings (no retries, no timeout).
* ``caveclient`` accepts ``http://`` server addresses as they are; it gets the sandbox token
  through ``auth_token=`` and ``write_server_cache=False`` (so ``~/.cloudvolume`` is left alone).
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
import requests
from requests.adapters import HTTPAdapter

SIDE = "official"


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


# -- official client wiring ---------------------------------------------------------------


class PlainHttpAdapter(HTTPAdapter):
    """Transport adapter that sends an ``https://`` request over plain ``http://``.

    Only the scheme of ``request.url`` is changed, just before `HTTPAdapter.send` opens the
    connection; headers (including the SigV4 ``Authorization`` computed over host and path),
    body, and the response handling are the official client's own.
    """

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if request.url and request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, *args, **kwargs)


def docdb_client(spec: dict[str, Any], collection: str = "data_assets") -> Any:
    from aind_data_access_api.document_db import MetadataDbClient

    session = requests.Session()
    session.mount("https://", PlainHttpAdapter())
    host = spec["env"]["NEURODATA_DOCDB_HOST"].split("://", 1)[-1]
    return MetadataDbClient(host=host, collection=collection, version="v1", session=session)


def cave_client(spec: dict[str, Any]) -> Any:
    from caveclient import CAVEclient

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
        responses = client.upsert_list_of_docdb_records(records)
        # The official client does not raise on a failed chunk: check every response.
        bad = [r.status_code for r in responses if r.status_code >= 300]
        if bad:
            raise RuntimeError(f"{len(bad)} of {len(responses)} bulk_write chunks failed: {bad}")
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

    def run(state: tuple[Any, pd.DataFrame]) -> tuple[int, dict[str, Any]]:
        client, df = state
        # The server refuses more than 10,000 annotations per request and the official
        # client sends one request per call, so a user loops over chunks of that size.
        ids: list[int] = []
        step = params["chunk"]
        for start in range(0, len(df), step):
            ids.extend(
                client.annotation.post_annotation_df(
                    table, df.iloc[start : start + step], position_columns=["pt_position"]
                )
            )
        return len(ids), {"requests": -(-len(df) // step)}

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
