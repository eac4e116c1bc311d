"""The processes the sandbox launcher starts: spawn, identify, persist and stop them.

Everything here is about operating-system processes, not about any one service: picking free
loopback ports, starting a service with its log file and (unless detached) tied to its parent,
telling the started process apart from a later one that reuses its pid, and stopping a set of
processes with their stop signal and a SIGKILL for whatever does not exit in time.
:class:`~prefect_neurodata.sandbox.launcher.Sandbox` decides which processes to start and when;
:mod:`prefect_neurodata.sandbox.services` knows what each service's command line is.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
STOP_SIGNALS: dict[str, int] = {"postgres": int(signal.SIGINT)}
"""Services stopped by another signal than SIGTERM (SIGINT is PostgreSQL's fast shutdown; its
SIGTERM waits for every client to disconnect)."""
STOP_TIMEOUT = 15.0


class SandboxError(RuntimeError):
    """A sandbox service could not be started, reached or stopped."""


@dataclass
class ServiceProcess:
    """One process the launcher started (persisted in the state file).

    Attributes:
        name: Service name (``mongo``, ``aws``, ``docdb``, ``cave``).
        pid: Process id.
        start_time: Start time of the process (psutil's ``create_time``, seconds since the
            epoch); with ``cmd`` it tells the started process apart from a later one reusing
            the pid.
        cmd: The command line.
        log: Path of its log file.
        urls: Its base URLs by role (``url``, or ``global``/``local`` for CAVE); an adopted
            process may have a ``health`` URL that answers 200 while it is healthy.
        adopted: Started by someone else and recorded with :meth:`Sandbox.adopt`.
        group: Stop the whole process group (the process leads its own session).
        stop_first: An adopted client of other processes: stopped before all of them.
    """

    name: str
    pid: int
    start_time: float | None
    cmd: list[str]
    log: str
    urls: dict[str, str] = field(default_factory=dict)
    adopted: bool = False
    group: bool = False
    stop_first: bool = False


def read_state(path: Path) -> dict[str, Any] | None:
    """The launcher's state file at ``path``, or None when there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Replace the state file at ``path`` with ``state`` in one step (no reader sees half)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def processes_in_state(state: Mapping[str, Any] | None) -> dict[str, ServiceProcess]:
    """The processes a state file (as read by :func:`read_state`) records, by name."""
    state = state or {}
    known = {f.name for f in fields(ServiceProcess)}
    # A state file from an older launcher has ``start_ticks`` instead of ``start_time``:
    # unknown keys are dropped, and pid and command line still identify the process.
    return {
        n: ServiceProcess(**{"start_time": None, **{k: v for k, v in p.items() if k in known}})
        for n, p in state.get("processes", {}).items()
    }


def free_ports(n: int, host: str = HOST) -> list[int]:
    """Return ``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch), or None when it does not exist.

    With the command line it tells a started process apart from a later one reusing its pid.
    """
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_same_process(proc: ServiceProcess) -> bool:
    """True while ``proc.pid`` is alive and is still the process the launcher started."""
    try:
        found = psutil.Process(proc.pid)
        if found.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        if proc.start_time is not None and found.create_time() != proc.start_time:
            return False
        cmdline = found.cmdline()
    except psutil.AccessDenied:
        # Alive and ours by pid and start time; only its command line is not readable.
        return True
    except psutil.NoSuchProcess:
        return False
    # A script started through its shebang shows up as "<interpreter> <script> args...", so
    # compare the arguments, which must end the command line.
    args = proc.cmd[1:]
    return cmdline[-len(args) :] == args if args else bool(cmdline)


def tail_log(path: str | Path, lines: int = 25) -> str:
    """The last ``lines`` lines of the log at ``path`` (``"(no log)"`` when it cannot be read).

    Start-up errors quote it so the reason a service died is in the exception itself.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _pdeathsig_hook() -> Any:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent thread dies, or None.

    Resolved in the parent: the child runs between fork and exec, where importing modules
    could deadlock on locks held by other threads.
    """
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(1, sigterm)  # PR_SET_PDEATHSIG

    return hook


