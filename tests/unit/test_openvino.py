"""OpenVINO: the runtime on a tiny real IR, and openvino_int8 built by NNCF from the tiny baseline,
evaluated, benchmarked and published like every other variant (a model in two files)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.errors import ModelError
from tasks.io import sha256_file
from tasks.measuring_process import measure_in_subprocess
from tasks.runtimes import RUNTIMES, load_predictor
from tasks.variant import model_digest, read_record, write_record
from tests.helpers import REPO_ROOT, write_params
from tests.unit.test_runtimes import CLASSES, IMAGES, _onnx_variant, _record, _reference_logits

OPENVINO = RUNTIMES["openvino"]
SHORT = BenchmarkConfig(
    warmup=2, iterations=20, max_seconds=1.0, trials=2, throughput_batch=4, throughput_seconds=0.1
)
EDGE = RunnerProfile(threads=1, cpu_affinity=[0], memory_limit_mb=2048)
IMAGES_16 = np.random.default_rng(3).uniform(0, 1, (8, 1, 16, 16)).astype(np.float32)  # tiny digits


@pytest.fixture(scope="module")
def ir_variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The linear test model of test_runtimes as an fp32 OpenVINO IR (xml + bin)."""
    import openvino as ov

    work = tmp_path_factory.mktemp("ir")
    source = _onnx_variant(work / "onnx")
    directory = work / "tiny"
    directory.mkdir()
    model = ov.Core().read_model(str(source / "model.onnx"))
    ov.save_model(model, str(directory / OPENVINO.model_file), compress_to_fp16=False)
    write_record(directory, _record("openvino", OPENVINO.model_file))
    return directory


