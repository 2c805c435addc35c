"""Benchmarks on real runners: two process work pools with real workers (started here) against a
real Prefect server; the nightly flow dispatches `benchmark/<runner>` to both and collects their rows.
Killing one worker mid-run gives that runner failed rows with a reason and a completed review."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import LENIENT_GATES, REPO_ROOT, write_params
from tests.processes import Processes, kill

pytestmark = pytest.mark.slow

POOLS = {"cloud-cpu": "mp-test-cloud", "edge-cpu": "mp-test-edge", "cuda": "mp-test-cuda"}
VARIANTS = {
    "tflite_int8": {"technique": "tflite_int8", "source": "baseline", "calibration_samples": 64},
    "tensorrt_fp16": {"technique": "tensorrt_fp16", "source": "baseline"},
}


def _create_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def _start_worker(
    started: Processes, api_url: str, pool: str, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PREFECT_API_URL=api_url, TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return started.popen(
        [
            str(Path(sys.executable).parent / "prefect"),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
        ],
        env=env,
        log=log,
        cwd=REPO_ROOT,
    )


def _online(pool: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    with get_client(sync_client=True) as client:
        return bool(
            client.read_workers_for_work_pool(
                pool,
                worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])),
                limit=5,
                offset=0,
            )
        )


@pytest.fixture(scope="module")
def workers(
    prefect_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Both pools, the benchmark flow deployed to each, and a live worker polling each."""
    from flows.benchmark import benchmark_runner

    logs = tmp_path_factory.mktemp("worker-logs")
    for runner, pool in POOLS.items():
        _create_pool(pool)
        # to_deployment + apply: registers the deployment and nothing else (`deploy()` also
        # queries active workers, which got a 422 before fastapi was pinned to 0.150)
        source = benchmark_runner.from_source(
            source=str(REPO_ROOT), entrypoint="flows/benchmark.py:benchmark_runner"
        )
        source.to_deployment(name=runner, work_pool_name=pool).apply()
    # every worker stopped on every path (setup failing included): SIGTERM to its process
    # group, then SIGKILL, so no worker and no flow run it started outlives the module
    with Processes() as started:
        processes = {
            runner: _start_worker(started, prefect_server, pool, logs / f"{runner}.log")
            for runner, pool in POOLS.items()
        }
        deadline = time.monotonic() + 300  # a loaded machine starts three workers slowly
        while not all(_online(pool) for pool in POOLS.values()):
            assert time.monotonic() < deadline, "workers never came online"
            time.sleep(1)
        yield {"processes": processes, "logs": logs}


def _params(tmp_path: Path, edge_timeout: int) -> Path:
    path = write_params(
        tmp_path, {"gates": LENIENT_GATES, "registry": {"uri": str(tmp_path / "registry")}}
    )
    raw = yaml.safe_load(path.read_text())
    raw["variants"], raw["gates"]["per_variant"] = VARIANTS, {}
    raw["benchmark"]["runners"] = list(POOLS)
    raw["benchmark"]["store_uri"] = str(tmp_path / "store")
    raw["runners"] = {
        "cloud-cpu": {
            "kind": "cpu",
            "threads": 0,
            "work_pool": POOLS["cloud-cpu"],
            "timeout_s": 600,
        },
        "edge-cpu": {
            "kind": "cpu",
            "threads": 1,
            "cpu_affinity": [0],
            "memory_limit_mb": 2048,
            "work_pool": POOLS["edge-cpu"],
            "timeout_s": edge_timeout,
        },
        # this machine has no GPU: the cuda runner's worker runs here and must say so honestly
        "cuda": {"kind": "cuda", "work_pool": POOLS["cuda"], "timeout_s": 600},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _rows(result: Any) -> dict[tuple[str, str], dict[str, Any]]:
    manifest = json.loads(Path(result.manifest_uri).read_text())
    rows = {}
    for variant in manifest["variants"].values():
        for row in variant["metrics"]["benchmarks"]:
            rows[(row["variant"], row["runner"])] = row
    return rows


def test_nightly_collects_rows_from_every_runner(workers: dict, tmp_path: Path) -> None:
    from flows.nightly import nightly

    result = nightly(
        params_file=str(_params(tmp_path, 600)), approval="auto", workdir=str(tmp_path / "work")
    )
    assert result.status == "published"
    rows = _rows(result)
    for runner in ("cloud-cpu", "edge-cpu"):
        for variant in ("baseline", "tflite_int8"):
            row = rows[(variant, runner)]
            assert row["status"] == "ok", row
            assert row["p50_ms"] > 0 and len(row["p50_trials_ms"]) == 2
    assert rows[("baseline", "edge-cpu")]["host"]["threads"] == 1
    assert rows[("baseline", "edge-cpu")]["host"]["affinity"] == [0]
    # the CUDA runner measures TensorRT engines only, and builds them itself: without TensorRT
    # it reports that instead of faking an engine
    assert rows[("tflite_int8", "cuda")]["status"] == "skipped"
    review = json.loads((Path(result.run_dir) / "review.json").read_text())
    engine = [r for r in review if r["variant"] == "tensorrt_fp16" and r["runner"] == "cuda"]
    assert engine and "engine not built: needs a CUDA runner with TensorRT" in engine[0]["reason"]
    assert "tensorrt_fp16" not in result.published


def test_killed_worker_gives_failed_rows_and_a_completed_review(
    workers: dict, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.nightly import nightly

    outcome: dict[str, Any] = {}
    params = _params(tmp_path, edge_timeout=30)

    def run() -> None:
        try:
            outcome["result"] = nightly(
                params_file=str(params), approval="auto", workdir=str(tmp_path / "work")
            )
        except BaseException as exc:  # surfaced below
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # kill the edge worker (and the flow run process it started) as soon as its run is running
    with get_client(sync_client=True) as client:
        while time.monotonic() - started < 600:
            running = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
                ),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["edge-cpu"])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=5,
                offset=0,
            )
            if running:
                break
            time.sleep(0.5)
    edge = workers["processes"]["edge-cpu"]
    kill(edge)  # SIGKILL to its group: its flow-run process dies with it
    thread.join(timeout=600)
    assert not thread.is_alive(), "the nightly flow hung on a dead runner"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.status == "published"
    rows = _rows(result)
    assert rows[("tflite_int8", "cloud-cpu")]["status"] == "ok"
    edge_row = rows[("tflite_int8", "edge-cpu")]
    assert edge_row["status"] == "failed"
    # the killed worker takes its flow run process with it: the run crashes, or (if the kill came
    # first) nobody picks it up and the 30 s timeout ends the wait
    assert "ended Crashed" in edge_row["reason"] or "timed out after 30s" in edge_row["reason"]
    review = json.loads((Path(result.run_dir) / "review.json").read_text())
    edge_review = [r for r in review if r["variant"] == "tflite_int8" and r["runner"] == "edge-cpu"]
    assert edge_review and "benchmark on edge-cpu failed: " in edge_review[0]["reason"]
