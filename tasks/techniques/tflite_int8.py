"""tflite_int8: ONNX → TF SavedModel → LiteRT full-integer int8, calibrated on the calib split."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.int8_friendly import rewrite_hard_activations
from tasks.io import atomic_dir
from tasks.techniques.base import BuildContext, Technique, TechniqueConfig
from tasks.tflite_convert import (
    Calibration,
    convert,
    working_copy,
    write_litert_variant,
)
from tasks.variant import VariantRecord, onnx_source


class TfliteInt8Config(TechniqueConfig):
    technique: Literal["tflite_int8"]
    int8_io: bool = True
    calibration_samples: PositiveInt = 200
    per_channel: bool = True


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
    assert source.input is not None  # onnx_source checked it
    with tempfile.TemporaryDirectory(prefix="mp-onnx2tf-") as work, atomic_dir(out_dir) as staging:
        work_dir = Path(work)
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
        extra = {"calibration_samples": int(min(len(calib), cfg.calibration_samples))}
        if rewritten.total:
            extra["rewritten_activations"] = rewritten.total
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


TECHNIQUE = Technique(
    name="tflite_int8",
    config=TfliteInt8Config,
    starts_from="onnx",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=("tasks.int8_friendly", "tasks.tflite_convert"),
)
