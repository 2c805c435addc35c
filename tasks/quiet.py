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
from typing import Any, TextIO

LOGGER = logging.getLogger("modelpress.convert")


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
    sys.stdout, sys.stderr = routers  # type: ignore[assignment]
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
