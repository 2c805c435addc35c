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
from tests.conftest import REPO_ROOT, write_params

pytestmark = pytest.mark.slow

REQUIRED_KEYS = {
    "status",
    "accuracy",
    "accuracy_drop",
    "agreement",
    "size_bytes",
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


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dvc-repo")
    for name in ("tasks", "flows", "inputs"):
        shutil.copytree(REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    write_params(repo)
    dvc = str(Path(sys.executable).parent / "dvc")
    _run(["git", "init", "-q"], repo)
    _run([dvc, "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    return repo


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
