"""Per-layer int8 sensitivity and mixed precision on LiteRT, with TensorFlow's quantization debugger.

One calibration of the float SavedModel (what onnx2tf converts the ONNX model into) serves every
question: the debugger's per-layer error of the all-int8 model (each quantized op fed the same
quantized input as its float twin, so the error is that layer's own), and any number of
mixed-precision models quantized from it with some layers denylisted (kept in float).

A layer is named `<op>_<k>`, e.g. `conv_2d_3`: the k-th op of that kind in graph order of the
quantized model. The names are stable for a given model and short enough for params.yaml; the
TensorFlow tensor name each stands for is in the ranking's JSON.

    python -m tasks.sensitivity --params params.yaml --name tflite_int8 --data data \\
        --variants variants [--top 8] [--samples 500]

writes `<variants>/<name>.sensitivity.{json,md,png}` beside the variant directory (the directory
itself holds only the model and variant.json); the nightly review attaches them when present.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import ConfigError
from tasks.io import write_json

# ops that only move or pad int8 values (error far below a quantization step): no candidates
_EXACT = 1e-3


@dataclass(frozen=True)
class LayerError:
    """One quantized layer's own error on the calibration data, from the debugger."""

    name: str  # <op>_<k>
    op: str
    tensor: str  # TensorFlow's name of the op's output tensor (what the quantizer denylists)
    rmse: float
    nrmse: float  # rmse in units of the output's quantization step (scale)
    max_abs_error: float


@dataclass(frozen=True)
class LayerSensitivity:
    """The model with only this layer kept in float, evaluated end to end."""

    name: str
    op: str
    nrmse: float
    accuracy: float
    drop_points: float  # fp32 accuracy minus this model's, in points
    drop_upper: float  # upper bound of the paired confidence interval of that drop
    recovered_points: float  # this model's accuracy minus the all-int8 model's
    agreement: float  # top-1 agreement with fp32


@dataclass(frozen=True)
class Ranking:
    variant: str
    split: str
    samples: int
    confidence: float
    fp32_accuracy: float
    int8_accuracy: float
    int8_drop_upper: float
    int8_agreement: float
    rows: list[LayerSensitivity]  # most sensitive first: keeping it float recovers the most
    layers: list[LayerError]  # every quantized layer, graph order


# ── quantizing a SavedModel, whole or with float layers ──


def calibrated_model(saved_model: Path, calib: np.ndarray) -> bytes:
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


def layer_errors(calibrated: bytes, calib: np.ndarray, per_channel: bool) -> list[LayerError]:
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
    return sorted((lay for lay in layers if lay.nrmse > _EXACT), key=lambda lay: -lay.nrmse)


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


