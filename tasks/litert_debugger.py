"""litert_debugger: LiteRT int8 with TensorFlow's quantization debugger, layer by layer.

One calibration of the float SavedModel (what onnx2tf converts the ONNX model into) serves every
question: the debugger's per-layer error of the all-int8 model (each quantized op fed the same
quantized input as its float twin, so the error is that layer's own), and any number of
mixed-precision models quantized from it with some layers denylisted (kept in float).

A layer is named `<op>_<k>`, e.g. `conv_2d_3`: the k-th op of that kind in graph order of the
quantized model. The names are stable for a given model and short enough for params.yaml; the
TensorFlow tensor name each stands for is kept beside it.

The primitives tflite_int8's float_fallback builds with; `tasks.sensitivity` is the study on top.
"""

from __future__ import annotations

import csv
import io
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.errors import ConfigError

# ops that only move or pad int8 values (error far below a quantization step): no candidates
EXACT_ERROR = 1e-3


@dataclass(frozen=True)
class LayerError:
    """One quantized layer's own error on the calibration data, from the debugger."""

    name: str  # <op>_<k>
    op: str
    tensor: str  # TensorFlow's name of the op's output tensor (what the quantizer denylists)
    rmse: float
    nrmse: float  # rmse in units of the output's quantization step (scale)
    max_abs_error: float


# ── quantizing a SavedModel, whole or with float layers ──


def calibrated_model(saved_model: Path, calib: Array) -> bytes:
    """The float model with calibration statistics, not yet quantized.

    `calib` is normalised NHWC float32, one sample per representative step, as onnx2tf feeds it.
    TFLITE_BUILTINS is allowed next to the int8 set so that denylisted layers keep float kernels.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    converter.representative_dataset = _samples(calib)
    # what QuantizationDebugger sets: calibrate only, quantize later with chosen denylists
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    return bytes(converter.convert())


def float_model(saved_model: Path) -> bytes:
    """The same SavedModel converted to a float32 .tflite: the reference for agreement."""
    import tensorflow as tf

    return bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())


def quantized_model(
    calibrated: bytes,
    per_channel: bool,
    int8_io: bool,
    float_tensors: Sequence[str] = (),
) -> bytes:
    """Full-integer int8 from a calibrated model; the ops writing `float_tensors` stay float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    io_type = tf.int8 if int8_io else tf.float32
    return bytes(
        convert.mlir_quantize(
            calibrated,
            disable_per_channel=not per_channel,
            fully_quantize=True,
            input_data_type=io_type,
            output_data_type=io_type,
            denylisted_nodes=list(float_tensors) or None,
        )
    )


def layer_errors(calibrated: bytes, calib: Array, per_channel: bool) -> list[LayerError]:
    """Every quantized layer's own output error on `calib`, in graph order."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    debug_model = convert.mlir_quantize(
        calibrated, disable_per_channel=not per_channel, enable_numeric_verify=True
    )
    with warnings.catch_warnings():
        # the debugger runs tf.lite.Interpreter inside, which warns that it is deprecated
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_dataset=_samples(calib)
        )
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)  # adds op name, scale and tensor name to each row
    counts: Counter[str] = Counter()
    layers = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        op = row["op_name"]
        name = f"{op.lower()}_{counts[op]}"
        counts[op] += 1
        rmse = math.sqrt(max(float(row["mean_squared_error"]), 0.0))
        scale = float(row["scale"])
        layers.append(
            LayerError(
                name=name,
                op=op,
                tensor=row["tensor_name"],
                rmse=rmse,
                nrmse=rmse / scale if scale > 0 else 0.0,
                max_abs_error=float(row["max_abs_error"]),
            )
        )
    return layers


def by_error(layers: list[LayerError]) -> list[LayerError]:
    """Layers with a quantization error, largest error (in quantization steps) first."""
    return sorted((lay for lay in layers if lay.nrmse > EXACT_ERROR), key=lambda lay: -lay.nrmse)


def float_layers(
    requested: int | Sequence[str], layers: list[LayerError], field: str
) -> list[LayerError]:
    """The layers `float_fallback` keeps in float: the k with the largest error, or by name."""
    if isinstance(requested, int):
        candidates = by_error(layers)
        if requested > len(candidates):
            raise ConfigError(
                f"{field}: {requested} layers asked for, this model has {len(candidates)} "
                f"quantized layers with an error"
            )
        return candidates[:requested]
    known = {lay.name: lay for lay in layers} | {lay.tensor: lay for lay in layers}
    for name in requested:
        if name not in known:
            listed = ", ".join(lay.name for lay in by_error(layers)[:5])
            raise ConfigError(
                f"{field}: unknown layer {name!r}; layers of this model include {listed} "
                f"({len(layers)} in all, `python -m tasks.sensitivity` lists them)"
            )
    return [known[name] for name in dict.fromkeys(requested)]


def float_ops(content: bytes) -> list[str]:
    """Ops of a .tflite that compute in float (QUANTIZE/DEQUANTIZE excluded)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE") or not len(op["outputs"]):
            continue
        dtype = interpreter._get_tensor_details(op["outputs"][0], 0)["dtype"]
        if dtype == np.float32:
            found.append(str(op["op_name"]))
    return found


