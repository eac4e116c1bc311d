"""The flow tests run against a throw-away Prefect server (prefect_test_harness).

The sandbox fixtures (``neurodata_*``) come from the prefect-neurodata pytest plugin; nothing
to import or register.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(autouse=True, scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the session; heartbeats off (saves ~1 s per flow run)."""
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield
