"""Processes that tests start: each in its own process group, stopped on every path.

A `prefect worker` starts flow-run processes, a CLI run without PREFECT_API_URL starts a
temporary Prefect server, `dvc` starts git: stopping only the process a test started leaves
those behind. Every process here leads its own group (start_new_session), and stopping it is:
SIGTERM to the group, wait, SIGKILL to the group, reap. A loaded CI machine once left two
workers running because a worker did not exit 30 s after SIGTERM and nothing escalated.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tasks.processes import signal_group, stop_groups

GRACE_S = 30.0  # SIGTERM to SIGKILL: a worker deregisters and ends its flow runs in this time


def stop(*processes: subprocess.Popen[Any], grace_s: float = GRACE_S) -> None:
    """SIGTERM every process's group, wait up to grace_s for all, SIGKILL the groups, reap."""
    stop_groups(*processes, grace_s=grace_s)
    for process in processes:
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def kill(process: subprocess.Popen[Any]) -> None:
    """SIGKILL the process's whole group at once (a crash, not a shutdown) and reap it."""
    signal_group(process, signal.SIGKILL)
    process.wait(timeout=60)


class Processes:
    """`with Processes() as started:` — `started.popen(...)` many; all stopped on leaving."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.processes: list[subprocess.Popen[Any]] = []
        self._logs: list[IO[bytes]] = []

    def popen(
        self, args: Sequence[str | os.PathLike[str]], *, log: Path | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Popen in a new process group; `log`: a file that takes stdout and stderr."""
        if log is not None:
            handle = open(log, "wb")  # noqa: SIM115 - closed in stop_all
            self._logs.append(handle)
            kwargs |= {"stdout": handle, "stderr": subprocess.STDOUT}
        process = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        try:
            stop(*self.processes, grace_s=self.grace_s)
        finally:
            for handle in self._logs:
                handle.close()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    capture_output: bool = False,
    text: bool = False,
    check: bool = False,
    input: str | bytes | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """subprocess.run, but in a new process group that is stopped on timeout or any error,
    so nothing the command started outlives it."""
    if capture_output:
        kwargs |= {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with Processes(grace_s=5) as started:
        process = started.popen(args, text=text, **kwargs)
        out, err = process.communicate(input=input, timeout=timeout)
        # the leader is done; anything it left in its group is stopped on leaving
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    if check:
        done.check_returncode()
    return done
