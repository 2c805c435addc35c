"""bf16_weights: a technique from outside the repo, as a user would write one.

The source variant's ONNX model with every float32 weight rounded to the nearest bfloat16 value
(still stored as float32, so ONNX Runtime runs it as is): what a model loses when its weights
are kept in bf16. Plugged in through params.yaml (`techniques: [module:TECHNIQUE]`) or an entry
point of the group `modelpress.techniques`; one module, nothing in tasks/ names it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from tasks.errors import VariantError
from tasks.io import atomic_dir
from tasks.runtimes.onnxruntime import RUNTIME as ONNX_RUNTIME
from tasks.techniques import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import (
    VariantRecord,
    carried_from,
    finished_record,
    model_path,
    write_record,
)

MODEL_FILE = ONNX_RUNTIME.model_file


class Bf16WeightsConfig(TechniqueConfig):
    technique: Literal["bf16_weights"]
    rounding: Literal["nearest", "truncate"] = "nearest"


def to_bf16_precision(weights: np.ndarray, rounding: str) -> np.ndarray:
    """float32 values with the low 16 mantissa bits cleared (round half to even, or truncate)."""
    bits = np.ascontiguousarray(weights, dtype=np.float32).view(np.uint32).astype(np.uint64)
    if rounding == "nearest":
        bits += 0x7FFF + ((bits >> 16) & 1)
    return (bits & 0xFFFF0000).astype(np.uint32).view(np.float32).reshape(weights.shape)


def build(context: BuildContext, config: Bf16WeightsConfig) -> VariantRecord:
    """Round the source ONNX model's float32 initializers to bf16 precision."""
    import onnx
    from onnx import numpy_helper

    source = context.source_record()
    if source.runtime != "onnxruntime":
        raise VariantError(f"{context.name}: source '{source.name}' is not an ONNX model")
    model = onnx.load(str(model_path(context.source_dir, source)))
    changed = 0
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(tensor)
        rounded = to_bf16_precision(weights, config.rounding)
        changed += int((rounded != weights).sum())
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    with atomic_dir(context.out_dir) as staging:
        onnx.save(model, str(staging / MODEL_FILE))
        record = VariantRecord(
            name=context.name,
            technique="bf16_weights",
            status="ok",
            runtime="onnxruntime",
            model_file=MODEL_FILE,
            input=source.input,
            output=source.output,
            preprocess=source.preprocess,
            data=source.data,
            settings=config.model_dump(),
            **carried_from(source),
            extra={"weights_changed": changed},
        )
        record = finished_record(staging, record)
        write_record(staging, record)
    return record


TECHNIQUE = Technique(
    name="bf16_weights",
    config=Bf16WeightsConfig,
    starts_from="onnx",
    runtime="onnxruntime",
    produces_onnx=True,
    build=build,
)
