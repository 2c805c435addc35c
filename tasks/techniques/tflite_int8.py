"""tflite_int8: ONNX → TF SavedModel → LiteRT full-integer int8, calibrated on the calib split."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.errors import VariantError
from tasks.int8_friendly import rewrite_hard_activations
from tasks.io import atomic_dir
from tasks.onnx_for_tf import working_copy
from tasks.quiet import held_back
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.tflite_convert import (
    _CONVERT_LOCK,
    Calibration,
    Converted,
    convert,
    write_litert_variant,
)
from tasks.variant import VariantRecord, onnx_source

if TYPE_CHECKING:
    from tasks.litert_debugger import LayerError


class TfliteInt8Config(TechniqueConfig):
    technique: Literal["tflite_int8"]
    int8_io: bool = True
    calibration_samples: PositiveInt = 200
    per_channel: bool = True
    # layers kept in float: the k with the largest own int8 error (the quantization debugger's
    # order on the calibration data: `python -m tasks.sensitivity` shows it as "error rank"),
    # names from that study (conv_2d_3), or auto: layers added in the order of the accuracy
    # each recovers on val until val's drop from fp32 is within auto_max_drop
    float_fallback: Annotated[int, Field(ge=0)] | list[str] | Literal["auto"] = 0
    # auto: the drop it aims for on val, in points (this variant's gates.max_accuracy_drop), and
    # the most layers it may keep in float (each costs p50: the study times them)
    auto_max_drop: Annotated[float, Field(ge=0)] = 1.0
    max_float_layers: PositiveInt = 4
    # HardSwish/HardSigmoid rewritten as ReLU6 arithmetic, which XNNPACK runs in int8 (they
    # have no int8 kernel); false: converted as exported (to measure what the rewrite gains)
    hard_activations_as_relu6: bool = True


def build(context: BuildContext, config: TfliteInt8Config) -> VariantRecord:
    """The variant from its source's ONNX model, calibrated on the calib split."""
    return quantize(
        context.name,
        config,
        context.source_dir,
        context.split("calib"),
        context.preprocess(),
        context.out_dir,
        context.split("val") if config.float_fallback == "auto" else None,
    )


