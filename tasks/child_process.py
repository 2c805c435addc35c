"""A build step run in a fresh (spawned) child process, its printed lines shown by the parent.

For a step that must not share its process with the nightly's other threads (torch.fx's
symbolic trace patches torch.nn.Module.__call__ process-wide while it runs). When the child
ends without an answer (the out-of-memory killer's SIGKILL, a segfault in native code), the
parent raises ChildProcessDied saying how it ended, instead of a bare BrokenProcessPool.
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from tasks.errors import process_ended

Result = TypeVar("Result")


class ChildProcessDied(RuntimeError):
    """The child process ended without an answer (killed, or crashed)."""


def in_child_process(what: str, step: Callable[..., Result], *args: Any) -> Result:
    """`step(*args)` in a spawned child process, its result or its exception returned or raised
    here; `what` ("pruned's build") names it if the child dies. `step` and its arguments must
    pickle (a module-level function). Its stdout, line by line, is printed here: in a Prefect
    task's thread that is the task's log.

    A daemonic process (a Dask worker) may not have children; it runs one task at a time, so
    there the step runs in place."""
    if multiprocessing.current_process().daemon:
        return step(*args)
    spawn = multiprocessing.get_context("spawn")
    lines = spawn.Queue()
    # the child computes with as many torch threads as this process: the same bytes either way
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    with ProcessPoolExecutor(
        1, mp_context=spawn, initializer=_print_to, initargs=(lines, threads)
    ) as child:
        future = child.submit(step, *args)
        # the pool's own process table, private but the only place the child's exit code is
        # kept once the pool breaks
        workers = list(getattr(child, "_processes", {}).values())
        try:
            while True:
                try:
                    print(lines.get(timeout=0.5))
                except queue.Empty:
                    if future.done():
                        break
        except BaseException:
            # stopped from outside (the build's time bound, Ctrl-C): the child goes too, or
            # leaving the pool would wait for it to finish its build
            for worker in workers:
                worker.kill()
            raise
        try:
            return future.result()
        except BrokenProcessPool as exc:
            raise ChildProcessDied(_how_it_ended(what, workers)) from exc


def _how_it_ended(what: str, workers: list[Any]) -> str:
    codes = [w.exitcode for w in workers if w.exitcode]
    if not codes:
        return f"{what} process ended without an answer"
    hint = ""
    if codes[0] < 0:
        hint = "; fewer variants built at once (task_runner.max_workers) need less memory"
    return f"{what} process {process_ended(codes[0])}{hint}"


class _QueueWriter:
    """A child's sys.stdout: each whole line goes to the parent through `lines`."""

    def __init__(self, lines: Any) -> None:
        self.lines, self.partial = lines, ""

    def write(self, text: str) -> int:
        *whole, self.partial = (self.partial + text).split("\n")
        for line in whole:
            if line.strip():
                self.lines.put(line)
        return len(text)

    def flush(self) -> None:
        return None


def _print_to(lines: Any, threads: int | None = None) -> None:
    sys.stdout = _QueueWriter(lines)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
