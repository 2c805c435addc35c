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


def show_converter_output(stream: TextIO | None = None) -> None:
    """`--verbose`: print what converters said (to stderr, beside the log lines)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """This thread's prints inside the block go to LOGGER at DEBUG, not to the console.

    Python-level writes are caught per thread, so the other tasks of a flow keep printing and
    logging. C++ writes to fds 1 and 2 can only be caught for the whole process: that is done
    when no other thread runs (a DVC stage), and not inside a flow, where it would swallow
    other tasks' log lines too.
    """
    buffer = _Buffer()
    with _this_thread_to(buffer), _fds_to(buffer, alone=threading.active_count() == 1):
        yield
    for line in buffer.text().splitlines():
        if line.strip():
            LOGGER.debug(line)


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
    """Stands in for sys.stdout/sys.stderr: one thread's writes go to a buffer, the rest on."""

    def __init__(self, stream: Any, buffer: _Buffer, thread: int) -> None:
        self._stream, self._buffer, self._thread = stream, buffer, thread
        self.active = True  # off after the block: a logging handler made inside keeps us

    def write(self, text: str) -> int:
        if self.active and threading.get_ident() == self._thread:
            return self._buffer.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def _this_thread_to(buffer: _Buffer) -> Iterator[None]:
    thread = threading.get_ident()
    saved = sys.stdout, sys.stderr
    routers = _ThreadRouter(saved[0], buffer, thread), _ThreadRouter(saved[1], buffer, thread)
    sys.stdout, sys.stderr = routers
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for router in routers:
            router.active = False


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
