"""Stopping what a process started: the process and every descendant, SIGTERM then SIGKILL.

For a process started as the leader of its own group (`start_new_session=True`): stop_groups
signals the whole group, so what it started goes too even after the leader is gone.
For processes that are not the leader of their own group (a multiprocessing child, a flow run
in a spawned process): their descendants (build children, a Dask cluster) are found by walking
the process tree, not by a group id they do not have.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any

import psutil


def stop_process_tree(pid: int, grace_s: float = 5.0) -> list[int]:
    """SIGTERM `pid` and its descendants, SIGKILL those left after `grace_s`; the pids that had
    to be killed. A process already gone is no error."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return stop_processes(tree, grace_s)


def stop_processes(processes: list[psutil.Process], grace_s: float = 5.0) -> list[int]:
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace_s)
    return [process.pid for process in alive]


def stop_groups(*processes: subprocess.Popen[Any], grace_s: float = 5.0) -> None:
    """SIGTERM every process's group, wait up to `grace_s` for all, SIGKILL the groups (also
    when the leader is gone: what it started may still be in its group), reap."""
    for process in processes:
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        signal_group(process, signal.SIGKILL)
    for process in processes:
        process.wait(timeout=60)  # SIGKILL cannot be refused: this reaps


def signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    # start_new_session: the group id is the leader's pid, and stays reserved while any
    # member lives, so this never reaches an unrelated process
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
