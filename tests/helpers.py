"""What tests share besides fixtures: the tiny configuration, the repo's root, params and
inputs writers, the environment of a CLI subprocess. Imported as `tests.helpers` (conftest.py
holds the fixtures and the process-wide settings pytest must see first)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

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
        "pruned": {
            "technique": "pruned",
            "source": "baseline",
            "ratio": 0.5,
            "round_to": 4,  # width 8: a multiple of 8 would leave the first stage unpruned
            "finetune_epochs": 2,
        },
        "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 10},
        "tensorrt_fp16": {"technique": "tensorrt_fp16", "source": "baseline"},
        "distilled_int8": {
            "technique": "tflite_int8",
            "source": "distilled",
            "calibration_samples": 64,
        },
    },
}

TINY_SPLITS = {"train": 0.6, "calib": 0.1, "val": 0.1, "test": 0.2}

# A technique from outside tasks/ (tests/plugins/bf16_weights.py), as params.yaml names one: the
# tests run it through the config, the dispatch, `dvc repro` and the nightly flow.
PLUGIN_TECHNIQUE = "tests.plugins.bf16_weights:TECHNIQUE"
# One whose build crashes (raises, or its build process is killed): tests/plugins/crashing.py.
CRASHING_TECHNIQUE = "tests.plugins.crashing:TECHNIQUE"

# Tiny models on 16x16 digits: gates low enough that every built variant passes unless forced.
LENIENT_GATES: dict = {
    "defaults": {
        "min_accuracy": 0.3,
        "max_accuracy_drop": 60.0,
        "max_worst_class_drop": 100.0,
        "min_agreement": 0.3,
        # tiny models are overhead-bound: whether a variant beats the baseline is tested on its
        # own (tests/unit/test_validate.py), not by every run that needs variants to pass
        "min_speedup": None,
        "min_size_reduction": None,
        "max_slowdown": None,
    },
    "per_variant": {},
}
# One runner, one short trial: for tests whose subject is not the measurement.
FAST_BENCHMARK: dict = {
    "runners": ["cloud-cpu"],
    "warmup": 1,
    "iterations": 10,
    "max_seconds": 0.5,
    "trials": 1,
    "throughput_batch": 4,
    "throughput_seconds": 0.2,
}


def write_params(directory: Path, overrides: dict | None = None) -> Path:
    """params.yaml for tests: the repo's defaults with the tiny overrides (and any extra) on top."""
    from tasks.params_file import _deep_merge

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw = _deep_merge(raw, {k: v for k, v in TINY_OVERRIDES.items() if k != "variants"})
    raw["variants"] = TINY_OVERRIDES["variants"]
    raw = _deep_merge(raw, overrides or {})
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_random_inputs(root: Path) -> dict:
    """Random 16x16 images (30 per class, 10 classes) in `inputs/data.npz` and a linear
    torch.export model in `inputs/model.pt2`: inputs for runs whose subject is not accuracy.
    Returns the params overrides that point at them, with every accuracy gate off."""
    import numpy as np
    import torch
    from torch import nn

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 30)
    (root / "inputs").mkdir(parents=True, exist_ok=True)
    x = rng.integers(0, 256, (len(y), 1, 16, 16), dtype=np.uint8)
    np.savez(root / "inputs" / "data.npz", x=x, y=y)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10)).eval()
    exported = torch.export.export(model, (torch.zeros(1, 1, 16, 16),))
    torch.export.save(exported, str(root / "inputs" / "model.pt2"))
    return {
        "data": {"source": "npz", "path": "inputs/data.npz", "normalize": "train"},
        "baseline": {"source": "pt2", "path": "inputs/model.pt2"},
        "gates": {"defaults": dict.fromkeys(LENIENT_GATES["defaults"]), "per_variant": {}},
    }


def cli_env(credentials: dict[str, str], api_url: str | None = None) -> dict[str, str]:
    """The environment of a `python -m flows.cli` subprocess: this one's, with the AWS settings
    replaced by `credentials` and no AWS files or instance metadata to fall back on, and the
    Prefect API at `api_url` when given (a shared test server instead of a temporary one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | credentials
    env |= {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def load_script(name: str) -> Any:
    """scripts/<name>.py as a module (scripts/ is not a package): for testing its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A loopback port nothing listens on now (a server started on it next gets it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
