"""tflite_int8: ONNX → TF SavedModel → LiteRT full-integer int8, calibrated on the calib split."""

from __future__ import annotations

import shutil
import tempfile
import threading
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.errors import VariantError, brief
from tasks.int8_friendly import rewrite_hard_activations
from tasks.io import atomic_dir
from tasks.quiet import held_back
from tasks.runtimes.litert import RUNTIME as LITERT
from tasks.techniques.base import BuildContext, Technique, TechniqueConfig

if TYPE_CHECKING:
    from tasks.sensitivity import LayerError
from tasks.variant import (
    TensorSpec,
    VariantRecord,
    carried_from,
    data_fields,
    finished_record,
    model_path,
    preprocess_fields,
    read_record,
    write_record,
)

MODEL_FILE = LITERT.model_file
_CONVERT_LOCK = threading.Lock()


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
    source = read_record(source_dir)
    if source.runtime != "onnxruntime":
        raise VariantError(
            f"{name}: source '{source.name}' is {source.runtime}, expected an ONNX model"
        )
    if source.input is None:  # an ok ONNX variant always records its input
        raise VariantError(f"{name}: source '{source.name}' records no input tensor")
    with tempfile.TemporaryDirectory(prefix="mp-onnx2tf-") as work, atomic_dir(out_dir) as staging:
        tflite, rewritten = _onnx2tf(source_dir, cfg, calib, preprocess, Path(work))
        shutil.copyfile(tflite, staging / MODEL_FILE)
        kept: list[LayerError] = []
        if cfg.float_fallback:
            content, kept = _keep_float(name, tflite.parent, calib, preprocess, cfg)
            (staging / MODEL_FILE).write_bytes(content)
        input_spec, output_spec = _io_specs(staging / MODEL_FILE)
        record = VariantRecord(
            name=name,
            technique="tflite_int8",
            status="ok",
            runtime="litert",
            model_file=MODEL_FILE,
            input=input_spec,
            output=output_spec,
            preprocess=preprocess_fields(preprocess),
            data=data_fields(preprocess),
            settings=cfg.model_dump(),
            **carried_from(source),
            extra={
                "onnx2tf": version("onnx2tf"),
                "calibration_samples": int(min(len(calib), cfg.calibration_samples)),
            }
            | ({"rewritten_activations": rewritten} if rewritten else {})
            | ({"float_layers": [layer.name for layer in kept]} if cfg.float_fallback else {}),
        )
        record = finished_record(staging, record)
        write_record(staging, record)
    return record


def saved_model(
    source_dir: Path, cfg: TfliteInt8Config, calib: Split, preprocess: Preprocess, work_dir: Path
) -> Path:
    """onnx2tf's TF SavedModel of the source variant (the float model every int8 one comes from)."""
    return _onnx2tf(source_dir, cfg, calib, preprocess, work_dir)[0].parent


def _onnx2tf(
    source_dir: Path, cfg: TfliteInt8Config, calib: Split, preprocess: Preprocess, work_dir: Path
) -> tuple[Path, int]:
    """onnx2tf's full-integer .tflite in work_dir/tf (beside its SavedModel), and the number of
    hard activations rewritten first."""
    source = read_record(source_dir)
    if source.input is None:  # an ok ONNX variant always records its input
        raise VariantError(f"source '{source.name}' records no input tensor")
    # onnx2tf rewrites the ONNX file it is given (simplification); never let it touch the source.
    onnx_copy = work_dir / "model.onnx"
    shutil.copyfile(model_path(source_dir, source), onnx_copy)
    # HARD_SWISH/RELU_0_TO_1 have no int8 XNNPACK kernel: ReLU6 arithmetic stays on it
    rewritten = rewrite_hard_activations(onnx_copy)
    calib_file = work_dir / "calib.npy"
    # onnx2tf calibrates on NHWC pixels and applies (x - mean) / std itself.
    np.save(calib_file, calib.x[: cfg.calibration_samples].transpose(0, 2, 3, 1))
    tflite = _convert(onnx_copy, work_dir, calib_file, preprocess, cfg, source.input.name)
    return tflite, rewritten.total


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


def _convert(
    onnx_file: Path,
    work_dir: Path,
    calib_file: Path,
    preprocess: Preprocess,
    cfg: TfliteInt8Config,
    input_name: str,
) -> Path:
    io_dtype = "int8" if cfg.int8_io else "float32"
    try:
        # onnx2tf keeps global Keras/TF state: one conversion at a time in a process.
        # TensorFlow's chatter (importing it included) is held back: `--verbose` shows it.
        with _CONVERT_LOCK, held_back():
            import onnx2tf

            onnx2tf.convert(
                input_onnx_file_path=str(onnx_file),
                output_folder_path=str(work_dir / "tf"),
                output_integer_quantized_tflite=True,
                custom_input_op_name_np_data_path=[
                    [input_name, str(calib_file), preprocess.mean, preprocess.std]
                ],
                quant_type="per-channel" if cfg.per_channel else "per-tensor",
                input_quant_dtype=io_dtype,
                output_quant_dtype=io_dtype,
                non_verbose=True,
            )
    except Exception as exc:  # onnx2tf raises bare exceptions naming the failing op
        detail = brief(exc, last_line=True)
        raise VariantError(
            f"tflite_int8: onnx2tf could not convert {onnx_file.name} ({detail})"
        ) from None
    produced = work_dir / "tf" / f"{onnx_file.stem}_full_integer_quant.tflite"
    if not produced.exists():
        raise VariantError(f"tflite_int8: onnx2tf wrote no full-integer model for {onnx_file.name}")
    return produced


def _io_specs(tflite_file: Path) -> tuple[TensorSpec, TensorSpec]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_file))
    return _spec(interpreter.get_input_details()[0], "NHWC"), _spec(
        interpreter.get_output_details()[0], None
    )


def _spec(detail: dict, layout: str | None) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail["quantization"]
    quantization = (
        {"scale": float(scale), "zero_point": int(zero_point)} if dtype == "int8" else None
    )
    shape = [None if dim < 0 else int(dim) for dim in detail["shape_signature"]]
    return TensorSpec(detail["name"], shape, dtype, layout=layout, quantization=quantization)


TECHNIQUE = Technique(
    name="tflite_int8",
    config=TfliteInt8Config,
    starts_from="onnx",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=("tasks.int8_friendly",),
)
