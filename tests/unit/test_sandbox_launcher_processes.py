"""The launcher's process bookkeeping (psutil): identify, stop, and leave strangers alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prefect_neurodata.sandbox.launcher import Sandbox
from prefect_neurodata.sandbox.processes import (
    ServiceProcess,
    is_same_process,
    process_start_time,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _write_state(sb: Sandbox, processes: dict[str, dict]) -> None:
    sb.workdir.mkdir(parents=True, exist_ok=True)
    state = {"workdir": str(sb.workdir), "env_file": str(sb.env_file), "processes": processes}
    sb.state_path.write_text(json.dumps(state))


def test_down_stops_its_own_process_and_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    ours = subprocess.Popen(SLEEPER)
    stranger = subprocess.Popen([*SLEEPER, "stranger"])
    try:
        sb = Sandbox(tmp_path / "sb", services=("docdb",))
        mine = ServiceProcess("docdb", ours.pid, process_start_time(ours.pid), SLEEPER, "log")
        # Recorded with our start time but the stranger's pid: a pid reused by another process.
        reused = ServiceProcess("aws", stranger.pid, mine.start_time, SLEEPER, "log")
        assert is_same_process(mine) and not is_same_process(reused)
        _write_state(sb, {"docdb": vars(mine), "aws": vars(reused)})
        assert sb.down() == ["docdb"]
        assert ours.wait(timeout=20) is not None
        assert stranger.poll() is None, "down() signalled a process it did not start"
        assert not sb.state_path.exists()
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait(timeout=20)


def test_state_file_of_an_older_launcher_still_loads(tmp_path: Path) -> None:
    ours = subprocess.Popen(SLEEPER)
    try:
        sb = Sandbox(tmp_path / "sb", services=("docdb",))
        # Older launchers recorded /proc start ticks; pid and command line still identify it.
        legacy = {"name": "docdb", "pid": ours.pid, "start_ticks": 12345, "cmd": SLEEPER}
        _write_state(sb, {"docdb": {**legacy, "log": "log", "urls": {}}})
        assert sb.down() == ["docdb"]
        assert ours.wait(timeout=20) is not None
    finally:
        ours.kill()
        ours.wait(timeout=20)
