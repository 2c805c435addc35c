"""Converters' chatter is held back: not on the console, in the `modelpress.convert` log."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from pathlib import Path

import pytest

from tasks.quiet import LOGGER, held_back
from tests import processes
from tests.helpers import REPO_ROOT


def test_prints_inside_are_logged_not_printed(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER.name), held_back():
        print("Saved artifact at '/tmp/x'. TensorSpec(shape=(None, 10))")
        print("to stderr too", file=sys.stderr)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    logged = [r.getMessage() for r in caplog.records if r.name == LOGGER.name]
    assert logged == ["Saved artifact at '/tmp/x'. TensorSpec(shape=(None, 10))", "to stderr too"]


def test_other_threads_keep_printing(capsys: pytest.CaptureFixture[str]) -> None:
    """Inside a flow other tasks run beside the conversion: their output is theirs."""
    started, release = threading.Event(), threading.Event()

    def other_task() -> None:
        started.wait(10)
        print("epoch 1/1 of another task")
        release.set()

    thread = threading.Thread(target=other_task)
    thread.start()
    with held_back():
        started.set()
        release.wait(10)
        print("TensorSpec(shape=(3,))")
    thread.join(10)
    out, _ = capsys.readouterr()
    assert out == "epoch 1/1 of another task\n"


def test_c_level_writes_are_held_back_when_alone() -> None:
    """A DVC stage is one thread: what C++ writes to fds 1 and 2 (TensorFlow's log lines) is
    held back too. Run in a fresh interpreter, where no other thread exists."""
    script = (
        "import os\n"
        "from tasks.quiet import held_back\n"
        "with held_back():\n"
        "    os.write(1, b'fully_quantize: 0, inference_type: 6\\n')\n"
        "    os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers\\n')\n"
        "print('done')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = processes.run(
        [sys.executable, "-c", script], env=env, timeout=60, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("done\n", "")


def test_verbose_prints_what_was_held_back() -> None:
    from tasks.quiet import show_converter_output

    stream = io.StringIO()
    handlers, level, propagate = list(LOGGER.handlers), LOGGER.level, LOGGER.propagate
    try:
        show_converter_output(stream)
        with held_back():
            print("TensorSpec(shape=(None, 10))")
    finally:
        LOGGER.handlers, LOGGER.level, LOGGER.propagate = handlers, level, propagate
    assert stream.getvalue() == "TensorSpec(shape=(None, 10))\n"


def test_verbose_asked_twice_prints_once_and_to_the_stderr_of_the_moment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two entry points in one process each read --verbose; the stderr they saw may be gone
    (replaced and closed) by the time a converter speaks."""
    from tasks.quiet import show_converter_output

    gone = io.StringIO()
    saved = sys.stderr
    sys.stderr = gone
    try:
        show_converter_output()
        show_converter_output()
    finally:
        sys.stderr = saved
    gone.close()
    with held_back():
        print("TensorSpec(shape=(None, 10))")
    assert capsys.readouterr().err == "TensorSpec(shape=(None, 10))\n"


def test_a_stream_kept_from_inside_prints_again_afterwards(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A logging handler created inside (TensorFlow's, at import) keeps the stand-in stream:
    after the block it must print, not feed a buffer nobody reads."""
    with held_back():
        kept = sys.stderr
    print("a later warning", file=kept)
    assert capsys.readouterr().err == "a later warning\n"


NATIVE_CHILD = """
import os, subprocess, sys
from pathlib import Path
from tasks.quiet import native_output_to
native_output_to(Path(sys.argv[1]))
os.write(1, b"native stdout\\n")
os.write(2, b"native stderr\\n")
subprocess.run(["sh", "-c", "echo child process >&2"], check=True)
print("python stdout")
print("python stderr", file=sys.stderr)
"""


def test_native_output_goes_to_the_file_and_python_keeps_the_terminal(tmp_path: Path) -> None:
    """`modelpress nightly` without --verbose: C-level writes (TensorFlow's C++ runtime) and
    child processes' output go to the log file; Python's prints and log lines stay."""
    log = tmp_path / "logs" / "native.log"
    done = processes.run(
        [sys.executable, "-c", NATIVE_CHILD, str(log)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("python stdout\n", "python stderr\n")
    assert log.read_text().splitlines() == ["native stdout", "native stderr", "child process"]


def test_closing_a_handler_made_inside_held_back_leaves_stderr_open() -> None:
    """absl creates its handler on sys.stderr when TensorFlow is first imported inside a
    conversion; Prefect's logging setup later closes every handler: stderr must survive."""
    import io
    import logging
    import sys

    from tasks.quiet import held_back

    outer = io.StringIO()
    saved = sys.stderr
    sys.stderr = outer
    try:
        with held_back():
            handler = logging.StreamHandler(sys.stderr)
        handler.stream.close()
        handler.close()
        assert not outer.closed
        print("after", file=sys.stderr)
    finally:
        sys.stderr = saved
    assert outer.getvalue() == "after\n"


def test_streams_swapped_while_another_thread_holds_back_are_routed_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread left inside held_back (a build the night stopped and let go) keeps the routers
    installed; if the streams are swapped meanwhile (a harness's capture, a library), a new
    block's prints must still reach its buffer, not the new stream."""
    inside, release = threading.Event(), threading.Event()

    def left_behind() -> None:
        with held_back():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=left_behind)
    thread.start()
    try:
        assert inside.wait(10)
        swapped = io.StringIO()
        monkeypatch.setattr(sys, "stdout", swapped)
        with caplog.at_level(logging.DEBUG, logger=LOGGER.name), held_back():
            print("converter chatter")
        assert swapped.getvalue() == ""
        assert [r.getMessage() for r in caplog.records if r.name == LOGGER.name] == [
            "converter chatter"
        ]
        print("after the block")
        assert swapped.getvalue() == "after the block\n"
    finally:
        release.set()
        thread.join(10)
