"""tasks.child_process: a step in a spawned child, its answer, its exception, its printed lines,
and how it ended when it ended without an answer."""

from __future__ import annotations

import os
import signal

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
