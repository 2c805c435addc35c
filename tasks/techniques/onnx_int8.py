"""onnx_int8: ONNX Runtime static quantization of an ONNX variant (QDQ, per-channel weights).

The source model is first prepared with ONNX Runtime's `quant_pre_process` (shape inference and
graph optimisation, which folds batch norms into their convs so each conv gets one set of
scales), then `quantize_static` inserts QuantizeLinear/DequantizeLinear pairs with activation
ranges calibrated on the calib split. The result is still an ONNX model with float32 inputs and
outputs: ONNX Runtime fuses each QDQ pattern into an int8 kernel when it loads it, so it runs
through the same runtime (and evaluator and benchmark harness) as the fp32 baseline.

onnxruntime.quantization is imported where it is used: the technique table is read on machines
and in processes that never build a variant.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from tasks.arrays import Array
from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.errors import VariantError, brief
from tasks.io import atomic_dir
from tasks.runtimes.onnxruntime import RUNTIME as ONNXRUNTIME
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import (
    VariantRecord,
    onnx_source,
    record_built,
)

MODEL_FILE = ONNXRUNTIME.model_file
CALIBRATION_BATCH = 32  # images per calibration forward pass (the ranges do not depend on it)


class OnnxInt8Config(TechniqueConfig):
    technique: Literal["onnx_int8"]
    calibration_samples: PositiveInt = 200
    per_channel: bool = True  # one weight scale per output channel (else one per tensor)
    # minmax: the observed range; entropy/percentile clip outliers (slower calibration)
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    # uint8 activations (U8S8): on x86 (AVX-512 VNNI, ORT 1.23) every conv of the default CNN
    # became one QLinearConv, while int8 activations (S8S8) left 6 of its 9 convs in float
    # between DequantizeLinear/QuantizeLinear; int8 is the usual choice on ARM
    activation_type: Literal["int8", "uint8"] = "uint8"
    preprocess: bool = True  # quant_pre_process first; false for a model it cannot handle


def build(context: BuildContext, config: OnnxInt8Config) -> VariantRecord:
    """The variant from its source's ONNX model, calibrated on the calib split."""
    return quantize(
        context.name,
        config,
        context.source_dir,
        context.split("calib"),
        context.preprocess(),
        context.out_dir,
    )


class SplitReader:
    """Calibration batches of a split, normalised as the model expects, one dict per
    `get_next()` (ONNX Runtime's CalibrationDataReader protocol) and None when done."""

    def __init__(self, input_name: str, images: Array, preprocess: Preprocess) -> None:
        self._batches: Iterator[Array] = (
            preprocess.normalize(images[i : i + CALIBRATION_BATCH])
            for i in range(0, len(images), CALIBRATION_BATCH)
        )
        self._input_name = input_name

    def get_next(self) -> dict[str, Array] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def quantize(
    name: str,
    cfg: OnnxInt8Config,
    source_dir: Path,
    calib: Split,
    preprocess: Preprocess,
    out_dir: Path,
) -> VariantRecord:
    """Quantize the source variant's ONNX model to QDQ int8 with ONNX Runtime."""
    source, onnx_file = onnx_source(name, source_dir)
    assert source.input is not None  # onnx_source checked it
    images = calib.x[: cfg.calibration_samples]
    with (
        tempfile.TemporaryDirectory(prefix="mp-ort-quant-") as work,
        atomic_dir(out_dir) as staging,
    ):
        prepared = _prepared(name, onnx_file, Path(work), cfg.preprocess)
        reader = SplitReader(source.input.name, images, preprocess)
        _quantize_static(name, prepared, staging / MODEL_FILE, reader, cfg)
        ops = _op_counts(staging / MODEL_FILE)
        if not ops["DequantizeLinear"]:
            raise VariantError(f"{name}: ONNX Runtime found no op it quantizes in this model")
        return record_built(
            staging,
            name=name,
            settings=cfg.model_dump(),
            source=source,  # QDQ keeps float32 I/O: the source's tensors, unchanged
            preprocess=preprocess,
            runtime="onnxruntime",
            model_file=MODEL_FILE,
            extra={
                "onnxruntime": version("onnxruntime"),
                "calibration_samples": len(images),
                "quant_format": "QDQ",
                "quantize_linear": ops["QuantizeLinear"],
                "dequantize_linear": ops["DequantizeLinear"],
            },
        )


def _prepared(name: str, onnx_file: Path, work_dir: Path, preprocess: bool) -> Path:
    """The model quantize_static starts from: quant_pre_process's output, or the source as is."""
    if not preprocess:
        return onnx_file
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work_dir / "prepared.onnx"
    try:
        quant_pre_process(str(onnx_file), str(prepared))
    except Exception as exc:  # symbolic shape inference raises plain exceptions on odd graphs
        raise VariantError(
            f"{name}: quant_pre_process cannot prepare {onnx_file.name} ({brief(exc)}); "
            f"set preprocess: false for this variant"
        ) from None
    return prepared


def _quantize_static(
    name: str, model: Path, out: Path, reader: SplitReader, cfg: OnnxInt8Config
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    activation = QuantType.QInt8 if cfg.activation_type == "int8" else QuantType.QUInt8
    per_tensor = _PerTensorWeights()
    logging.getLogger().addFilter(per_tensor)
    try:
        quantize_static(
            str(model),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[cfg.calibrate_method],
        )
    except Exception as exc:  # ORT raises plain exceptions naming the op it cannot handle
        raise VariantError(
            f"{name}: ONNX Runtime cannot quantize {model.name} ({brief(exc)})"
        ) from None
    finally:
        logging.getLogger().removeFilter(per_tensor)
    if per_tensor.weights:
        shown = ", ".join(per_tensor.weights[:3])
        more = f" and {len(per_tensor.weights) - 3} more" if len(per_tensor.weights) > 3 else ""
        print(
            f"{name}: {len(per_tensor.weights)} one-dimensional weight(s) quantized per tensor "
            f"(no channel axis to quantize per channel: a batch norm left unfolded): {shown}{more}",
            flush=True,
        )


class _PerTensorWeights(logging.Filter):
    """ORT logs one root-logger WARNING per 1-D weight it cannot quantize per channel (15 lines
    for a DenseNet's pre-activation batch norms): gathered here, said once."""

    _PATTERN = re.compile(r"Axis \d+ is out-of-range for weight '([^']+)'")

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        found = self._PATTERN.search(record.getMessage())
        if found is None:
            return True
        self.weights.append(found.group(1))
        return False


def _op_counts(onnx_file: Path) -> Counter[str]:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(onnx_file)).graph.node)


TECHNIQUE = Technique(
    name="onnx_int8",
    config=OnnxInt8Config,
    starts_from="onnx",
    runtime="onnxruntime",
    # a QDQ graph: not a float model for onnx2tf or TensorRT's fp16 builder to start from
    produces_onnx=False,
    build=build,
)
