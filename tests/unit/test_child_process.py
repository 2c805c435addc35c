"""tasks.child_process: a step in a spawned child, its answer, its exception, its printed lines,
and how it ended when it ended without an answer."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tasks.child_process import ChildProcessDied, in_child_process


def _answer(x: int) -> int:
    print(f"child: squaring {x}")
    print("child: done")
    return x * x


def _raises() -> None:
    raise ValueError("calib split is empty")


def _killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _exits() -> None:
    os._exit(3)


def _pids_from_a_daemon(answers: Any) -> None:
    answers.put((os.getpid(), in_child_process("a step", os.getpid)))


def test_the_answer_and_printed_lines_come_back(capsys: pytest.CaptureFixture[str]) -> None:
    assert in_child_process("squaring", _answer, 7) == 49
    assert capsys.readouterr().out.splitlines() == ["child: squaring 7", "child: done"]


def test_the_childs_exception_is_raised_here() -> None:
    with pytest.raises(ValueError, match="calib split is empty"):
        in_child_process("calibration", _raises)


def test_a_killed_child_says_by_what() -> None:
    with pytest.raises(ChildProcessDied) as died:
        in_child_process("qat_int8's build", _killed)
    message = str(died.value)
    assert message.startswith("qat_int8's build process was killed by SIGKILL (the kernel's")
    assert "task_runner.max_workers" in message


def test_a_child_that_exits_says_its_code() -> None:
    with pytest.raises(ChildProcessDied, match=r"^pruned's build process exited with code 3$"):
        in_child_process("pruned's build", _exits)


def test_a_measuring_child_that_overruns_is_killed_with_what_it_started(tmp_path: Path) -> None:
    """subprocess.run's timeout kills the child alone: a grandchild it started kept measuring
    beside the next variant. The whole process group goes now."""
    import os
    import sys
    import time

    from tasks.measuring_process import run_measuring_child

    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    answer = run_measuring_child([sys.executable, "-c", script], tmp_path / "out.json", 3)
    assert answer == "timed out after 3s"
    assert time.monotonic() - started < 30
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(grandchild, 9)
        raise AssertionError("the grandchild outlived the timeout")


def test_in_a_daemonic_process_the_step_runs_in_place() -> None:
    """A Dask process worker is daemonic and may not have children: the step runs there."""
    spawn = multiprocessing.get_context("spawn")
    answers = spawn.Queue()
    daemon = spawn.Process(target=_pids_from_a_daemon, args=(answers,), daemon=True)
    daemon.start()
    try:
        own, steps = answers.get(timeout=120)
    finally:
        daemon.join(10)
        if daemon.is_alive():
            daemon.kill()
    assert own == steps == daemon.pid
