"""tflite_int8: ONNX → TF SavedModel → LiteRT full-integer int8, calibrated on the calib split."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.int8_friendly import rewrite_hard_activations
from tasks.io import atomic_dir
from tasks.quiet import held_back
from tasks.techniques.base import BuildContext, Technique, TechniqueConfig
from tasks.tflite_convert import (
    _CONVERT_LOCK,
    Calibration,
    Converted,
    convert,
    working_copy,
    write_litert_variant,
)
from tasks.variant import VariantRecord, onnx_source

if TYPE_CHECKING:
    from tasks.sensitivity import LayerError


class TfliteInt8Config(TechniqueConfig):
    technique: Literal["tflite_int8"]
    int8_io: bool = True
    calibration_samples: PositiveInt = 200
    per_channel: bool = True
    # layers kept in float: the k with the largest own int8 error (the quantization debugger's
    # ranking on the calibration data), or names from `python -m tasks.sensitivity` (conv_2d_3)
    float_fallback: Annotated[int, Field(ge=0)] | list[str] = 0


def build(context: BuildContext, config: TfliteInt8Config) -> VariantRecord:
    """The variant from its source's ONNX model, calibrated on the calib split."""
    return quantize(
        context.name,
        config,
        context.source_dir,
        context.split("calib"),
        context.preprocess(),
        context.out_dir,
    )


def quantize(
    name: str,
    cfg: TfliteInt8Config,
    source_dir: Path,
    calib: Split,
    preprocess: Preprocess,
    out_dir: Path,
) -> VariantRecord:
    """Convert the source variant's ONNX model to a full-integer int8 LiteRT model."""
    source, onnx_file = onnx_source(name, source_dir)
    with tempfile.TemporaryDirectory(prefix="mp-onnx2tf-") as work, atomic_dir(out_dir) as staging:
        converted, rewritten = _onnx2tf(source, onnx_file, cfg, calib, preprocess, Path(work))
        extra: dict[str, object] = {
            "calibration_samples": int(min(len(calib), cfg.calibration_samples))
        }
        if rewritten:
            extra["rewritten_activations"] = rewritten
        if cfg.float_fallback:
            content, kept = _keep_float(name, converted.tflite.parent, calib, preprocess, cfg)
            converted.tflite.write_bytes(content)
            extra["float_layers"] = [layer.name for layer in kept]
        return write_litert_variant(
            converted,
            staging,
            name=name,
            technique="tflite_int8",
            settings=cfg.model_dump(),
            source=source,
            preprocess=preprocess,
            extra=extra,
        )


def saved_model(
    source_dir: Path, cfg: TfliteInt8Config, calib: Split, preprocess: Preprocess, work_dir: Path
) -> Path:
    """onnx2tf's TF SavedModel of the source variant (the float model every int8 one comes from)."""
    source, onnx_file = onnx_source("tflite_int8", source_dir)
    return _onnx2tf(source, onnx_file, cfg, calib, preprocess, work_dir)[0].tflite.parent


def _onnx2tf(
    source: VariantRecord,
    onnx_file: Path,
    cfg: TfliteInt8Config,
    calib: Split,
    preprocess: Preprocess,
    work_dir: Path,
) -> tuple[Converted, int]:
    """onnx2tf's full-integer .tflite in work_dir/tf (beside its SavedModel), and the number of
    hard activations rewritten first."""
    assert source.input is not None  # onnx_source checked it
    onnx_copy = working_copy(onnx_file, work_dir)
    # HARD_SWISH/RELU_0_TO_1 have no int8 XNNPACK kernel: ReLU6 arithmetic stays on it
    rewritten = rewrite_hard_activations(onnx_copy)
    calib_file = work_dir / "calib.npy"
    # onnx2tf calibrates on NHWC pixels and applies (x - mean) / std itself.
    np.save(calib_file, calib.x[: cfg.calibration_samples].transpose(0, 2, 3, 1))
    calibration = Calibration(calib_file, io_dtype="int8" if cfg.int8_io else "float32")
    converted = convert(
        "tflite_int8",
        onnx_copy,
        work_dir,
        "full_integer_quant",
        source.input.name,
        preprocess,
        per_channel=cfg.per_channel,
        calibration=calibration,
    )
    return converted, rewritten.total


def _keep_float(
    name: str, model_dir: Path, calib: Split, preprocess: Preprocess, cfg: TfliteInt8Config
) -> tuple[bytes, list[LayerError]]:
    """The int8 model requantized from the same calibration with `float_fallback`'s layers in
    float (onnx2tf's converter settings, TensorFlow's quantizer with a denylist)."""
    from tasks import sensitivity

    x = sensitivity.nhwc(calib.x[: cfg.calibration_samples], preprocess.mean, preprocess.std)
    with _CONVERT_LOCK, held_back():
        calibrated = sensitivity.calibrated_model(model_dir, x)
        layers = sensitivity.layer_errors(calibrated, x, cfg.per_channel)
        kept = sensitivity.float_layers(
            cfg.float_fallback, layers, f"variants.{name}.float_fallback"
        )
        tensors = [layer.tensor for layer in kept]
        return sensitivity.quantized_model(calibrated, cfg.per_channel, cfg.int8_io, tensors), kept


TECHNIQUE = Technique(
    name="tflite_int8",
    config=TfliteInt8Config,
    starts_from="onnx",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=("tasks.int8_friendly", "tasks.tflite_convert", "tasks.sensitivity"),
)
