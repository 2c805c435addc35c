"""The contract every technique keeps, checked over the technique table rather than a hand-kept
list: each declared technique, built-in or a plugin, builds from the baseline with its default
settings a variant that its declared runtime loads and that classifies the tiny digits well above
chance, and its record carries its lineage. A new technique gets this test without editing it.

A technique whose runtime needs another runner kind (TensorRT: a CUDA runner) is recorded here as
skipped with why, which is its contract on a CPU machine; its engine path is tested where it
imports (tests/unit/test_variants.py::test_tensorrt_engine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.compress import compress
from tasks.data import load_split
from tasks.params_file import load_params
from tasks.runtimes import RUNTIMES, load_predictor
from tasks.techniques import technique_table
from tasks.variant import model_digest, read_record
from tests.helpers import PLUGIN_TECHNIQUE

TABLE = technique_table((PLUGIN_TECHNIQUE,))


# a technique that fine-tunes (starts from torch) takes 5-25 s here: `make test`, not test-fast
CASES = [
    pytest.param(name, marks=pytest.mark.slow) if t.starts_from == "torch" else name
    for name, t in TABLE.items()
]


@pytest.mark.parametrize("name", CASES)
def test_every_technique_builds_a_variant_its_runtime_evaluates(
    name: str, tiny_workspace: Path, tmp_path: Path
) -> None:
    technique = TABLE[name]
    params = load_params(tiny_workspace / "params.yaml")
    config = technique.config.model_validate({"technique": name, "source": "baseline"})
    params = params.model_copy(
        update={"techniques": [PLUGIN_TECHNIQUE], "variants": {f"contract_{name}": config}}
    )
    out = tmp_path / name
    record = compress(
        params,
        f"contract_{name}",
        tiny_workspace / "data",
        tiny_workspace / "models" / "baseline",
        tiny_workspace / "variants" / "baseline",
        out,
    )
    assert read_record(out) == record  # what it returned is what it wrote
    baseline = read_record(tiny_workspace / "variants" / "baseline")
    assert (record.technique, record.source) == (name, "baseline")
    assert record.settings["technique"] == name
    # the baseline it came from: its ONNX file (a conversion) or its weights (a fine-tune)
    assert record.baseline_sha256 in (baseline.model_sha256, baseline.parent_sha256)
    assert record.preprocess == baseline.preprocess  # a consumer feeds it as the baseline
    if "cpu" not in RUNTIMES[technique.runtime].runner_kinds:
        assert record.status == "skipped" and record.reason and "runner" in record.reason
        return
    assert record.status == "ok", record.reason
    assert record.runtime == technique.runtime
    assert record.model_file is not None
    assert record.model_sha256 == model_digest(out, record.model_file)
    test = load_split(tiny_workspace / "data", "test")
    predictor = load_predictor(out)
    accuracy = float(np.mean(predictor(test.x).argmax(axis=1) == test.y))
    assert accuracy > 0.5, f"{name}: accuracy {accuracy:.3f} on 10 classes"