def quantize(
    name: str,
    cfg: TfliteInt8Config,
    source_dir: Path,
    calib: Split,
    preprocess: Preprocess,
    out_dir: Path,
    val: Split | None = None,
) -> VariantRecord:
    """Convert the source variant's ONNX model to a full-integer int8 LiteRT model (`val`:
    what `float_fallback: auto` judges its layers on)."""
    source, onnx_file = onnx_source(name, source_dir)
    with tempfile.TemporaryDirectory(prefix="mp-onnx2tf-") as work, atomic_dir(out_dir) as staging:
        converted, rewritten = _onnx2tf(source, onnx_file, cfg, calib, preprocess, Path(work))
        extra: dict[str, object] = {
            "calibration_samples": int(min(len(calib), cfg.calibration_samples))
        }
        if rewritten:
            extra["rewritten_activations"] = rewritten
        if cfg.float_fallback == "auto":
            if val is None:
                raise VariantError(f"{name}: float_fallback auto needs the val split")
            content, auto = _auto_float(converted.tflite.parent, calib, val, preprocess, cfg)
            if content is not None:
                converted.tflite.write_bytes(content)
            extra["float_layers"] = auto.kept
            extra["float_fallback_auto"] = asdict(auto)
        elif cfg.float_fallback:
            content, kept = _keep_float(name, converted.tflite.parent, calib, preprocess, cfg)
            converted.tflite.write_bytes(content)
            extra["float_layers"] = [layer.name for layer in kept]
        return write_litert_variant(
            converted,
            staging,
            name=name,
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
    rewritten = rewrite_hard_activations(onnx_copy).total if cfg.hard_activations_as_relu6 else 0
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
    return converted, rewritten


def _keep_float(
    name: str, model_dir: Path, calib: Split, preprocess: Preprocess, cfg: TfliteInt8Config
) -> tuple[bytes, list[LayerError]]:
    """The int8 model requantized from the same calibration with `float_fallback`'s layers in
    float (onnx2tf's converter settings, TensorFlow's quantizer with a denylist)."""
    from tasks import litert_debugger as debugger

    assert cfg.float_fallback != "auto"  # _auto_float's
    x = debugger.nhwc(calib.x[: cfg.calibration_samples], preprocess.mean, preprocess.std)
    with _CONVERT_LOCK, held_back():
        calibrated = debugger.calibrated_model(model_dir, x)
        layers = debugger.layer_errors(calibrated, x, cfg.per_channel)
        kept = debugger.float_layers(cfg.float_fallback, layers, f"variants.{name}.float_fallback")
        tensors = [layer.tensor for layer in kept]
        return debugger.quantized_model(calibrated, cfg.per_channel, cfg.int8_io, tensors), kept


@dataclass(frozen=True)
class AutoStep:
    kept: list[str]  # layers in float at this step
    accuracy: float  # on val
    drop_points: float  # fp32 minus this model, on val
    drop_upper: float


@dataclass(frozen=True)
class AutoFallback:
    """What `float_fallback: auto` tried and kept (recorded in variant.json's extra)."""

    target_points: float
    judged_on: str  # "upper bound" where val can certify the target, else "point estimate"
    val_samples: int
    order: list[str]  # candidates, most accuracy recovered (kept alone in float) first
    steps: list[AutoStep]  # the all-int8 model first, then one more layer each
    kept: list[str]
    reached: bool  # False: no count up to max_float_layers met the target (the most is kept)


def _auto_float(
    model_dir: Path, calib: Split, val: Split, preprocess: Preprocess, cfg: TfliteInt8Config
) -> tuple[bytes | None, AutoFallback]:
    """Layers kept in float, one at a time in the order of the accuracy each recovers alone on
    val, until val's drop from the float model meets auto_max_drop: judged on its upper bound
    where val has enough images to certify it, on the point estimate where it cannot (the
    variant's gates judge the bound on test either way). None: the all-int8 model meets it."""
    from tasks import litert_debugger as debugger
    from tasks.statistics import paired_drop_interval, smallest_certifying_size

    x = debugger.nhwc(calib.x[: cfg.calibration_samples], preprocess.mean, preprocess.std)
    x_val = debugger.nhwc(val.x, preprocess.mean, preprocess.std)
    certifiable = len(val) >= smallest_certifying_size(cfg.auto_max_drop or 1e-9, 0.95)
    with _CONVERT_LOCK, held_back():
        calibrated = debugger.calibrated_model(model_dir, x)
        layers = debugger.by_error(debugger.layer_errors(calibrated, x, cfg.per_channel))
        reference = debugger.predict(debugger.float_model(model_dir), x_val)

        def model(kept: list[LayerError]) -> bytes:
            tensors = [layer.tensor for layer in kept]
            return debugger.quantized_model(calibrated, cfg.per_channel, cfg.int8_io, tensors)

        def step(kept: list[LayerError]) -> tuple[AutoStep, bytes]:
            content = model(kept)
            predicted = debugger.predict(content, x_val)
            drop, _, upper = paired_drop_interval(val.y, reference, predicted)
            accuracy = float(np.mean(predicted == val.y))
            return AutoStep([lay.name for lay in kept], accuracy, drop, upper), content

        def meets(s: AutoStep) -> bool:
            judged = s.drop_upper if certifiable else s.drop_points
            return judged <= cfg.auto_max_drop

        first, _ = step([])
        steps, content, kept = [first], None, []
        if not meets(first):
            # candidates: twice as many as may be kept, by own error; ordered by what each
            # recovers alone (the study's order, not the error's)
            alone = [
                (step([layer])[0].accuracy, layer) for layer in layers[: 2 * cfg.max_float_layers]
            ]
            order = [layer for _, layer in sorted(alone, key=lambda pair: -pair[0])]
            for layer in order[: cfg.max_float_layers]:
                kept.append(layer)
                latest, content = step(kept)
                steps.append(latest)
                if meets(latest):
                    break
        else:
            order = []
    return content, AutoFallback(
        target_points=cfg.auto_max_drop,
        judged_on="upper bound" if certifiable else "point estimate",
        val_samples=len(val),
        order=[layer.name for layer in order],
        steps=steps,
        kept=[layer.name for layer in kept],
        reached=meets(steps[-1]),
    )


TECHNIQUE = Technique(
    name="tflite_int8",
    config=TfliteInt8Config,
    starts_from="onnx",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=(
        "tasks.int8_friendly",
        "tasks.tflite_convert",
        "tasks.litert_debugger",
    ),
)
