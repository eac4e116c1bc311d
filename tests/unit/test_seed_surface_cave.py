"""Every public name and signature of the caveclient seed exists in prefect_neurodata.clients.cave.

The seed (``/work/shared/seeds/caveclient.txt``) documents caveclient 5.x; each module, class,
exception, function, method, property and alias must exist here, with the same parameter names,
kinds, order and defaults (we may only append parameters that have defaults).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.seed_surface import check_item, parse_seed

SEED = Path("/work/shared/seeds/caveclient.txt")
SEED_PREFIX = "caveclient"
TARGET_PREFIX = "prefect_neurodata.clients.cave"

# Deliberate differences, each with its reason.
ALLOWANCES: dict[str, str] = {
    # The seed's default is datetime.now() frozen when the module was imported (2024-02-29 in
    # the docs build); ours is None, meaning "now" evaluated at call time.
    "caveclient.chunkedgraph.ChunkedGraphClientV1.get_delta_roots:timestamp_future": (
        "import-time datetime default replaced by None = now at call time"
    ),
}

ITEMS = parse_seed(SEED, SEED_PREFIX)


def test_seed_parses_to_the_expected_surface() -> None:
    kinds = {item.kind for item in ITEMS}
    assert {"module", "class", "function", "method", "property", "alias", "exception"} <= kinds
    names = {item.qualname for item in ITEMS}
    assert "caveclient.frameworkclient.CAVEclient" in names
    assert "caveclient.chunkedgraph.ChunkedGraphClientV1.get_roots" in names
    assert "caveclient.materializationengine.MaterializationClientV2.query_table" in names
    assert len(ITEMS) > 200


@pytest.mark.parametrize("item", ITEMS, ids=[f"{i.kind}:{i.qualname}" for i in ITEMS])
def test_seed_item_exists_with_same_signature(item) -> None:
    problems = check_item(item, SEED_PREFIX, TARGET_PREFIX, ALLOWANCES)
    assert not problems, f"{item.qualname} (seed line {item.line}): " + "; ".join(problems)
