"""The edge runner's slim install: benchmarking needs only numpy and the light runtimes."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import pytest

from tasks.runtimes import EDGE_RUNTIMES, RUNTIMES
from tasks.variant import read_record
from tests import processes
from tests.helpers import REPO_ROOT

HEAVY = (
    "torch",
    "torch_pruning",
    "tensorflow",
    "tf_keras",
    "keras",
    "onnx2tf",
    "great_expectations",
    "dvc",
    "sklearn",
)
HEAVY_DISTRIBUTIONS = {
    "torch",
    "torch-pruning",
    "tensorflow",
    "tf-keras",
    "keras",
    "onnx2tf",
    "great-expectations",
    "dvc",
    "scikit-learn",
}

# Installed as sitecustomize.py on PYTHONPATH: every Python process (and its children) refuses
# to import the heavy libraries, as on an edge device that does not have them.
BLOCKER = f"""
import importlib.abc, sys

class _EdgeBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"blocked on an edge runner: {{name}}")
        return None

sys.meta_path.insert(0, _EdgeBlocker())
"""


def test_edge_extra_declares_no_heavy_dependency() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    slim = project["dependencies"] + project["optional-dependencies"]["edge"]
    names = {
        dep.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip()
        for dep in slim
    }
    assert names & HEAVY_DISTRIBUTIONS == set()
    assert {"onnxruntime", "ai-edge-litert", "numpy"} <= names
    # a runtime the table marks `edge` has every package it needs in the slim install; the others
    # (TensorRT: tensorrt and torch) need at least one it lacks
    declared = {name: set(runtime.packages) <= names for name, runtime in RUNTIMES.items()}
    assert declared == {name: runtime.edge for name, runtime in RUNTIMES.items()}
    # `edge-openvino` is the slim install plus OpenVINO: still nothing heavy (NNCF, which builds
    # the IR and pulls scikit-learn and scipy, stays in `full`), and what the runtime needs
    openvino_extra = project["optional-dependencies"]["edge-openvino"]
    assert "modelpress[edge]" in openvino_extra
    with_openvino = names | {dep.split("==")[0] for dep in openvino_extra}
    assert with_openvino & (HEAVY_DISTRIBUTIONS | {"nncf"}) == set()
    assert set(RUNTIMES["openvino"].packages) <= with_openvino
    assert RUNTIMES["openvino"].extra == "edge-openvino" and not RUNTIMES["openvino"].edge


@pytest.mark.slow  # a conversion and a measuring process with imports blocked (~10 s)
def test_benchmark_path_runs_with_torch_and_tensorflow_blocked(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    from tasks.compress import compress
    from tasks.params_file import load_params

    params = load_params(tiny_workspace / "params.yaml")
    variant = tmp_path / "variants" / "tflite_int8"
    compress(
        params,
        "tflite_int8",
        tiny_workspace / "data",
        tiny_workspace / "models" / "baseline",
        tiny_workspace / "variants" / "baseline",
        variant,
    )
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{REPO_ROOT}")
    script = f"""
import json, sys
from pathlib import Path
import numpy as np
for blocked in {HEAVY!r}:
    try:
        __import__(blocked)
    except ImportError:
        continue
    raise SystemExit(f"{{blocked}} was importable: the blocker is not active")
import tasks.runtimes.litert, tasks.runtimes.onnxruntime, tasks.runtimes.tensorrt
from flows.benchmark import benchmark_variants
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.data import load_split
test = load_split(Path({str(tiny_workspace / "data")!r}), "test")
np.savez({str(tmp_path / "images.npz")!r}, x=test.x)
cfg = BenchmarkConfig(iterations=20, warmup=2, max_seconds=1.0, trials=2, throughput_batch=4, throughput_seconds=0.1)
dirs = {{"baseline": Path({str(tiny_workspace / "variants" / "baseline")!r}), "tflite_int8": Path({str(variant)!r})}}
rows = benchmark_variants("edge-cpu", RunnerProfile(threads=1, cpu_affinity=[0], memory_limit_mb=2048), cfg, dirs,
                          Path({str(tmp_path / "images.npz")!r}))
print(json.dumps([[r.variant, r.status, r.reason, r.p50_ms, sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})] for r in rows]))
"""
    done = processes.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(variant, status) for variant, status, *_ in rows] == [
        ("baseline", "ok"),
        ("tflite_int8", "ok"),
    ], rows
    assert all(p50 and p50 > 0 for *_, p50, _ in rows)
    assert all(heavy == [] for *_, heavy in rows)
    # the two variants measured cover every runtime the table says the edge install runs
    measured = {read_record(tiny_workspace / "variants" / "baseline").runtime}
    assert measured | {read_record(variant).runtime} == set(EDGE_RUNTIMES)


@pytest.mark.slow
def test_pip_resolves_the_edge_extra_without_heavy_packages(tmp_path: Path) -> None:
    """What `pip install .[edge]` would install on a device (resolved against the package index)."""
    report = tmp_path / "report.json"
    done = processes.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--constraint",
            str(REPO_ROOT / "constraints.txt"),
            f"{REPO_ROOT}[edge]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    installed = {
        item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]
    }
    assert {"onnxruntime", "ai-edge-litert", "numpy", "prefect"} <= installed
    assert {p for name in EDGE_RUNTIMES for p in RUNTIMES[name].packages} <= installed
    assert installed & HEAVY_DISTRIBUTIONS == set(), installed & HEAVY_DISTRIBUTIONS