def _samples(x: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for i in range(len(x)):
            yield [x[i : i + 1]]

    return generate


# ── running a .tflite on a split ──


def predict(content: bytes, x: np.ndarray, batch: int = 64) -> np.ndarray:
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


def nhwc(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[0, 1] NCHW pixels → the normalised NHWC float32 input of an onnx2tf model."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, -1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 1, 1, -1)
    return ((x.transpose(0, 2, 3, 1).astype(np.float32) - m) / s).astype(np.float32)


# ── the ranking ──


def rank_layers(
    variant: str,
    saved_model: Path,
    calib: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    per_channel: bool,
    int8_io: bool,
    top: int,
    split: str = "val",
    confidence: float = 0.95,
) -> Ranking:
    """The `top` layers with the largest own error, each kept alone in float and evaluated."""
    from tasks.statistics import paired_drop_interval

    calibrated = calibrated_model(saved_model, calib)
    layers = layer_errors(calibrated, calib, per_channel)
    reference = predict(float_model(saved_model), eval_x)
    int8 = predict(quantized_model(calibrated, per_channel, int8_io), eval_x)
    rows = []
    for layer in by_error(layers)[:top]:
        mixed = predict(quantized_model(calibrated, per_channel, int8_io, [layer.tensor]), eval_x)
        drop, _, upper = paired_drop_interval(eval_y, reference, mixed, confidence)
        rows.append(
            LayerSensitivity(
                name=layer.name,
                op=layer.op,
                nrmse=layer.nrmse,
                accuracy=float(np.mean(mixed == eval_y)),
                drop_points=drop,
                drop_upper=upper,
                recovered_points=100.0 * float(np.mean(mixed == eval_y) - np.mean(int8 == eval_y)),
                agreement=float(np.mean(mixed == reference)),
            )
        )
    # most sensitive: keeping it float recovers the most; then agreement; then its own error
    rows.sort(key=lambda r: (-r.recovered_points, -r.agreement, -r.nrmse))
    _, _, int8_upper = paired_drop_interval(eval_y, reference, int8, confidence)
    return Ranking(
        variant=variant,
        split=split,
        samples=len(eval_y),
        confidence=confidence,
        fp32_accuracy=float(np.mean(reference == eval_y)),
        int8_accuracy=float(np.mean(int8 == eval_y)),
        int8_drop_upper=int8_upper,
        int8_agreement=float(np.mean(int8 == reference)),
        rows=rows,
        layers=layers,
    )


def ranking_markdown(ranking: Ranking) -> str:
    lines = [
        f"### Layer sensitivity: {ranking.variant}",
        "",
        f"{ranking.split} split, {ranking.samples} samples: fp32 "
        f"{100 * ranking.fp32_accuracy:.2f}%, all-int8 {100 * ranking.int8_accuracy:.2f}% "
        f"(drop upper bound {ranking.int8_drop_upper:.2f} pt, agreement "
        f"{100 * ranking.int8_agreement:.2f}%). Each row: only that layer kept in float.",
        "",
        "| rank | layer | op | own error (steps) | accuracy | drop (pt) | drop upper (pt) "
        "| recovered (pt) | agreement |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rank, row in enumerate(ranking.rows, 1):
        lines.append(
            f"| {rank} | `{row.name}` | {row.op} | {row.nrmse:.3f} | {100 * row.accuracy:.2f}% "
            f"| {row.drop_points:+.2f} | {row.drop_upper:+.2f} | {row.recovered_points:+.2f} "
            f"| {100 * row.agreement:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def ranking_plot(ranking: Ranking, path: Path) -> Path:
    """Every layer's own error (bars) and, for the evaluated ones, the points recovered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recovered = {row.name: row.recovered_points for row in ranking.rows}
    layers = [lay for lay in ranking.layers if lay.nrmse > _EXACT]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(layers)), 6), sharex=True)
    names = [lay.name for lay in layers]
    top.bar(names, [lay.nrmse for lay in layers], color="tab:blue")
    top.set_ylabel("own error (quant. steps)")
    top.set_title(f"{ranking.variant}: per-layer int8 sensitivity")
    bottom.bar(names, [recovered.get(n, 0.0) for n in names], color="tab:orange")
    bottom.set_ylabel("pt recovered in float")
    bottom.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_ranking(ranking: Ranking, prefix: Path) -> dict[str, Path]:
    """`<prefix>.sensitivity.json/.md/.png`."""
    paths = {ext: prefix.with_name(f"{prefix.name}.sensitivity.{ext}") for ext in ("json", "md")}
    write_json(paths["json"], asdict(ranking))
    paths["md"].write_text(ranking_markdown(ranking))
    paths["png"] = ranking_plot(ranking, prefix.with_name(f"{prefix.name}.sensitivity.png"))
    return paths


# ── entry point ──


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tasks.sensitivity", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--name", required=True, help="a tflite_int8 variant in params.yaml")
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--variants", type=Path, default=Path("variants"))
    parser.add_argument("--top", type=int, default=8, help="layers evaluated end to end")
    parser.add_argument("--samples", type=int, default=None, help="val samples (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from tasks.cli_support import run_main

    run_main(lambda: _main(_arguments(argv)))


def _main(args: argparse.Namespace) -> None:
    from tasks.techniques.tflite_int8 import saved_model

    cfg, calib, preprocess = int8_setup(args.params, args.name, args.data)
    val = _split(args.data, "val", args.samples)
    with tempfile.TemporaryDirectory(prefix="mp-sensitivity-") as work:
        model_dir = saved_model(args.variants / cfg.source, cfg, calib, preprocess, Path(work))
        ranking = rank_layers(
            args.name,
            model_dir,
            nhwc(calib.x[: cfg.calibration_samples], preprocess.mean, preprocess.std),
            nhwc(val.x, preprocess.mean, preprocess.std),
            val.y,
            cfg.per_channel,
            cfg.int8_io,
            args.top,
        )
    paths = write_ranking(ranking, args.variants / args.name)
    print(ranking_markdown(ranking))
    print(f"written: {', '.join(str(p) for p in paths.values())}")


def int8_setup(params_file: Path, name: str, data_dir: Path) -> tuple[Any, Any, Any]:
    """A tflite_int8 variant's config, the calib split and the preprocessing, checked."""
    from tasks.config import load_params
    from tasks.data import load_preprocess, load_split
    from tasks.techniques.tflite_int8 import TfliteInt8Config

    cfg = load_params(params_file).variants.get(name)
    if not isinstance(cfg, TfliteInt8Config):
        raise ConfigError(f"variants.{name}: expected a tflite_int8 variant in {params_file}")
    return cfg, load_split(data_dir, "calib"), load_preprocess(data_dir)


def _split(data_dir: Path, name: str, samples: int | None) -> Any:
    from tasks.data import Split, load_split

    split = load_split(data_dir, name)
    return split if samples is None else Split(x=split.x[:samples], y=split.y[:samples])


if __name__ == "__main__":
    main()
