"""The tests' process helper: whatever a test starts is gone afterwards, on every path."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests import processes
from tests.processes import Processes

# A stubborn worker: ignores SIGTERM (so does the child it starts, which inherits that) and
# writes the child's pid where the test can find it.
STUBBORN = "trap '' TERM; sleep 300 & echo $! > {pid_file}; while true; do sleep 0.1; done"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return int(path.read_text())


def test_a_process_ignoring_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    with Processes(grace_s=0.5) as started:
        worker = started.popen(["bash", "-c", STUBBORN.format(pid_file=pid_file)])
        child = _wait_for(pid_file)
        assert _alive(worker.pid) and _alive(child)
    assert worker.returncode is not None  # reaped
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the worker's child outlived it"


def test_processes_are_stopped_when_the_test_fails_midway(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    with pytest.raises(AssertionError), Processes(grace_s=0.5) as started:
        worker = started.popen(["bash", "-c", STUBBORN.format(pid_file=pid_file)])
        _wait_for(pid_file)
        raise AssertionError("the test failed")
    assert worker.returncode is not None
    assert not _alive(worker.pid)


def test_run_past_its_timeout_leaves_nothing_behind(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        processes.run(["bash", "-c", script], timeout=2, capture_output=True, text=True)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "a grandchild outlived the timed-out command"


def test_run_returns_what_subprocess_run_does(tmp_path: Path) -> None:
    done = processes.run(
        ["bash", "-c", "cat; echo out; echo err >&2; exit 3"],
        input="in\n",
        timeout=30,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "in\nout\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError):
        processes.run(["false"], timeout=30, check=True)
