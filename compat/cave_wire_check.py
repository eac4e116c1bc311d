"""Record the query requests of caveclient's table interface (``materialize.tables`` / ``.views``).

Run by ``compat/run.py`` once in the official clients' venv and once in ours (``--ours``: the alias
finder makes ``caveclient`` ours); each call of ``cave_tables_data.SCENARIOS`` runs on a fresh
``CAVEclient`` whose servers are ``cave_tables_data.answer``, and its query requests (the POSTs:
table, join, live and view queries) are recorded in ``wire_check``'s request shape, so
``wire_check.compare`` compares both recordings value by value. The metadata GETs are not
compared: caveclient 5.25 caches them module-wide, ours per client, so their number differs.

Usage: ``python compat/cave_wire_check.py OUT.json [--ours]``
"""

from __future__ import annotations

import re
import sys
from typing import Any


def record() -> dict[str, Any]:
    """Each scenario's query requests (or the error it raised)."""
    import responses
    from cave_tables_data import DS, GLOBAL, SCENARIOS, answer
    from caveclient import CAVEclient
    from wire_check import request_shape

    results: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            for method in ("GET", "POST"):
                mock.add_callback(method, re.compile(r"https://.*"), answer)
            client = CAVEclient(
                DS, server_address=GLOBAL, auth_token="t" * 32, write_server_cache=False
            )
            try:
                scenario(client)
                error = None
            except Exception as exc:  # recorded, compared like a request
                error = f"{type(exc).__name__}: {exc}"
            queries = [c for c in mock.calls if c.request.method == "POST"]
            results[name] = {"requests": [request_shape(c) for c in queries], "error": error}
    return results


if __name__ == "__main__":
    import wire_check

    sys.exit(wire_check.main(sys.argv, record))
