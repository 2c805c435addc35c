"""Shared fixtures: tiny real data and tiny real models, built once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Prefect reads its settings on import: keep its home, results and telemetry inside the test run.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="mp-prefect-home-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_PREFECT_HOME / "storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("PREFECT_API_URL", None)

# A small but real configuration: digits at 16x16, a narrow CNN, short training.
TINY_OVERRIDES: dict = {
    "data": {"image_size": 16},
    "train": {"width": 8, "epochs": 12},
    # short benchmark trials: tests check behaviour, `make bench` measures
    "benchmark": {
        "iterations": 20,
        "warmup": 2,
        "max_seconds": 1.0,
        "trials": 2,
        "throughput_batch": 8,
        "throughput_seconds": 0.2,
    },
    "variants": {
        "tflite_int8": {
            "technique": "tflite_int8",
            "source": "baseline",
            "calibration_samples": 64,
        },
        "pruned": {"technique": "pruned", "source": "baseline", "ratio": 0.5, "finetune_epochs": 2},
        "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 10},
        "tensorrt_fp16": {"technique": "tensorrt_fp16", "source": "baseline"},
        "distilled_int8": {
            "technique": "tflite_int8",
            "source": "distilled",
            "calibration_samples": 64,
        },
    },
}


def write_params(directory: Path, overrides: dict | None = None) -> Path:
    """params.yaml for tests: the repo's defaults with the tiny overrides (and any extra) on top."""
    from tasks.config import _deep_merge

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw = _deep_merge(raw, {k: v for k, v in TINY_OVERRIDES.items() if k != "variants"})
    raw["variants"] = TINY_OVERRIDES["variants"]
    raw = _deep_merge(raw, overrides or {})
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with prepared tiny data, a trained tiny baseline and its ONNX export."""
    from tasks.config import load_params
    from tasks.data import load_split, prepare, write_prepared
    from tasks.export import write_onnx_variant
    from tasks.io import read_json
    from tasks.train import load_baseline, make_baseline, save_baseline

    root = tmp_path_factory.mktemp("tiny")
    params = load_params(write_params(root))
    write_prepared(prepare(params.data, params.seed, root=root), root / "data")
    result = make_baseline(params.baseline, params.train, root / "data", params.seed, root=root)
    save_baseline(result, params.baseline, root / "models" / "baseline", root=root)
    from tasks.data import load_preprocess

    preprocess = load_preprocess(root / "data")
    model = load_baseline(root / "models" / "baseline")
    test_x = preprocess.normalize(load_split(root / "data", "test").x)
    sha = read_json(root / "models" / "baseline" / "baseline.json")["sha256"]
    write_onnx_variant(
        model,
        preprocess,
        test_x,
        root / "variants" / "baseline",
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256=sha,
    )
    return root