def _samples(x: Array) -> Callable[[], Iterator[list[Array]]]:
    def generate() -> Iterator[list[Array]]:
        for i in range(len(x)):
            yield [x[i : i + 1]]

    return generate


# ── running a .tflite on a split ──


def predict(content: bytes, x: Array, batch: int = 64) -> Array:
    """Top-1 predictions of a .tflite on normalised NHWC float32 `x`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    predictions = []
    shape = None
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if chunk.shape != shape:
            interpreter.resize_tensor_input(source["index"], list(chunk.shape))
            interpreter.allocate_tensors()
            shape = chunk.shape
        if source["dtype"] == np.int8:
            scale, zero = source["quantization"]
            chunk = np.clip(np.round(chunk / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(source["index"], chunk.astype(source["dtype"]))
        interpreter.invoke()
        predictions.append(interpreter.get_tensor(target["index"]).argmax(axis=1))
    return np.concatenate(predictions)


def interleaved_ratio(
    content: bytes, reference: bytes, x: Array, rounds: int = 6, iterations: int = 100
) -> tuple[float, float, float]:
    """(ratio, low, high): `content`'s batch-1 p50 over `reference`'s, both .tflite models on one
    thread in this process, their timing loops interleaved round by round (tasks/speed.py)."""
    from ai_edge_litert.interpreter import Interpreter

    from tasks.speed import ratio_interval

    def runner(model: bytes) -> Callable[[Array], None]:
        interpreter = Interpreter(model_content=model, num_threads=1)
        source = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(source["index"], [1, *x.shape[1:]])
        interpreter.allocate_tensors()
        scale, zero = source["quantization"]

        def run(image: Array) -> None:
            if source["dtype"] == np.int8:
                image = np.clip(np.round(image / scale + zero), -128, 127).astype(np.int8)
            interpreter.set_tensor(source["index"], image.astype(source["dtype"]))
            interpreter.invoke()

        return run

    runs = [runner(content), runner(reference)]
    images = [x[i : i + 1] for i in range(min(len(x), 32))]
    for run in runs:  # warm both
        for image in images[:5]:
            run(image)
    p50s: list[list[float]] = [[], []]
    for round_number in range(rounds):
        for which in (0, 1) if round_number % 2 == 0 else (1, 0):
            timings = []
            for i in range(iterations):
                tick = time.perf_counter()
                runs[which](images[i % len(images)])
                timings.append(time.perf_counter() - tick)
            p50s[which].append(float(np.median(timings)))
    return ratio_interval(p50s[0], p50s[1])


def nhwc(x: Array, mean: Sequence[float], std: Sequence[float]) -> Array:
    """[0, 1] NCHW pixels → the normalised NHWC float32 input of an onnx2tf model."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, -1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 1, 1, -1)
    return ((x.transpose(0, 2, 3, 1).astype(np.float32) - m) / s).astype(np.float32)
