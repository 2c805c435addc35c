"""tflite_fp16: ONNX → TF SavedModel → LiteRT with float16 weights and float32 compute.

TensorFlow's float16 quantization stores every weight in half precision (half the bytes) and
dequantizes it to float32 when the interpreter loads the model: accuracy stays the float model's,
no calibration data is needed, and the arithmetic is unchanged (a GPU delegate may run fp16).
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


class TfliteFp16Config(TechniqueConfig):
    technique: Literal["tflite_fp16"]


def build(context: BuildContext, config: TfliteFp16Config) -> VariantRecord:
    """The variant from its source's ONNX model; no data needed."""
    return to_fp16(context.name, config, context.source_dir, context.preprocess(), context.out_dir)


def to_fp16(
    name: str, cfg: TfliteFp16Config, source_dir: Path, preprocess: Preprocess, out_dir: Path
) -> VariantRecord:
    """Convert the source variant's ONNX model to a LiteRT model with float16 weights."""
    source, onnx_file = onnx_source(name, source_dir)
    assert source.input is not None  # onnx_source checked it
    with tempfile.TemporaryDirectory(prefix="mp-onnx2tf-") as work, atomic_dir(out_dir) as staging:
        work_dir = Path(work)
        converted = convert(
            "tflite_fp16",
            working_copy(onnx_file, work_dir),
            work_dir,
            "float16",
            source.input.name,
            preprocess,
        )
        return write_litert_variant(
            converted,
            staging,
            name=name,
            technique="tflite_fp16",
            settings=cfg.model_dump(),
            source=source,
            preprocess=preprocess,
            extra={"weights": "float16", "compute": "float32"},
        )


TECHNIQUE = Technique(
    name="tflite_fp16",
    config=TfliteFp16Config,
    starts_from="onnx",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=("tasks.tflite_convert",),
)
