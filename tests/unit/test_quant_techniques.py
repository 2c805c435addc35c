"""tflite_fp16, tflite_dynamic and onnx_int8 built from the tiny baseline through the dispatch:
what each file holds, what its record says, how close it stays to the baseline on the test split,
and the compressed size every variant gets next to its size (metrics, table, manifest)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from flows.cli import main as cli_main
from tasks.compress import build_variant
from tasks.data import load_split
from tasks.decision import ApprovalRecord
from tasks.evaluate import ZSTD_LEVEL, Evaluation, compressed_size, evaluate, model_size
from tasks.io import sha256_file, write_json
from tasks.params_file import load_params, parse_params
from tasks.publish import publish_entries
from tasks.registry import LocalRegistry
from tasks.report import format_table
from tasks.results import read_metrics
from tasks.review import GateVerdict, review_rows
from tasks.variant import read_record
from tests.helpers import REPO_ROOT

NEW = ("tflite_fp16", "tflite_dynamic", "onnx_int8")
CONFIGS = {
    "tflite_fp16": {"technique": "tflite_fp16", "source": "baseline"},
    "tflite_dynamic": {"technique": "tflite_dynamic", "source": "baseline"},
    "onnx_int8": {"technique": "onnx_int8", "source": "baseline", "calibration_samples": 64},
}


@pytest.fixture(scope="module")
def built(
    tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Evaluation]:
    """The three variants built by compress's dispatch beside a copy of the baseline, and the
    evaluation of all four on the test split."""
    variants = tmp_path_factory.mktemp("quant") / "variants"
    shutil.copytree(tiny_workspace / "variants" / "baseline", variants / "baseline")
    params = parse_params({"variants": CONFIGS})
    for name in NEW:
        build_variant(
            name,
            params.variants[name],
            0,
            tiny_workspace / "data",
            tiny_workspace / "models" / "baseline",
            variants / "baseline",
            variants / name,
        )
    return variants, evaluate(variants, list(NEW), load_split(tiny_workspace / "data", "test"))


def _size_ratio(variants: Path, name: str) -> float:
    return model_size(variants / name) / model_size(variants / "baseline")


@pytest.mark.parametrize("name", NEW)
def test_each_records_what_it_is_and_where_it_came_from(built: tuple, name: str) -> None:
    variants, _ = built
    record, baseline = read_record(variants / name), read_record(variants / "baseline")
    runtime, model_file = (
        ("onnxruntime", "model.onnx") if name == "onnx_int8" else ("litert", "model.tflite")
    )
    assert (record.status, record.technique, record.runtime) == ("ok", name, runtime)
    assert sorted(p.name for p in (variants / name).iterdir()) == [model_file, "variant.json"]
    assert record.model_sha256 == sha256_file(variants / name / model_file)
    assert record.source == "baseline"
    assert record.parent_sha256 == record.baseline_sha256 == baseline.model_sha256
    assert (record.macs, record.params) == (baseline.macs, baseline.params)
    assert record.settings == parse_params({"variants": CONFIGS}).variants[name].model_dump()
    # every one takes and returns float32: the quantization is inside the model
    assert record.input.dtype == record.output.dtype == "float32"
    assert record.input.quantization is None
    assert record.input.layout == ("NCHW" if name == "onnx_int8" else "NHWC")


@pytest.mark.parametrize(
    ("name", "max_drop_pts", "min_agreement"),
    # fp16 weights round at the 4th significant digit: the predictions barely move; int8
    # weights (and int8 activations for onnx_int8) may flip a borderline image or two
    [("tflite_fp16", 0.5, 0.995), ("tflite_dynamic", 2.0, 0.97), ("onnx_int8", 2.0, 0.97)],
)
def test_accuracy_stays_close_to_the_baseline_on_the_test_split(
    built: tuple, name: str, max_drop_pts: float, min_agreement: float
) -> None:
    _, evaluation = built
    row, base = evaluation.metrics[name], evaluation.metrics["baseline"]
    assert base.accuracy > 0.8  # a baseline that learned: agreement with chance proves nothing
    assert abs(row.accuracy_drop) <= max_drop_pts, (row.accuracy, base.accuracy)
    assert row.agreement >= min_agreement


@pytest.mark.slow  # two more conversions (about 25 s on 2 busy cores)
def test_fp16_is_half_the_fp32_model_and_dynamic_range_about_a_quarter(tmp_path: Path) -> None:
    """On params.yaml's network (width 32; random weights: size does not depend on training),
    against the float32 LiteRT file onnx2tf writes from the same SavedModel."""
    import torch

    from tasks.data import Preprocess
    from tasks.export import write_onnx_variant
    from tasks.models import ResNetCNN
    from tasks.techniques.tflite_dynamic import TfliteDynamicConfig, to_dynamic_range
    from tasks.techniques.tflite_fp16 import TfliteFp16Config, to_fp16

    preprocess = Preprocess(image_size=16, channels=1, num_classes=10, mean=[0.3], std=[0.3])
    torch.manual_seed(0)
    write_onnx_variant(
        ResNetCNN(num_classes=10, width=32).eval(),
        preprocess,
        np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32),
        tmp_path / "baseline",
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256="0" * 64,
    )
    fp16 = to_fp16(
        "fp16",
        TfliteFp16Config(**CONFIGS["tflite_fp16"]),
        tmp_path / "baseline",
        preprocess,
        tmp_path / "fp16",
    )
    dynamic = to_dynamic_range(
        "dyn",
        TfliteDynamicConfig(**CONFIGS["tflite_dynamic"]),
        tmp_path / "baseline",
        preprocess,
        tmp_path / "dyn",
    )
    fp32_bytes = fp16.extra["float32_tflite_bytes"]
    assert fp32_bytes == pytest.approx(model_size(tmp_path / "baseline"), rel=0.05)
    assert 0.47 <= model_size(tmp_path / "fp16") / fp32_bytes <= 0.55  # measured 0.504
    assert 0.22 <= model_size(tmp_path / "dyn") / fp32_bytes <= 0.30  # measured 0.262
    assert dynamic.extra["float32_tflite_bytes"] == pytest.approx(fp32_bytes, rel=0.01)


def test_the_tiny_models_shrink_less_where_the_flatbuffer_and_small_tensors_weigh_more(
    built: tuple,
) -> None:
    variants, _ = built
    fp32_bytes = read_record(variants / "tflite_fp16").extra["float32_tflite_bytes"]
    assert 0.45 <= model_size(variants / "tflite_fp16") / fp32_bytes <= 0.62  # measured 0.56
    # TensorFlow leaves tensors under 1,024 weights (the 8-channel stem and first stage, the
    # 1x1 shortcuts, the classifier: 11% of this model's weights) in float32
    assert 0.3 <= model_size(variants / "tflite_dynamic") / fp32_bytes <= 0.45  # measured 0.40


def test_tflite_tensors_hold_the_weights_in_the_promised_types(built: tuple) -> None:
    from ai_edge_litert.interpreter import Interpreter

    def weight_types(name: str) -> Counter[str]:
        interpreter = Interpreter(model_path=str(built[0] / name / "model.tflite"))
        # constant tensors of rank 4 (conv kernels) are the weights
        # rank-4 tensors with more than one row: conv kernels (activations have batch 1)
        return Counter(
            np.dtype(t["dtype"]).name
            for t in interpreter.get_tensor_details()
            if len(t["shape"]) == 4 and t["shape"][0] > 1
        )

    fp16 = weight_types("tflite_fp16")
    dynamic = weight_types("tflite_dynamic")
    assert fp16["float16"] >= 7, fp16  # the model's 9 convs, dequantized to float32 at load
    assert dynamic["int8"] >= 4, dynamic  # the convs of 1,024 weights or more


def test_onnx_int8_is_qdq_with_per_channel_weight_scales(built: tuple) -> None:
    variants, _ = built
    model = onnx.load(str(variants / "onnx_int8" / "model.onnx"))
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["QuantizeLinear"] >= 5 and ops["DequantizeLinear"] >= 10, ops
    assert ops["Conv"] >= 7  # still float convs between DQ/Q pairs: ORT fuses them at load
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv_weights = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    weight_dq = [
        node
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.output[0] in conv_weights
    ]
    assert len(weight_dq) == ops["Conv"]  # every conv's weight comes out of int8
    for node in weight_dq:
        weight, scale = initializers[node.input[0]], initializers[node.input[1]]
        assert weight.dtype == np.int8
        assert scale.shape == (weight.shape[0],)  # one scale per output channel
        assert {a.name: a.i for a in node.attribute}.get("axis", 1) == 0
    record = read_record(variants / "onnx_int8")
    assert record.extra["dequantize_linear"] == ops["DequantizeLinear"]
    assert record.extra["calibration_samples"] == 64
    # int8 weights, but per-channel scales, float biases and the QDQ nodes weigh a lot in a
    # 20k-weight model (measured 0.51)
    assert _size_ratio(variants, "onnx_int8") < 0.6


def test_onnx_int8_runs_in_the_onnxruntime_runtime_with_int8_kernels(built: tuple) -> None:
    """The evaluator and the benchmark load it through tasks.runtimes' ONNX Runtime entry; with
    its graph optimisations ORT turns each DQ → Conv → Q into one QLinearConv."""
    import onnxruntime as ort

    from tasks.runtimes import load_predictor

    variants, evaluation = built
    predictor = load_predictor(variants / "onnx_int8")
    options = ort.SessionOptions()
    optimized = variants.parent / "optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(
        str(variants / "onnx_int8" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    fused = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    # uint8 activations (the default): every conv runs as int8, none is left in float
    assert fused["QLinearConv"] == 9 and fused["Conv"] == 0, fused
    images = np.random.default_rng(0).random(
        (3, *predictor.prepare(np.zeros((1, 1, 16, 16))).shape[1:])
    )
    np.testing.assert_array_equal(predictor(images.astype(np.float32)).shape, (3, 10))
    assert evaluation.logits["onnx_int8"].dtype == np.float32


# ---- compressed_size_bytes ----------------------------------------------------------------------


def test_every_row_has_a_compressed_size_no_bigger_than_its_size(built: tuple) -> None:
    variants, evaluation = built
    for name, row in evaluation.metrics.items():
        assert row.compressed_size_bytes is not None, name
        assert 0 < row.compressed_size_bytes <= row.size_bytes, name
        assert row.compressed_size_bytes == compressed_size(variants / name)
    assert ZSTD_LEVEL == 19
    # fp32 weights barely compress; zstd finds the redundancy an int8 file does not have
    base = evaluation.metrics["baseline"]
    assert base.compressed_size_bytes > 0.7 * base.size_bytes


def test_compressed_size_is_zstd_of_the_model_files_only(tmp_path: Path) -> None:
    import zstandard

    directory = tmp_path / "v"
    directory.mkdir()
    payload = bytes(range(256)) * 64 + b"\x00" * 8192
    (directory / "model.onnx").write_bytes(payload)
    (directory / "variant.json").write_text(json.dumps({"name": "v"}) * 100)
    expected = len(zstandard.ZstdCompressor(level=19).compress(payload))
    assert compressed_size(directory) == expected < len(payload) // 10


def test_compressed_size_reaches_the_tables_and_the_manifest(
    built: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    variants, evaluation = built
    rows = {name: asdict(row) for name, row in evaluation.metrics.items()}
    table = format_table(rows)
    header = table.splitlines()[0]
    assert header.index("size") < header.index("zstd size") < header.index("× smaller")
    zstd_kib = f"{rows['onnx_int8']['compressed_size_bytes'] / 1024:.0f} KiB"
    assert zstd_kib in next(line for line in table.splitlines() if line.startswith("onnx_int8"))
    review = review_rows(rows, [], {n: GateVerdict(True, "") for n in rows})
    assert {r["variant"]: r["zstd_kib"] for r in review}["tflite_dynamic"] == (
        f"{rows['tflite_dynamic']['compressed_size_bytes'] / 1024:.0f}"
    )

    approval = ApprovalRecord("ada", "2026-01-02T03:04:05+00:00", "", "local", "r", "", "d")
    verdicts = {n: GateVerdict(True, "") for n in NEW}
    dirs = {n: str(variants / n) for n in NEW}
    entries = publish_entries(list(NEW), dirs, evaluation.metrics, verdicts, [], approval)
    registry = LocalRegistry(tmp_path / "registry")
    registry.publish("m", "1", entries, {})
    manifest = registry.read_manifest("m", "1")
    for name in NEW:
        metrics = manifest["variants"][name]["metrics"]
        assert metrics["compressed_size_bytes"] == rows[name]["compressed_size_bytes"]
        assert metrics["compressed_size_bytes"] <= metrics["size_bytes"]
        assert metrics["compressed_with"] == {"codec": "zstd", "level": ZSTD_LEVEL}

    cli_main(["registry", "show", "m", "1", "--uri", str(tmp_path / "registry")])
    shown = capsys.readouterr().out
    size, compressed = rows["onnx_int8"]["size_bytes"], rows["onnx_int8"]["compressed_size_bytes"]
    assert f"model {size} bytes, zstd-19 {compressed} bytes" in shown


def test_metrics_written_before_the_compressed_size_still_read(
    built: tuple, tmp_path: Path
) -> None:
    _, evaluation = built
    old = {name: asdict(row) for name, row in evaluation.metrics.items()}
    for row in old.values():
        del row["compressed_size_bytes"]
    write_json(tmp_path / "variants.json", old)

    metrics = read_metrics(tmp_path / "variants.json")

    assert metrics["onnx_int8"].compressed_size_bytes is None
    assert metrics["onnx_int8"] == replace(
        evaluation.metrics["onnx_int8"], compressed_size_bytes=None
    )
    line = next(line for line in format_table(old).splitlines() if line.startswith("onnx_int8"))
    assert " - " in line  # the zstd column says unknown; the row is otherwise whole


# ---- params/all-techniques.yaml -----------------------------------------------------------------


def test_all_techniques_file_is_params_yaml_plus_every_other_technique() -> None:
    everything = load_params(REPO_ROOT / "params" / "all-techniques.yaml")
    default = load_params(REPO_ROOT / "params.yaml")
    for section in ("seed", "data", "baseline", "train", "benchmark", "runners"):
        assert getattr(everything, section) == getattr(default, section), section
    # the same gates, with allowances only for the variants params.yaml does not have
    assert everything.gates.model_copy(update={"per_variant": {}}) == default.gates.model_copy(
        update={"per_variant": {}}
    )
    extra_allowances = everything.gates.per_variant.keys() - default.gates.per_variant.keys()
    assert extra_allowances <= everything.variants.keys() - default.variants.keys()
    assert {k: everything.gates.per_variant[k] for k in default.gates.per_variant} == (
        default.gates.per_variant
    )
    assert {k: everything.variants[k] for k in default.variants} == default.variants
    techniques = {cfg.technique for cfg in everything.variants.values()}
    assert set(NEW) <= techniques
    assert not set(NEW) & {cfg.technique for cfg in default.variants.values()}
    header = (REPO_ROOT / "params" / "all-techniques.yaml").read_text().splitlines()[0:6]
    assert any("make run PARAMS=params/all-techniques.yaml" in line for line in header)
    assert "PARAMS ?= params.yaml" in (REPO_ROOT / "Makefile").read_text()
    assert yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["variants"].keys() == (
        default.variants.keys()
    )


def test_onnx_int8_says_once_which_weights_it_quantized_per_tensor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DenseNet-style net's pre-activation batch norms survive the export as 1-D weights: ORT
    logged a WARNING per weight ("Axis 1 is out-of-range for weight ... with rank 1"), 15 lines
    on one net. One line now, naming them."""
    import logging

    import numpy as np
    import torch

    from tasks.data import Preprocess, Split
    from tasks.export import write_onnx_variant
    from tasks.techniques.onnx_int8 import OnnxInt8Config, quantize
    from tests.nets.densenet import build

    torch.manual_seed(0)
    preprocess = Preprocess(image_size=32, channels=1, num_classes=10, mean=[0.5], std=[0.25])
    x = np.random.default_rng(0).random((40, 1, 32, 32), dtype=np.float32)
    source = tmp_path / "baseline"
    write_onnx_variant(
        build().eval(),
        preprocess,
        preprocess.normalize(x),
        source,
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256="0" * 64,
    )
    cfg = OnnxInt8Config(technique="onnx_int8", source="baseline", calibration_samples=32)
    with caplog.at_level(logging.WARNING):
        record = quantize(
            "int8",
            cfg,
            source,
            Split(x=x, y=np.zeros(40, dtype=np.int64)),
            preprocess,
            tmp_path / "int8",
        )
    assert record.status == "ok"
    assert not [r for r in caplog.records if "out-of-range for weight" in r.getMessage()]
    said = [line for line in capsys.readouterr().out.splitlines() if "per tensor" in line]
    assert len(said) == 1 and "one-dimensional weight(s) quantized per tensor" in said[0]
