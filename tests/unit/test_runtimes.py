"""The runtime table (tasks.runtimes): what is derived from it, its one-line error for a runtime
it does not know, and tiny real models loaded and run through it in each runtime."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from tasks import registry, variant
from tasks.config import RunnerProfile
from tasks.errors import ModelError
from tasks.lineage import code_sha256
from tasks.runtimes import (
    EDGE_RUNTIMES,
    FORMAT_BY_RUNTIME,
    FORMATS,
    RUNTIME_MODULES,
    RUNTIME_PACKAGES,
    RUNTIMES,
    load_predictor,
    runs_on,
)
from tasks.runtimes.litert import dequantize, quantize
from tasks.variant import TensorSpec, VariantRecord, write_record

# a 4x4 single-channel "image" → 3 logits, with the mean/std a variant.json records
SIDE, CLASSES, MEAN, STD = 4, 3, 0.5, 0.25
RNG = np.random.default_rng(7)
WEIGHTS = RNG.normal(0, 0.5, (SIDE * SIDE, CLASSES)).astype(np.float32)
BIAS = RNG.normal(0, 0.1, CLASSES).astype(np.float32)
IMAGES = RNG.uniform(0, 1, (40, 1, SIDE, SIDE)).astype(np.float32)


def _reference_logits(images: np.ndarray) -> np.ndarray:
    """What every runtime must return: the linear model on the normalised pixels, in numpy."""
    return ((images - MEAN) / STD).reshape(len(images), -1) @ WEIGHTS + BIAS


def _record(runtime: str, model_file: str, **changes: object) -> VariantRecord:
    values: dict = {
        "name": "tiny",
        "technique": "baseline",
        "status": "ok",
        "runtime": runtime,
        "model_file": model_file,
        "input": TensorSpec("images", [None, 1, SIDE, SIDE], "float32", layout="NCHW"),
        "output": TensorSpec("logits", [None, CLASSES], "float32"),
        "preprocess": {"mean": [MEAN], "std": [STD], "image_size": SIDE, "channels": 1},
    }
    return VariantRecord(**(values | changes))


def _onnx_variant(directory: Path) -> Path:
    """A real ONNX model (Flatten → Gemm) and its variant.json, written with onnx's helpers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["images"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "weights", "bias"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(WEIGHTS, "weights"), numpy_helper.from_array(BIAS, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True)
    model_file = RUNTIMES["onnxruntime"].model_file
    onnx.save(model, str(directory / model_file))
    write_record(directory, _record("onnxruntime", model_file))
    return directory


@pytest.fixture(scope="module")
def litert_variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real full-integer int8 LiteRT model of the same linear map, NHWC in, int8 in and out."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    class Linear(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIDE, SIDE, 1], tf.float32)])
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            return tf.matmul(tf.reshape(x, [-1, SIDE * SIDE]), WEIGHTS) + BIAS

    module = Linear()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    calibration = ((IMAGES - MEAN) / STD).transpose(0, 2, 3, 1)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(32))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    directory = tmp_path_factory.mktemp("litert") / "tiny"
    directory.mkdir()
    model_file = RUNTIMES["litert"].model_file
    (directory / model_file).write_bytes(converter.convert())

    interpreter = Interpreter(model_path=str(directory / model_file))
    specs = []
    for detail, layout in (
        (interpreter.get_input_details()[0], "NHWC"),
        (interpreter.get_output_details()[0], None),
    ):
        scale, zero_point = detail["quantization"]
        assert np.dtype(detail["dtype"]) == np.int8 and scale > 0
        specs.append(
            TensorSpec(
                detail["name"],
                [None if d < 0 else int(d) for d in detail["shape_signature"]],
                "int8",
                layout=layout,
                quantization={"scale": float(scale), "zero_point": int(zero_point)},
            )
        )
    write_record(directory, _record("litert", model_file, input=specs[0], output=specs[1]))
    return directory


# ---- the table and what is derived from it ----------------------------------------------------


def test_the_table_names_each_runtime_once_with_its_format_and_file() -> None:
    assert list(RUNTIMES) == ["onnxruntime", "litert", "openvino", "tensorrt"]
    assert all(name == runtime.name for name, runtime in RUNTIMES.items())
    assert set(RUNTIMES) == set(get_args(variant.Runtime))  # variant.json's allowed values
    assert FORMAT_BY_RUNTIME == {
        "onnxruntime": "onnx",
        "litert": "tflite",
        "openvino": "openvino",
        "tensorrt": "tensorrt",
    }
    assert [r.model_file for r in RUNTIMES.values()] == [
        "model.onnx",
        "model.tflite",
        "model.xml",
        "model.engine",
    ]
    # an OpenVINO IR is two files: the graph names its weights file
    assert RUNTIMES["openvino"].companion_files == ("model.bin",)
    assert all(not r.companion_files for n, r in RUNTIMES.items() if n != "openvino")


def test_formats_are_those_the_registry_accepts() -> None:
    assert FORMATS == registry.FORMATS == ("onnx", "tflite", "openvino", "tensorrt")


def test_benchmark_reports_each_runtimes_own_package() -> None:
    assert RUNTIME_PACKAGES == ("numpy", "onnxruntime", "ai-edge-litert", "openvino", "tensorrt")