def spawn_service(
    name: str,
    cmd: list[str],
    env_extra: Mapping[str, str],
    urls: Mapping[str, str],
    *,
    workdir: Path,
    detach: bool,
) -> tuple[ServiceProcess, subprocess.Popen[bytes]]:
    """Start one service process, logging to ``<workdir>/logs/<name>.log``.

    Args:
        name: Service name (``postgres`` runs as the ``postgres`` user when we are root).
        cmd: Its command line.
        env_extra: Environment added to ours (minus any ``NEURODATA_SANDBOX_*`` exports).
        urls: Its base URLs by role, recorded in the returned :class:`ServiceProcess`.
        workdir: The sandbox directory: the process's working directory, holding ``logs/``.
        detach: Start it in its own session so it outlives this Python process; otherwise it
            gets SIGTERM when its parent (thread) dies.

    Returns:
        Its :class:`ServiceProcess` record and the ``Popen`` handle (to see it exit early).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        # The launcher decides the services' configuration; stale exports must not leak in.
        if not k.startswith("NEURODATA_SANDBOX_")
    }
    env.update(env_extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = workdir / "logs" / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"--- {datetime.now(timezone.utc).isoformat()} {' '.join(cmd)}\n".encode())
        log.flush()
        if name == "postgres" and os.geteuid() == 0:
            os.chown(log_path, pwd.getpwnam("postgres").pw_uid, -1)
        popen = subprocess.Popen(
            cmd,
            user="postgres" if name == "postgres" and os.geteuid() == 0 else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=detach,
            # Non-detached children die with their parent, so a killed test run leaves no
            # servers behind. PDEATHSIG follows the parent *thread*: only use it from the
            # main thread, or a sandbox started in a worker thread would die with it.
            preexec_fn=(
                _pdeathsig_hook()
                if not detach and threading.current_thread() is threading.main_thread()
                else None
            ),
        )
    process = ServiceProcess(
        name=name,
        pid=popen.pid,
        start_time=process_start_time(popen.pid),
        cmd=list(cmd),
        log=str(log_path),
        urls=dict(urls),
    )
    return process, popen


def stop_in_waves(
    procs: Mapping[str, ServiceProcess],
    announce: Callable[[str, int], None] | None = None,
) -> list[str]:
    """Stop every process that is still our own, in waves: adopted processes (clients of
    the services), the HTTP services and adopted servers, then their backends.

    The HTTP services shut down cleanly only while their database is still up, so they get
    SIGTERM first; whatever does not exit within :data:`STOP_TIMEOUT` gets SIGKILL.

    Args:
        procs: The processes to stop, by name.
        announce: Called with ``(name, pid)`` before each process is signalled.

    Returns:
        Names of the processes that were stopped.
    """
    # Adopted clients (a deployment runner) stop while the servers they talk to still
    # answer; adopted servers (a Prefect server) stop with the HTTP services.
    clients = [n for n, p in procs.items() if p.adopted and p.stop_first]
    front = [n for n, p in procs.items() if p.adopted and not p.stop_first]
    front += [n for n in ("cave", "docdb") if n in procs]
    back = [n for n in procs if n not in front and n not in clients]
    stopped: list[str] = []
    for wave in (clients, front, back):
        live = {n: procs[n] for n in wave if is_same_process(procs[n])}
        if announce is not None:
            for name, proc in live.items():
                announce(name, proc.pid)
        terminate_processes(live)
        stopped += list(live)
    return stopped


def terminate_processes(live: Mapping[str, ServiceProcess]) -> None:
    """Send each process its stop signal, wait up to :data:`STOP_TIMEOUT` for all of them,
    then SIGKILL whatever still runs (psutil reaps our own children while it waits)."""
    handles: dict[psutil.Process, ServiceProcess] = {}
    for name, proc in live.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            handle = psutil.Process(proc.pid)
            handles[handle] = proc
            _send(handle, proc.group, STOP_SIGNALS.get(name, signal.SIGTERM))
    remaining = _wait_exited(list(handles), STOP_TIMEOUT)
    for handle in remaining:
        _send(handle, handles[handle].group, signal.SIGKILL)
    _wait_exited(remaining, 5.0)


def _send(handle: psutil.Process, group: bool, sig: int) -> None:
    """Signal ``handle`` (its whole process group when ``group``), unless it is gone."""
    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
        if group:
            os.killpg(handle.pid, sig)
        else:
            # psutil refuses to signal a pid that now belongs to another process.
            handle.send_signal(sig)


def _wait_exited(handles: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (or ``timeout`` passed); return those still running.

    A zombie counts as exited: its parent may be another process that reaps it later.
    """
    deadline = time.monotonic() + timeout
    alive = handles
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=0.05)
        alive = [h for h in alive if _running(h)]
    return alive


def _running(handle: psutil.Process) -> bool:
    """True while ``handle`` runs and is not a zombie (an exited child nobody reaped yet)."""
    try:
        return handle.is_running() and handle.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
