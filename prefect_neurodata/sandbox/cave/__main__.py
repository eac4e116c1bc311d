"""Serve the CAVE stand-in on a GLOBAL and a LOCAL port from one process (one shared world).

Usage::

    python -m prefect_neurodata.sandbox.cave --host 127.0.0.1 --global-port 9101 --local-port 9102

The datastack record then names ``http://HOST:LOCAL`` as ``local_server`` and the state service
answers with ``http://HOST:GLOBAL/nglstate/...`` URLs. Both ports serve the same app (every
prefix answers on both). Configuration comes from the ``NEURODATA_SANDBOX_*`` environment (see
:meth:`~prefect_neurodata.sandbox.cave.world.CaveConfig.from_env`): ``CAVE_DB_URL`` (default
SQLite file ``<CAVE_WORKDIR or --workdir>/cave.sqlite``), ``CAVE_ADMIN_TOKEN``,
``CAVE_USER_TOKEN``, ``CAVE_VIEWER_TOKEN``, ``FAULTS_CAVE``. SIGTERM/SIGINT stop both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn

from .app import create_app
from .world import CaveConfig


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`serve` (two servers share it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(host: str, global_port: int, local_port: int, workdir: str | None = None) -> None:
    """Run both servers until SIGTERM/SIGINT.

    Args:
        host: Bind address (use 127.0.0.1).
        global_port: Port of the global services.
        local_port: Port of the local services.
        workdir: Directory of the default SQLite file (wins over
            ``NEURODATA_SANDBOX_CAVE_WORKDIR``).
    """
    overrides: dict[str, Any] = {
        "global_url": f"http://{host}:{global_port}",
        "local_url": f"http://{host}:{local_port}",
    }
    if workdir:
        overrides["workdir"] = workdir
    config = CaveConfig.from_env(**overrides)
    app = create_app(config)
    # Everything loaded so far (modules, the app, a persisted world) lives as long as the process:
    # frozen, it is skipped by the full collections that a 10,000-annotation request's objects
    # trigger every few such requests, which otherwise walk it all (~0.1 s of CPU each time).
    gc.collect()
    gc.freeze()
    servers = [
        _Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
            )
        )
        for port in (global_port, local_port)
    ]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop()  # one server ended (e.g. port in use): take the other down too
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in servers:
        if not s.started:
            raise SystemExit(f"CAVE sandbox could not start on {host}:{s.config.port}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m prefect_neurodata.sandbox.cave")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--global-port", type=int, required=True)
    parser.add_argument("--local-port", type=int, required=True)
    parser.add_argument("--workdir", default=None, help="directory of the default SQLite file")
    args = parser.parse_args(argv)
    if args.global_port == args.local_port:
        parser.error("--global-port and --local-port must differ")
    asyncio.run(serve(args.host, args.global_port, args.local_port, args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
