"""What the two bench drivers share: measurement, inputs and the workloads themselves.

Imported by ``bench/ours_driver.py`` (project venv) and ``bench/official_driver.py`` (the
official clients' venv), so it may import only the standard library, numpy and pandas. The
workloads call the seed API, which both client families share; each driver supplies its client
constructors and the two timed calls whose usage differs (`Clients`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import resource
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class Clients:
    """One side's wiring.

    Attributes:
        docdb: ``(spec, collection="data_assets") -> MetadataDbClient``.
        cave: ``(spec) -> CAVEclient``.
        upsert: ``(client, records) -> (rows, extra)``: the side's checked upsert call.
        post_annotations: ``(client, table, frame, params) -> rows or (rows, extra)``.
    """

    docdb: Callable[..., Any]
    cave: Callable[[dict[str, Any]], Any]
    upsert: Callable[[Any, list[dict[str, Any]]], tuple[int, dict[str, Any]]]
    post_annotations: Callable[[Any, str, pd.DataFrame, dict[str, Any]], Any]


CLIENTS: Clients


# -- measurement ------------------------------------------------------------------------------


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


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PeakMemory:
    """This process's own memory high-water mark above a baseline taken at `start`.

    The kernel's ``VmHWM`` belongs to the process's address space, which ``exec`` replaces,
    and is reset by writing ``5`` to ``/proc/self/clear_refs``; ``ru_maxrss`` instead keeps the
    peak of a parent forked before ``exec`` (a small driver started from a 1.7 GB harness
    reported 1.7 GB). So: baseline = ``VmRSS`` after imports and setup, peak = ``VmHWM`` after
    the reset, work = peak - baseline.
    """

    def start(self) -> None:
        gc.collect()
        self.base_kb = _status_kb("VmRSS")
        self.reset = _reset_peak()

    def result(self) -> dict[str, Any]:
        peak_kb = max(_status_kb("VmHWM"), _status_kb("VmRSS"))
        return {
            "peak_rss_mb": peak_kb / 1024,
            "base_rss_mb": self.base_kb / 1024,
            "work_rss_mb": max(0.0, (peak_kb - self.base_kb) / 1024),
            "peak_reset": self.reset,
        }


def measure(run: Any, setup: Any) -> dict[str, Any]:
    """Run ``setup()`` (untimed), then ``run(state)`` timed.

    Reports wall seconds, the process's CPU seconds (user + sys, every thread) and its own
    peak memory over ``run`` (see `PeakMemory`).
    """
    state = setup()
    memory = PeakMemory()
    memory.start()
    cpu = cpu_seconds()
    started = time.perf_counter()
    result = run(state)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    rows, extra = result if isinstance(result, tuple) else (result, {})
    return {
        "ok": True,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rows": rows,
        **memory.result(),
        "extra": extra,
    }


def _load_json(spec: dict[str, Any], name: str) -> Any:
    with open(os.path.join(spec["data_dir"], name), "rb") as fh:
        return json.loads(fh.read())


# -- workloads ----------------------------------------------------------------------------


def w_docdb_retrieve_all(spec: dict[str, Any]) -> dict[str, Any]:
    def run(_: Any) -> int:
        records = CLIENTS.docdb(spec).retrieve_docdb_records()
        run.keep = records  # held until the peak is read
        return len(records)

    return measure(run, lambda: None)


def w_docdb_retrieve_filtered(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["params"]

    def run(_: Any) -> int:
        records = CLIENTS.docdb(spec).retrieve_docdb_records(
            filter_query=params["filter"], projection=params["projection"]
        )
        run.keep = records
        return len(records)

    return measure(run, lambda: None)


def w_docdb_filter_list(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["params"]

    def run(names: list[str]) -> int:
        records = CLIENTS.docdb(spec).fetch_records_by_filter_list(
            "name", names, projection=params.get("projection")
        )
        run.keep = records
        return len(records)

    return measure(run, lambda: _load_json(spec, params["names_file"]))


def w_cave_query_all(spec: dict[str, Any]) -> dict[str, Any]:
    def run(_: Any) -> int:
        df = CLIENTS.cave(spec).materialize.query_table(spec["params"]["table"])
        run.keep = df
        return len(df)

    return measure(run, lambda: None)


def w_cave_query_filtered(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["params"]

    def run(_: Any) -> int:
        df = CLIENTS.cave(spec).materialize.query_table(
            params["table"], filter_in_dict=params["filter_in_dict"]
        )
        run.keep = df
        return len(df)

    return measure(run, lambda: None)


def w_cave_get_roots(spec: dict[str, Any]) -> dict[str, Any]:
    def setup() -> np.ndarray:
        return np.load(os.path.join(spec["data_dir"], spec["params"]["supervoxels_file"]))

    def run(svids: np.ndarray) -> int:
        roots = CLIENTS.cave(spec).chunkedgraph.get_roots(svids)
        run.keep = roots
        return int(np.count_nonzero(roots))

    return measure(run, setup)


def annotation_frame(n: int, seed: int) -> pd.DataFrame:
    """``n`` bound_tag annotations (the same for both sides)."""
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


def w_docdb_upsert(spec: dict[str, Any]) -> dict[str, Any]:
    def setup() -> list[dict[str, Any]]:
        return _load_json(spec, spec["params"]["records_file"])

    def run(records: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        client = CLIENTS.docdb(spec, collection=spec["params"]["collection"])
        return CLIENTS.upsert(client, records)

    return measure(run, setup)


def w_cave_post_annotations(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec["params"]
    table = params["table"]

    def setup() -> tuple[Any, pd.DataFrame]:
        client = CLIENTS.cave(spec)
        client.annotation.create_table(
            table, "bound_tag", description="bench scratch table", voxel_resolution=[4, 4, 40]
        )
        df = annotation_frame(params["rows"], params["seed"])
        df["pt_position"] = list(df[["pt_position_x", "pt_position_y", "pt_position_z"]].values)
        return client, df[["pt_position", "tag"]]

    def run(state: tuple[Any, pd.DataFrame]) -> Any:
        client, df = state
        return CLIENTS.post_annotations(client, table, df, params)

    return measure(run, setup)


def w_memory_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Calibration: hold ``params["mb"]`` MB of touched memory; the work figure must follow."""

    def run(_: Any) -> int:
        block = np.ones(int(spec["params"]["mb"]) * 2**20 // 8, dtype=np.float64)
        run.keep = block
        return int(block.nbytes // 2**20)

    return measure(run, lambda: None)


WORKLOADS = {
    "memory.probe": w_memory_probe,
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


def main(argv: list[str], side: str, clients: Clients) -> int:
    """Run the workload named in the spec file ``argv[1]`` and print ``BENCH_RESULT {json}``."""
    global CLIENTS
    CLIENTS = clients
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
    out["side"] = side
    print("BENCH_RESULT " + json.dumps(out), flush=True)
    return 0
