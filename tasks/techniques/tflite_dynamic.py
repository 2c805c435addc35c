"""tflite_dynamic: ONNX → TF SavedModel → LiteRT dynamic-range quantization.

Weights are stored as int8 (a scale per output channel, or one per tensor); activations stay
float32 and the kernels quantize them on the fly, batch by batch, so no calibration data is
needed. TensorFlow leaves weight tensors under 1,024 elements (a narrow first conv, a small
classifier) in float32: on a tiny network the file shrinks less than 4x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tasks.data import Preprocess
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.techniques.litert_weights import weights_only
from tasks.variant import VariantRecord


class TfliteDynamicConfig(TechniqueConfig):
    technique: Literal["tflite_dynamic"]
    per_channel: bool = True


def build(context: BuildContext, config: TfliteDynamicConfig) -> VariantRecord:
    """The variant from its source's ONNX model; no data needed."""
    return to_dynamic_range(
        context.name, config, context.source_dir, context.preprocess(), context.out_dir
    )


def to_dynamic_range(
    name: str, cfg: TfliteDynamicConfig, source_dir: Path, preprocess: Preprocess, out_dir: Path
) -> VariantRecord:
    """Convert the source variant's ONNX model to a LiteRT model with int8 weights."""
    extra = {"weights": "int8", "compute": "float32 (activations quantized per batch)"}
    return weights_only(
        name, "tflite_dynamic", "dynamic_range_quant", cfg.model_dump(), source_dir, preprocess,
        out_dir, extra, per_channel=cfg.per_channel,
    )  # fmt: skip


TECHNIQUE = Technique(
    name="tflite_dynamic",
    config=TfliteDynamicConfig,
    starts_from="onnx",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=("tasks.techniques.litert_weights", "tasks.tflite_convert"),
)
