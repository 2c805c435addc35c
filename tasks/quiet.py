"""Converters' console chatter, held back unless asked for.

TensorFlow prints every tensor a SavedModel captures ("Saved artifact at ... TensorSpec(...)",
about 30 lines a model) and its C++ runtime writes straight to the file descriptors. None of it
is a result: inside `held_back()` it goes to the `modelpress.convert` logger at DEBUG level, and
an entry point's `--verbose` (see `show_converter_output`) prints it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

LOGGER = logging.getLogger("modelpress.convert")
# where native_output_to sends the process's C-level output (None: to the terminal)
native_log: Path | None = None


class _ConverterOutputHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints to `stream`, or to whatever sys.stderr is when a line is emitted: the stderr of
    the moment `--verbose` was read may since have been replaced (and closed) by a harness."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = self._fixed or sys.stderr
        super().emit(record)


def show_converter_output(stream: TextIO | None = None) -> None:
    """`--verbose`: print what converters said (to stderr, beside the log lines). Asked twice
    (a second entry point in the same process), it still prints each line once."""
    for old in [h for h in LOGGER.handlers if isinstance(h, _ConverterOutputHandler)]:
        LOGGER.removeHandler(old)
    handler = _ConverterOutputHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False


@contextlib.contextmanager
def held_back() -> Iterator[_Buffer]:
    """This thread's prints inside the block go to LOGGER at DEBUG, not to the console.

    Python-level writes are caught per thread, so the other tasks of a flow keep printing and
    logging. C++ writes to fds 1 and 2 can only be caught for the whole process: that is done
    when no other thread runs (a DVC stage), and not inside a flow, where it would swallow
    other tasks' log lines too.
    """
    buffer = _Buffer()
    alone = threading.active_count() == 1
    try:
        with _prints_not_logged(), _this_thread_to(buffer), _fds_to(buffer, alone=alone):
            yield buffer  # what was said, for an error message when the block fails
    finally:
        for line in buffer.text().splitlines():
            if line.strip():
                LOGGER.debug(line)


@contextlib.contextmanager
def _prints_not_logged() -> Iterator[None]:
    """Inside a Prefect run with log_prints, print() goes to the run's logger before sys.stdout
    sees it: onnx2tf's blank lines showed as empty INFO lines of every int8 task. This context
    (the task's or flow's, a copy with log_prints off) sends them to sys.stdout, held back."""
    context = sys.modules.get("prefect.context")  # no Prefect loaded: no run to log to
    with contextlib.ExitStack() as stack:
        if context is not None:
            for kind in (context.FlowRunContext, context.TaskRunContext):
                run = kind.get()
                if run is not None and run.log_prints:
                    stack.enter_context(run.model_copy(update={"log_prints": False}))
        yield


class _Buffer:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.parts.append(text)
        return len(text)

    def text(self) -> str:
        return "".join(self.parts)


class _ThreadRouter:
    """Stands in for sys.stdout/sys.stderr: writes of a thread inside held_back go to its buffer,
    the rest on to the stream it replaced."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        buffer = _buffers.get(threading.get_ident())
        if buffer is not None:
            return buffer.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        # A handler made inside held_back (absl's, when TensorFlow is first imported there) holds
        # this router; logging.shutdown, which Prefect's dictConfig runs, closes every handler's
        # stream. The router does not own the stream it forwards to: closing it would close the
        # process's (or pytest's) stderr for good.
        return None

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...
        return getattr(self._stream, name)


# One pair of routers for the whole process while any thread holds output back: per-thread
# save/restore of sys.stdout would interleave across the flow's threads and could leave a
# finished thread's router (and whatever stream it wrapped) in place for good.
_buffers: dict[int, _Buffer] = {}
_routing_lock = threading.Lock()
_replaced: tuple[Any, Any] | None = None
_routers: tuple[_ThreadRouter, _ThreadRouter] | None = None


@contextlib.contextmanager
def _this_thread_to(buffer: _Buffer) -> Iterator[None]:
    global _replaced, _routers
    thread = threading.get_ident()
    with _routing_lock:
        # first holder, or the streams were replaced while another thread held back (a thread a
        # stopped build left inside its block, while a harness swapped the streams): route the
        # streams as they are now, else this thread's prints would bypass its buffer
        if _routers is None or (sys.stdout, sys.stderr) != _routers:
            _replaced = sys.stdout, sys.stderr
            _routers = _ThreadRouter(sys.stdout), _ThreadRouter(sys.stderr)
            sys.stdout, sys.stderr = _routers
        outer = _buffers.get(thread)
        _buffers[thread] = buffer
    try:
        yield
    finally:
        with _routing_lock:
            if outer is None:
                _buffers.pop(thread, None)
            else:
                _buffers[thread] = outer
            if not _buffers and _routers is not None and _replaced is not None:
                # put back what we replaced, unless someone has replaced us since
                if (sys.stdout, sys.stderr) == _routers:
                    sys.stdout, sys.stderr = _replaced
                _replaced = _routers = None


@contextlib.contextmanager
def _fds_to(buffer: _Buffer, alone: bool) -> Iterator[None]:
    if not alone:
        yield
        return
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            _flush_c_stdio()  # C's stdout is block-buffered into a file: flush it there
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            buffer.write(sink.read().decode(errors="replace"))


def _flush_c_stdio() -> None:
    with contextlib.suppress(OSError, AttributeError):  # no libc: nothing buffered by it
        ctypes.CDLL(None).fflush(None)


def native_output_to(path: Path) -> None:
    """From now on, whatever this process and its children write to fds 1 and 2 below Python
    (TensorFlow's C++ runtime, absl, the TFLite converter) goes to `path`; Python's own
    sys.stdout/sys.stderr keep the terminal.

    For an entry point, before Prefect or TensorFlow are imported: logging handlers made after
    this hold the new sys.stderr. Process-wide, so it is safe with the flow's threads, where
    `held_back` can catch only Python-level writes.
    """
    global native_log
    path.parent.mkdir(parents=True, exist_ok=True)
    native_log = path
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    terminal_out, terminal_err = os.dup(1), os.dup(2)
    sink = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    sys.stdout = os.fdopen(terminal_out, "w", buffering=1, encoding=sys.stdout.encoding)
    sys.stderr = os.fdopen(terminal_err, "w", buffering=1, encoding=sys.stderr.encoding)