def test_the_edge_install_runs_onnxruntime_and_litert_not_tensorrt() -> None:
    assert EDGE_RUNTIMES == ("onnxruntime", "litert")
    assert "torch" in RUNTIMES["tensorrt"].packages  # its CUDA buffers are torch tensors
    # OpenVINO's wheel is too heavy for the slim install: an edge runner adds its own extra
    assert {n: r.extra for n, r in RUNTIMES.items()} == {
        "onnxruntime": "edge",
        "litert": "edge",
        "openvino": "edge-openvino",
        "tensorrt": None,
    }


@pytest.mark.parametrize(
    ("runtime", "kind", "measured"),
    [
        ("onnxruntime", "cpu", True),
        ("litert", "cpu", True),
        ("tensorrt", "cpu", False),
        ("onnxruntime", "cuda", False),
        ("litert", "cuda", False),
        ("tensorrt", "cuda", True),
        (None, "cpu", False),  # a skipped variant has no runtime
        ("openvino", "cpu", True),
        ("openvino", "cuda", False),
        ("coreml", "cpu", False),  # not a runtime of the table
    ],
)
def test_runs_on_follows_each_runtimes_runner_kinds(
    runtime: str | None, kind: str, measured: bool
) -> None:
    assert runs_on(runtime, RunnerProfile(kind=kind)) is measured


def test_evaluation_cache_key_covers_every_runtime_module() -> None:
    assert RUNTIME_MODULES == (
        "tasks.runtimes",
        "tasks.runtimes.base",
        "tasks.runtimes.onnxruntime",
        "tasks.runtimes.litert",
        "tasks.runtimes.openvino",
        "tasks.runtimes.tensorrt",
    )
    # evaluate's key follows its imports (tasks/code_closure.py): every runtime module is in it
    # without being named, so a change to any of them re-evaluates
    from tasks.code_closure import import_closure

    assert set(RUNTIME_MODULES) <= set(import_closure("tasks.evaluate"))
    assert code_sha256("tasks.evaluate") == code_sha256("tasks.evaluate", *RUNTIME_MODULES)


# ---- loading through the table ------------------------------------------------------------------


def test_unknown_runtime_is_a_one_line_error_naming_the_known_ones(tmp_path: Path) -> None:
    directory = tmp_path / "tiny"
    directory.mkdir()
    (directory / "model.mlpackage").write_bytes(b"coreml")
    write_record(directory, _record("coreml", "model.mlpackage"))
    with pytest.raises(ModelError) as raised:
        load_predictor(directory)
    assert str(raised.value) == (
        f"{directory / 'variant.json'}: runtime 'coreml' is not known; "
        "expected one of onnxruntime, litert, openvino, tensorrt"
    )


def test_onnx_variant_runs_through_the_table(tmp_path: Path) -> None:
    predictor = load_predictor(_onnx_variant(tmp_path / "tiny"), threads=1)
    logits = predictor(IMAGES)
    assert logits.dtype == np.float32 and logits.shape == (len(IMAGES), CLASSES)
    assert np.abs(logits - _reference_logits(IMAGES)).max() < 1e-4


def test_litert_int8_variant_quantizes_runs_and_dequantizes(litert_variant: Path) -> None:
    record = variant.read_record(litert_variant)
    assert record.input is not None and record.output is not None
    predictor = load_predictor(litert_variant, threads=1)
    prepared = predictor.prepare(IMAGES)
    assert prepared.dtype == np.int8 and prepared.shape == (len(IMAGES), SIDE, SIDE, 1)
    raw = predictor.infer(prepared)
    assert raw.dtype == np.int8
    logits = predictor.finish(raw)
    reference = _reference_logits(IMAGES)
    # int8 in and out: the error is a few output quantisation steps, far below the logits' spread
    step = record.output.quantization["scale"]
    assert np.abs(logits - reference).max() < 4 * step < 0.25 * np.ptp(reference)
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.9
    # batch sizes change between calls (the benchmark's batch 1, the evaluator's 64)
    np.testing.assert_array_equal(predictor(IMAGES[:1]), logits[:1])


def test_litert_quantize_dequantize_round_trip() -> None:
    spec = TensorSpec("x", [None, 3], "int8", quantization={"scale": 0.05, "zero_point": -3})
    x = np.array([[-6.5, 0.0, 0.26]], dtype=np.float32)  # -6.5 saturates at -128
    q = quantize(x, spec)
    assert q.dtype == np.int8 and q.tolist() == [[-128, -3, 2]]
    np.testing.assert_allclose(dequantize(q, spec), [[-6.25, 0.0, 0.25]], atol=1e-6)
    float_spec = TensorSpec("x", [None, 3], "float32")
    assert quantize(x, float_spec).dtype == np.float32
    np.testing.assert_array_equal(dequantize(x, float_spec), x)


def _tensorrt_here() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_here(), reason="needs tensorrt and a CUDA device")
def test_tensorrt_engine_runs_through_the_table(tmp_path: Path) -> None:
    import tensorrt as trt

    source = _onnx_variant(tmp_path / "onnx")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((source / "model.onnx").read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    chw = (1, SIDE, SIDE)
    profile.set_shape("images", (1, *chw), (8, *chw), (64, *chw))
    config.add_optimization_profile(profile)
    directory = tmp_path / "engine"
    directory.mkdir()
    model_file = RUNTIMES["tensorrt"].model_file
    (directory / model_file).write_bytes(bytes(builder.build_serialized_network(network, config)))
    write_record(directory, _record("tensorrt", model_file))
    logits = load_predictor(directory)(IMAGES)
    assert logits.shape == (len(IMAGES), CLASSES)
    assert np.abs(logits - _reference_logits(IMAGES)).max() < 1e-2
