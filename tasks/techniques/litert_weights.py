"""The conversion tflite_fp16 and tflite_dynamic share: the source's ONNX model → LiteRT with
its weights stored smaller (float16, or int8 with float activations), no calibration data.
They differ in TensorFlow's quantization mode, its options and what the record says."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tasks.data import Preprocess
from tasks.io import atomic_dir
from tasks.onnx_for_tf import working_copy
from tasks.tflite_convert import Output, convert, write_litert_variant
from tasks.variant import VariantRecord, onnx_source


def weights_only(
    name: str,
    technique: str,
    quantization: Output,
    settings: dict[str, Any],
    source_dir: Path,
    preprocess: Preprocess,
    out_dir: Path,
    extra: dict[str, Any],
    **options: Any,
) -> VariantRecord:
    """Convert `source_dir`'s ONNX model with `quantization` (convert's mode) into out_dir."""
    source, onnx_file = onnx_source(name, source_dir)
    assert source.input is not None  # onnx_source checked it
    with tempfile.TemporaryDirectory(prefix="mp-onnx2tf-") as work, atomic_dir(out_dir) as staging:
        work_dir = Path(work)
        copy = working_copy(onnx_file, work_dir)
        converted = convert(
            technique, copy, work_dir, quantization, source.input.name, preprocess, **options
        )
        return write_litert_variant(
            converted,
            staging,
            name=name,
            settings=settings,
            source=source,
            preprocess=preprocess,
            extra=extra,
        )
