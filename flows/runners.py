"""The task runner of the compression fan-out, chosen by params.yaml's `task_runner:` section.

threads (default): ThreadPoolTaskRunner in the flow's own process. dask: prefect-dask's
DaskTaskRunner on a LocalCluster of process workers (one thread each) or on an existing
scheduler (`address:`). Tasks get paths and small pydantic configs, never torch/TF objects, so
everything that crosses to a worker pickles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.config import TaskRunnerConfig

GPU = "GPU"  # the Dask worker resource TensorRT builds ask for


class _ThreadTimeoutCaveat(logging.Filter):
    """Prefect warns on every task with a timeout that runs in a worker thread that the bound
    cannot cut a blocking call short. Every build has a bound (timeouts.build_s), so the
    warning came once per variant; what it says is in infra/README.md (Time bounds)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is running in a worker thread" not in record.getMessage()


logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutCaveat())


class LettingGoThreadPoolTaskRunner(ThreadPoolTaskRunner):
    """Prefect's thread pool runner, except that leaving it on an exception (Ctrl-C, SIGTERM,
    the night's time bound) does not wait for the threads still running a task: Prefect's
    waits, and a build that runs on for minutes held Ctrl-C for as long. Those threads' work is
    lost anyway; the process that is ending stops them with itself."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        executor = self._executor
        if exc_type is not None and executor is not None:
            for event in self._cancel_events.values():  # what Prefect's cancel_all sets
                event.set()
            executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc_value, traceback)


def make_task_runner(cfg: TaskRunnerConfig) -> TaskRunner[Any]:
    if cfg.kind == "threads":
        return LettingGoThreadPoolTaskRunner(max_workers=cfg.max_workers)
    from prefect_dask import DaskTaskRunner

    if cfg.address is not None:
        scheduler_answers(cfg.address)
        # workers on GPU nodes are started with `--resources GPU=1` (infra/README.md)
        return DaskTaskRunner(address=cfg.address)
    # every local worker declares the GPU resource: local TensorRT builds never wait forever (a
    # machine without TensorRT skips them and asks the cuda runner's work pool instead)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "resources": {GPU: 1},
            "dashboard_address": None,
        }
    )


def scheduler_answers(address: str, timeout_s: float = 5.0) -> None:
    """One TCP connection to the scheduler before any work: nothing listening took Dask 30 s
    and six tracebacks to say; this says it in one line."""
    from urllib.parse import urlsplit

    from tasks.errors import ConfigError

    parts = urlsplit(address)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 0), timeout_s):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"task_runner.address {address}: no Dask scheduler answers ({reason}); start one "
            "(dask scheduler) or leave the address out for a LocalCluster"
        ) from None


def missing_gpu_reason(cfg: TaskRunnerConfig) -> str | None:
    """Why a build that asks for a GPU worker could never start here, or None. On an existing
    scheduler none of whose workers declares the GPU resource, such a task sat in the
    scheduler's no-worker state for ever and the night never ended; a LocalCluster declares it
    on every worker (the build there skips itself where TensorRT is missing)."""
    if cfg.kind != "dask" or cfg.address is None:
        return None
    from distributed import Client

    with Client(cfg.address, timeout=30) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    if any(w.get("resources", {}).get(GPU, 0) >= 1 for w in workers.values()):
        return None
    return (
        f"needs a CUDA runner: no worker of the Dask cluster at {cfg.address} declares the "
        f"{GPU} resource (start one on a GPU node with `dask worker ... --resources {GPU}=1`)"
    )


@contextlib.contextmanager
def gpu_annotation(cfg: TaskRunnerConfig, build_on: str | None) -> Iterator[None]:
    """On Dask, a task that builds on a CUDA runner asks for a GPU worker; elsewhere, nothing."""
    if cfg.kind != "dask" or build_on != "cuda":
        yield
        return
    import dask

    with dask.annotate(resources={GPU: 1}):
        yield


def in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def pin_worker_threads() -> None:
    """In a Dask worker, one torch thread: the worker runs one task and its siblings are busy."""
    if in_dask_worker():
        import torch

        torch.set_num_threads(1)


def builder() -> str:
    """host:pid of the process that runs this task (logged and returned, not part of any key)."""
    return f"{socket.gethostname()}:{os.getpid()}"