@pytest.fixture(scope="module")
def openvino_int8(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """openvino_int8 of the tiny baseline, built by the compress stage from params.yaml; its
    directory sits beside a link to the baseline, as the evaluator expects."""
    from tasks.compress import compress
    from tasks.params_file import load_params

    work = tmp_path_factory.mktemp("openvino")
    variant = {"technique": "openvino_int8", "source": "baseline", "calibration_samples": 64}
    params = load_params(write_params(work, {"variants": {"openvino_int8": variant}}))
    (work / "variants").mkdir()
    (work / "variants" / "baseline").symlink_to(tiny_workspace / "variants" / "baseline")
    record = compress(
        params,
        "openvino_int8",
        tiny_workspace / "data",
        tiny_workspace / "models" / "baseline",
        work / "variants" / "baseline",
        work / "variants" / "openvino_int8",
    )
    assert record.status == "ok", record.reason
    return work / "variants" / "openvino_int8"


# ---- the runtime ------------------------------------------------------------------------------


def test_ir_runs_through_the_table_at_any_batch(ir_variant: Path) -> None:
    predictor = load_predictor(ir_variant, threads=1)
    logits = predictor(IMAGES)
    assert logits.dtype == np.float32 and logits.shape == (len(IMAGES), CLASSES)
    assert np.abs(logits - _reference_logits(IMAGES)).max() < 1e-4
    # batch 1 (the benchmark) after 40 (the evaluator) on the same request; outputs are copies
    first = predictor(IMAGES[:1])
    np.testing.assert_allclose(first, logits[:1], atol=1e-5)
    predictor(IMAGES[1:2])
    np.testing.assert_allclose(first, logits[:1], atol=1e-5)


def test_missing_weights_file_is_named(ir_variant: Path, tmp_path: Path) -> None:
    directory = tmp_path / "tiny"
    shutil.copytree(ir_variant, directory)
    (directory / "model.bin").unlink()
    with pytest.raises(ModelError, match=r"model\.bin: model file missing from the variant"):
        load_predictor(directory)


def test_a_machine_without_openvino_says_so_in_one_line(
    ir_variant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets on [edge]
    with pytest.raises(ModelError) as raised:
        load_predictor(ir_variant)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{ir_variant / 'model.xml'}: runtime 'openvino' is not installed")
    assert message.endswith("pip install '.[edge-openvino]'")


def test_model_digest_covers_every_model_file(ir_variant: Path, tmp_path: Path) -> None:
    directory = tmp_path / "tiny"
    shutil.copytree(ir_variant, directory)
    digest = model_digest(directory, "model.xml")
    assert digest != sha256_file(directory / "model.xml")
    weights = bytearray((directory / "model.bin").read_bytes())
    weights[0] ^= 1  # the same graph with other weights is another model
    (directory / "model.bin").write_bytes(bytes(weights))
    assert model_digest(directory, "model.xml") != digest
    # a model in one file keeps its own sha256 (existing variants keep their digests)
    single = _onnx_variant(tmp_path / "onnx")
    assert model_digest(single, "model.onnx") == sha256_file(single / "model.onnx")


# ---- openvino_int8 ----------------------------------------------------------------------------


def test_openvino_int8_is_an_int8_ir(openvino_int8: Path) -> None:
    import openvino as ov

    record = read_record(openvino_int8)
    assert (record.runtime, record.model_file) == ("openvino", "model.xml")
    assert sorted(p.name for p in openvino_int8.iterdir()) == [
        "model.bin",
        "model.xml",
        "variant.json",
    ]
    assert record.model_sha256 == model_digest(openvino_int8, "model.xml")
    assert record.extra["calibration_samples"] == 64
    assert record.settings["preset"] == "performance"
    model = ov.Core().read_model(str(openvino_int8 / "model.xml"))
    types = [op.get_type_name() for op in model.get_ops()]
    assert types.count("FakeQuantize") == record.extra["fake_quantize_ops"] >= 4
    # NNCF stores the convolution weights as int8 constants (decompressed by Convert/Multiply)
    int8_constants = [
        op
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8
    ]
    assert len(int8_constants) >= 3
    baseline = read_record(openvino_int8.parent / "baseline")
    assert record.parent_sha256 == baseline.model_sha256
    assert (record.params, record.macs) == (baseline.params, baseline.macs)


def test_openvino_int8_from_a_non_onnx_source_is_a_one_line_failure(
    openvino_int8: Path, tiny_workspace: Path, tmp_path: Path
) -> None:
    from tasks.compress import build_variant
    from tasks.techniques.openvino_int8 import OpenvinoInt8Config

    config = OpenvinoInt8Config(technique="openvino_int8", source="openvino_int8")
    record = build_variant(
        "twice",
        config,
        0,
        tiny_workspace / "data",
        tiny_workspace / "models" / "baseline",
        openvino_int8,
        tmp_path / "twice",
    )
    assert record.status == "failed"
    assert record.reason == "twice: source 'openvino_int8' is openvino, expected an ONNX model"


def test_openvino_int8_accuracy_is_the_baselines_through_the_evaluator(
    openvino_int8: Path, tiny_workspace: Path
) -> None:
    from tasks.data import load_split
    from tasks.evaluate import evaluate, model_size

    evaluation = evaluate(
        openvino_int8.parent, ["openvino_int8"], load_split(tiny_workspace / "data", "test")
    )
    row, base = evaluation.metrics["openvino_int8"], evaluation.metrics["baseline"]
    assert row.status == "ok" and row.runtime == "openvino"
    assert base.accuracy is not None and base.accuracy > 0.9
    assert row.accuracy is not None and row.accuracy_drop is not None
    assert row.accuracy_drop <= 2.0  # tiny test split (~360 images): within 7 of them
    assert row.agreement is not None and row.agreement >= 0.97
    # the size is the IR's two files
    assert row.size_bytes == model_size(openvino_int8)
    assert row.size_bytes == sum(
        (openvino_int8 / name).stat().st_size for name in ("model.xml", "model.bin")
    )


def test_the_benchmark_harness_measures_openvino_int8_on_edge_cpu(
    openvino_int8: Path, tiny_workspace: Path, tmp_path: Path
) -> None:
    from tasks.data import load_split

    images = tmp_path / "images.npz"
    np.savez(images, x=load_split(tiny_workspace / "data", "test").x[:16])
    row = measure_in_subprocess("openvino_int8", openvino_int8, images, "edge-cpu", EDGE, SHORT)
    assert row.status == "ok", row.reason
    assert row.p50_ms is not None and 0 < row.p50_ms < 50
    assert row.host["threads"] == 1 and row.host["affinity"] == [0]
    assert "openvino" in row.host["libraries"]
    assert row.size_bytes == sum(p.stat().st_size for p in openvino_int8.glob("model.*"))


def test_an_edge_runner_without_openvino_gives_a_one_line_reason(
    openvino_int8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.modules['openvino'] = None  # as on a runner with only .[edge]\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{REPO_ROOT}")
    images = tmp_path / "images.npz"
    np.savez(images, x=np.zeros((4, 1, 16, 16), dtype=np.float32))
    row = measure_in_subprocess("openvino_int8", openvino_int8, images, "edge-cpu", EDGE, SHORT)
    assert row.status == "failed"
    assert row.reason is not None and "\n" not in row.reason
    assert "runtime 'openvino' is not installed on this machine" in row.reason
    assert row.reason.endswith("pip install '.[edge-openvino]'")


def test_the_registry_publishes_and_verifies_both_ir_files(
    openvino_int8: Path, tmp_path: Path
) -> None:
    from dataclasses import asdict

    from tasks.registry import LocalRegistry, PublishEntry

    record = read_record(openvino_int8)
    assert record.input is not None
    entry = PublishEntry(
        directory=openvino_int8,
        format=OPENVINO.format,
        input=asdict(record.input),
        metrics={"accuracy": 0.98},
        gates={"passed": True},
        approval={"approved_by": "ada", "approved_at": "2026-11-25T08:00:00+00:00"},
    )
    registry = LocalRegistry(tmp_path / "registry")
    registry.publish("digits", "v1", {"openvino_int8": entry}, {"git_commit": None})
    manifest = registry.read_manifest("digits", "v1")
    listed = manifest["variants"]["openvino_int8"]
    assert listed["format"] == "openvino"
    assert sorted(listed["files"]) == ["model.bin", "model.xml", "variant.json"]
    assert listed["files"]["model.bin"]["sha256"] == sha256_file(openvino_int8 / "model.bin")
    report = registry.verify()
    assert report.ok and report.checked_files == 3
    pulled = registry.pull("digits", "v1", "openvino_int8", tmp_path / "pulled")
    np.testing.assert_array_equal(
        load_predictor(pulled)(IMAGES_16), load_predictor(openvino_int8)(IMAGES_16)
    )
    # a corrupted weights file is caught by verify, by name
    stored = tmp_path / "registry" / "digits" / "v1" / "openvino_int8" / "model.bin"
    stored.write_bytes(b"\0" + stored.read_bytes()[1:])
    problems = registry.verify().problems
    assert [(p.kind, p.key.endswith("openvino_int8/model.bin")) for p in problems] == [
        ("corrupt", True)
    ], json.dumps([p.__dict__ for p in problems])
