"""`dvc repro` in a fresh temp git repo: the whole pipeline runs, a second run does no work, and
changing one variant's params re-runs only that variant and what depends on it."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests import processes
from tests.helpers import REPO_ROOT, write_params

pytestmark = pytest.mark.slow

REQUIRED_KEYS = {
    "status",
    "accuracy",
    "accuracy_drop",
    "agreement",
    "size_bytes",
    "compressed_size_bytes",
    "params",
    "macs",
    "reason",
}


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="2")
    # stage commands call `python`: make it this interpreter, as `make run` does with the venv
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = processes.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (
        f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout + done.stderr


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _init_repo(repo: Path) -> Path:
    """The repo's code and dvc.yaml in `repo` (params.yaml written by the caller), committed."""
    for name in ("tasks", "flows", "inputs", "plugins"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO_ROOT / name, repo / name, ignore=ignore, dirs_exist_ok=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    dvc = str(Path(sys.executable).parent / "dvc")
    _run(["git", "init", "-q"], repo)
    _run([dvc, "init", "-q"], repo)
    shutil.copy(REPO_ROOT / ".dvcignore", repo / ".dvcignore")  # __pycache__ is no dependency
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    return repo


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dvc-repo")
    write_params(repo)
    return _init_repo(repo)


@pytest.fixture(scope="module")
def first_run(pipeline_repo: Path) -> str:
    return _run([str(Path(sys.executable).parent / "dvc"), "repro"], pipeline_repo)


def test_repro_runs_every_stage_and_writes_the_contract(
    pipeline_repo: Path, first_run: str
) -> None:
    variants = yaml.safe_load((pipeline_repo / "params.yaml").read_text())["variants"]
    expected = {"prepare", "train", "export", "evaluate", "report"} | {
        f"compress@{v}" for v in variants
    }
    assert _stages_run(first_run) == expected
    metrics = json.loads((pipeline_repo / "metrics" / "variants.json").read_text())
    assert set(metrics) == {"baseline", *variants}
    for name, row in metrics.items():
        assert set(row) >= REQUIRED_KEYS, name
    assert metrics["baseline"]["accuracy_drop"] == 0 and metrics["baseline"]["agreement"] == 1.0
    assert metrics["tflite_int8"]["status"] == "ok"
    assert metrics["tflite_int8"]["size_bytes"] * 2 < metrics["baseline"]["size_bytes"]
    assert metrics["tflite_int8"]["accuracy_drop"] <= 5.0
    assert metrics["pruned"]["macs"] <= 0.5 * metrics["baseline"]["macs"]
    assert metrics["distilled"]["params"] < 0.35 * metrics["baseline"]["params"]
    assert metrics["tensorrt_fp16"]["status"] in {"ok", "skipped"}
    assert (pipeline_repo / "reports" / "accuracy_vs_size.png").stat().st_size > 10_000
    assert "distilled_int8" in (pipeline_repo / "reports" / "summary.md").read_text()


def test_second_repro_does_no_work(pipeline_repo: Path, first_run: str) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    output = _run([dvc, "repro"], pipeline_repo)
    assert _stages_run(output) == set()
    status = json.loads(_run([dvc, "status", "--json"], pipeline_repo).strip().splitlines()[-1])
    assert status == {}


def test_changing_one_variant_reruns_only_it_and_its_dependents(
    pipeline_repo: Path, first_run: str
) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    params_file = pipeline_repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["variants"]["distilled"]["epochs"] += 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    output = _run([dvc, "repro"], pipeline_repo)
    assert _stages_run(output) == {
        "compress@distilled",
        "compress@distilled_int8",
        "evaluate",
        "report",
    }


# ---- a technique from outside the repo --------------------------------------------------------

PLUGIN_VARIANTS = {
    "bf16": {"technique": "bf16_weights", "source": "baseline"},
    # an ONNX-producing plugin variant is a source like pruned/distilled
    "bf16_cut": {"technique": "bf16_weights", "source": "bf16", "rounding": "truncate"},
}


@pytest.fixture(scope="module")
def plugin_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline with only variants of tests/plugins/bf16_weights.py, kept in the repo's
    plugins/ folder and named in params.yaml; tiny random inputs (an imported linear model)."""
    from tests.helpers import write_random_inputs

    repo = tmp_path_factory.mktemp("dvc-plugin-repo")
    overrides = write_random_inputs(repo)
    path = write_params(repo, overrides | {"techniques": ["plugins.bf16_weights:TECHNIQUE"]})
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = PLUGIN_VARIANTS
    raw["gates"]["per_variant"] = {}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    _init_repo(repo)
    shutil.copy(REPO_ROOT / "tests" / "plugins" / "bf16_weights.py", repo / "plugins")
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "plugin"], repo)
    return repo


def test_technique_from_outside_the_repo_runs_through_dvc_repro(plugin_repo: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    dvc = str(Path(sys.executable).parent / "dvc")
    first = _run([dvc, "repro"], plugin_repo)
    assert _stages_run(first) == {
        "prepare",
        "train",
        "export",
        "compress@bf16",
        "compress@bf16_cut",
        "evaluate",
        "report",
    }
    metrics = json.loads((plugin_repo / "metrics" / "variants.json").read_text())
    for name in PLUGIN_VARIANTS:
        assert metrics[name]["status"] == "ok", metrics[name]
        assert metrics[name]["agreement"] >= 0.95, metrics[name]
    record = json.loads((plugin_repo / "variants" / "bf16" / "variant.json").read_text())
    assert (record["technique"], record["runtime"], record["source"]) == (
        "bf16_weights",
        "onnxruntime",
        "baseline",
    )
    assert record["extra"]["weights_changed"] > 100  # the linear model's 2,570 weights, mostly
    model = onnx.load(str(plugin_repo / "variants" / "bf16" / "model.onnx"))
    for tensor in model.graph.initializer:
        bits = numpy_helper.to_array(tensor).astype(np.float32).view(np.uint32)
        assert not (bits & 0xFFFF).any(), f"{tensor.name} has bits below bf16 precision"

    # unchanged: nothing runs; the plugin's code changed: its variants run again
    assert _stages_run(_run([dvc, "repro"], plugin_repo)) == set()
    plugin = plugin_repo / "plugins" / "bf16_weights.py"
    plugin.write_text(plugin.read_text() + "\n# a comment: the module's bytes changed\n")
    assert _stages_run(_run([dvc, "repro"], plugin_repo)) == {"compress@bf16", "compress@bf16_cut"}
