"""tflite_fp16: ONNX → TF SavedModel → LiteRT with float16 weights and float32 compute.

TensorFlow's float16 quantization stores every weight in half precision (half the bytes) and
dequantizes it to float32 when the interpreter loads the model: accuracy stays the float model's,
no calibration data is needed, and the arithmetic is unchanged (a GPU delegate may run fp16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tasks.data import Preprocess
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.techniques.litert_weights import weights_only
from tasks.variant import VariantRecord


class TfliteFp16Config(TechniqueConfig):
    technique: Literal["tflite_fp16"]


def build(context: BuildContext, config: TfliteFp16Config) -> VariantRecord:
    """The variant from its source's ONNX model; no data needed."""
    return to_fp16(context.name, config, context.source_dir, context.preprocess(), context.out_dir)


def to_fp16(
    name: str, cfg: TfliteFp16Config, source_dir: Path, preprocess: Preprocess, out_dir: Path
) -> VariantRecord:
    """Convert the source variant's ONNX model to a LiteRT model with float16 weights."""
    extra = {"weights": "float16", "compute": "float32"}
    return weights_only(
        name, "tflite_fp16", "float16", cfg.model_dump(), source_dir, preprocess, out_dir, extra
    )


TECHNIQUE = Technique(
    name="tflite_fp16",
    config=TfliteFp16Config,
    starts_from="onnx",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=("tasks.techniques.litert_weights", "tasks.tflite_convert"),
)
