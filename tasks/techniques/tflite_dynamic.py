"""tflite_dynamic: ONNX → TF SavedModel → LiteRT dynamic-range quantization.

Weights are stored as int8 (a scale per output channel, or one per tensor); activations stay
float32 and the kernels quantize them on the fly, batch by batch, so no calibration data is
needed. TensorFlow leaves weight tensors under 1,024 elements (a narrow first conv, a small
classifier) in float32: on a tiny network the file shrinks less than 4x.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from tasks.data import Preprocess
from tasks.io import atomic_dir
from tasks.techniques.base import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.tflite_convert import convert, working_copy, write_litert_variant
from tasks.variant import VariantRecord, onnx_source


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
    source, onnx_file = onnx_source(name, source_dir)
    assert source.input is not None  # onnx_source checked it
    with tempfile.TemporaryDirectory(prefix="mp-onnx2tf-") as work, atomic_dir(out_dir) as staging:
        work_dir = Path(work)
        converted = convert(
            "tflite_dynamic",
            working_copy(onnx_file, work_dir),
            work_dir,
            "dynamic_range_quant",
            source.input.name,
            preprocess,
            per_channel=cfg.per_channel,
        )
        return write_litert_variant(
            converted,
            staging,
            name=name,
            technique="tflite_dynamic",
            settings=cfg.model_dump(),
            source=source,
            preprocess=preprocess,
            extra={"weights": "int8", "compute": "float32 (activations quantized per batch)"},
        )


TECHNIQUE = Technique(
    name="tflite_dynamic",
    config=TfliteDynamicConfig,
    starts_from="onnx",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=("tasks.tflite_convert",),
)
