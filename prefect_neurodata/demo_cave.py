"""The CAVE half of ``python -m prefect_neurodata.demo``: its block, data and upload request.

The demo seeds the sandbox's CAVE stand-in when it is empty (`ensure_cave_seeded`), saves the
``neurodata-cave`` block (`save_cave_block`) and runs the annotation upload of a small CSV of
synapses into a new table (`annotation_upload_request`) and the materialization snapshot
through their deployments. Both flows are idempotent, so running the demo again skips the work
already done.

Example:
    ```python
    from prefect_neurodata.demo_cave import annotation_upload_request

    request = annotation_upload_request(Path(".sandbox"))
    print(request["table"], request["source"])
    ```
"""

from __future__ import annotations

import csv
import json
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

from prefect_neurodata.constants import DEFAULT_CAVE_BLOCK

CAVE_BLOCK = DEFAULT_CAVE_BLOCK
DEMO_TABLE = "demo_synapses"
DEMO_SYNAPSES = 20_000
DEMO_ANNOTATIONS = 2_500


def _say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_cave_seeded(env: dict[str, str], synapses: int = DEMO_SYNAPSES) -> None:
    """Seed the CAVE stand-in unless its world is already built."""
    from prefect_neurodata.sandbox.seed import seed_cave

    url = env["NEURODATA_CAVE_GLOBAL_URL"]
    with urllib.request.urlopen(f"{url}/__sandbox__/world", timeout=10) as response:
        world = json.loads(response.read())
    if world.get("seeded"):
        return
    t0 = time.monotonic()
    seed_cave(url, synapses=synapses, seed=1, admin_token=env.get("NEURODATA_CAVE_ADMIN_TOKEN"))
    _say(f"seeded CAVE with {synapses:,} synapses in {time.monotonic() - t0:.1f} s")


def save_cave_block(env: dict[str, str], name: str = CAVE_BLOCK) -> str:
    """Save a CAVE block pointing at the sandbox (the user token: view + edit)."""
    from pydantic import SecretStr

    from prefect_neurodata.blocks import CaveCredentials

    CaveCredentials(
        server_address=env["NEURODATA_CAVE_GLOBAL_URL"],
        datastack_name=env["NEURODATA_CAVE_DATASTACK"],
        token=SecretStr(env["NEURODATA_CAVE_TOKEN"]),
    ).save(name, overwrite=True)
    return name


def write_demo_annotations(path: Path, rows: int = DEMO_ANNOTATIONS) -> Path:
    """A deterministic CSV of synapse annotations (same bytes on every run)."""
    rng = random.Random(2026)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["pre_pt_position", "ctr_pt_position", "post_pt_position", "size"])
        for _ in range(rows):
            x, y, z = rng.randint(2000, 60000), rng.randint(2000, 60000), rng.randint(20, 800)
            writer.writerow(
                [
                    f"{x},{y},{z}",
                    f"{x + 5},{y + 5},{z}",
                    f"{x + 10},{y + 10},{z}",
                    rng.randint(20, 900),
                ]
            )
    return path


def annotation_upload_request(workdir: Path) -> dict[str, Any]:
    """The demo's annotation-upload request: the demo CSV into a new synapse table."""
    source = write_demo_annotations(workdir / "demo-annotations" / "synapses.csv")
    return {
        "table": DEMO_TABLE,
        "source": str(source),
        "create": {
            "schema_type": "synapse",
            "description": "Demo synapses uploaded by python -m prefect_neurodata.demo",
            "voxel_resolution": [4, 4, 40],
        },
    }
