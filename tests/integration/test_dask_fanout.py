"""The compression fan-out on Dask: a real LocalCluster (2 process workers, one thread each) builds
two variants in two different worker processes; on an existing scheduler, killing the worker that
is building a variant mid-run still ends in a correct, published result."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import processes
from tests.helpers import FAST_BENCHMARK, LENIENT_GATES, REPO_ROOT, free_port, write_params

pytestmark = pytest.mark.slow

TWO_VARIANTS = yaml.safe_load(
    (REPO_ROOT / "tests" / "params" / "two-cheap-variants.yaml").read_text()
)


def _params(tmp_path: Path, task_runner: dict[str, Any]) -> Path:
    path = write_params(
        tmp_path,
        {
            "gates": LENIENT_GATES,
            "benchmark": FAST_BENCHMARK,
            "train": {"epochs": 4},  # the subject is where variants build, not accuracy
            "task_runner": task_runner,
        },
    )
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = TWO_VARIANTS["variants"]  # replace, not merge: only these two
    raw["gates"]["per_variant"] = {}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _nightly(params: Path, tmp_path: Path) -> Any:
    from flows.nightly import nightly

    return nightly(
        params_file=str(params),
        approval="auto",
        registry_uri=str(tmp_path / "registry"),
        workdir=str(tmp_path / "work"),
    )


def _pid(builder: str) -> int:
    return int(builder.rsplit(":", 1)[1])


def test_local_cluster_builds_two_variants_in_two_worker_processes(
    prefect_server: str, tmp_path: Path
) -> None:
    params = _params(tmp_path, {"kind": "dask", "n_workers": 2})
    result = _nightly(params, tmp_path)
    assert result.status == "published", result
    assert "tflite_int8" in result.published, result
    pids = {name: _pid(result.builders[name]) for name in ("tflite_int8", "pruned")}
    assert pids["tflite_int8"] != pids["pruned"], result.builders
    assert os.getpid() not in pids.values()  # worker processes, not the flow's


def test_killing_a_worker_mid_build_still_publishes(prefect_server: str, tmp_path: Path) -> None:
    from distributed import Client

    dask = Path(sys.executable).parent / "dask"
    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    worker_args = ["--nthreads", "1", "--no-nanny", "--resources", "GPU=1", "--no-dashboard"]
    with processes.Processes(grace_s=10) as started:
        started.popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
             "--no-dashboard"],
            env=env, log=tmp_path / "scheduler.log",
        )  # fmt: skip
        time.sleep(2)
        workers = [
            started.popen([dask, "worker", address, *worker_args], env=env, log=tmp_path / f"w{i}.log")
            for i in range(2)
        ]  # fmt: skip
        client = Client(address, timeout=60)
        try:
            client.wait_for_workers(2, timeout=60)
            pid_of = client.run(os.getpid)  # worker address → pid
            params = _params(tmp_path, {"kind": "dask", "address": address})
            outcome: dict[str, Any] = {}
            run = threading.Thread(
                target=lambda: outcome.update(result=_nightly(params, tmp_path)), daemon=True
            )
            run.start()
            victim = None
            deadline = time.monotonic() + 150
            while victim is None and run.is_alive() and time.monotonic() < deadline:
                for worker, keys in client.processing().items():
                    if any("compress" in str(key) for key in keys):
                        victim = worker
                        break
                time.sleep(0.2)
            assert victim is not None, "no compress task was seen running on a worker"
            killed = next(w for w in workers if w.pid == pid_of[victim])
            processes.kill(killed)
            run.join(timeout=170)
            assert not run.is_alive(), "the nightly did not finish after a worker was killed"
        finally:
            client.close()
    result = outcome["result"]
    assert result.status == "published", result
    assert "tflite_int8" in result.published, result
    assert set(result.builders) == {"tflite_int8", "pruned"}
    survivor = next(pid for w, pid in pid_of.items() if w != victim)
    # every variant ends up built by a live worker; the killed one built nothing that was kept
    assert {_pid(b) for n, b in result.builders.items()} == {survivor} or all(
        _pid(b) != pid_of[victim] for b in result.builders.values()
    ), result.builders


def test_a_cluster_without_gpu_workers_skips_gpu_builds_and_keeps_results_in_the_workdir(
    prefect_server: str, tiny_workspace: Path
) -> None:
    """An existing scheduler none of whose workers declares the GPU resource: the TensorRT
    build is skipped saying why, instead of sitting in the scheduler's no-worker state for ever
    (the night never ended). The cached builds' results live in the workdir, where a worker
    that takes over from a lost one finds them, not in this machine's ~/.prefect/storage."""
    from distributed import LocalCluster

    from flows.variants import build_variants
    from tasks.io import read_json
    from tasks.params_file import parse_params

    baseline = tiny_workspace / "models" / "baseline"
    sha = read_json(baseline / "baseline.json")["sha256"]
    work = tiny_workspace / "work-no-gpu"
    with LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None, protocol="tcp"
    ) as cluster:
        params = parse_params(
            {
                "variants": {
                    "tensorrt_fp16": {"technique": "tensorrt_fp16", "source": "baseline"},
                    "onnx_int8": {"technique": "onnx_int8", "source": "baseline"},
                },
                "task_runner": {"kind": "dask", "address": cluster.scheduler_address},
            }
        )
        from flows.runners import make_task_runner

        fan_out = build_variants.with_options(task_runner=make_task_runner(params.task_runner))
        started = time.monotonic()
        built = fan_out(params, sha, "no-gpu", str(baseline), str(tiny_workspace / "data"), work)
        assert time.monotonic() - started < 240
        again = fan_out(params, sha, "no-gpu", str(baseline), str(tiny_workspace / "data"), work)
    skipped = built.records["tensorrt_fp16"]
    assert skipped.status == "skipped", skipped
    assert "no worker of the Dask cluster" in (skipped.reason or "")
    assert "--resources GPU=1" in (skipped.reason or "")
    assert built.records["onnx_int8"].status == "ok", built.records["onnx_int8"]
    assert list((work / "results").iterdir()), "no result records in <workdir>/results"
    assert set(again.cached) == {"baseline", "onnx_int8"}, again.cached


def test_a_technique_params_yaml_names_is_built_in_a_fresh_worker_process(
    prefect_server: str, tiny_workspace: Path
) -> None:
    """A technique from `techniques:` in params.yaml is found only by the processes that
    loaded that file; a Dask process worker unpickles the variant's config and used to answer
    `unknown technique 'bf16_weights'`. The dispatch now finds the declaration beside the
    config's class, which unpickling imported."""
    from flows.runners import make_task_runner
    from flows.variants import build_variants
    from tasks.io import read_json
    from tasks.params_file import parse_params
    from tests.helpers import PLUGIN_TECHNIQUE

    params = parse_params(
        {
            "techniques": [PLUGIN_TECHNIQUE],
            "variants": {"bf16": {"technique": "bf16_weights", "source": "baseline"}},
            "task_runner": {"kind": "dask", "n_workers": 1},
        }
    )
    baseline = tiny_workspace / "models" / "baseline"
    sha = read_json(baseline / "baseline.json")["sha256"]
    fan_out = build_variants.with_options(task_runner=make_task_runner(params.task_runner))
    built = fan_out(
        params, sha, "plugin-in-worker", str(baseline), str(tiny_workspace / "data"),
        tiny_workspace / "work-plugin-worker",
    )  # fmt: skip
    record = built.records["bf16"]
    assert record.status == "ok", record.reason
    assert _pid(built.builders["bf16"]) != os.getpid()  # built in the worker process
