"""Stopping what a process started: the process and every descendant, SIGTERM then SIGKILL.

For processes that are not the leader of their own group (a multiprocessing child, a flow run
in a spawned process): their descendants (build children, a Dask cluster) are found by walking
the process tree, not by a group id they do not have.
"""

from __future__ import annotations

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
