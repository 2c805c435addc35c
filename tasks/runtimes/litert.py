"""LiteRT (`ai-edge-litert`): `model.tflite`, full-integer int8 from tflite_int8. Inputs are fed
NHWC and, for int8 tensors, quantised with the scale and zero point recorded in variant.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.errors import ModelError, brief
from tasks.runtimes.base import LoadedModel, Runtime, normalize
from tasks.variant import TensorSpec, VariantRecord


def load(path: Path, record: VariantRecord, threads: int) -> LoadedModel:
    """A LiteRT interpreter on `threads` threads, re-allocated when the batch size changes."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: LiteRT cannot load it ({brief(exc)})") from None
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    assert record.input is not None and record.output is not None
    input_spec, output_spec = record.input, record.output
    allocated: list[int] = [-1]

    def infer(x: Array) -> Array:
        if x.shape[0] != allocated[0]:
            interpreter.resize_tensor_input(input_index, list(x.shape))
            interpreter.allocate_tensors()
            allocated[0] = x.shape[0]
        interpreter.set_tensor(input_index, x)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)

    return LoadedModel(
        prepare=lambda images: quantize(
            normalize(images, record).transpose(0, 2, 3, 1), input_spec
        ),
        infer=infer,
        finish=lambda y: dequantize(y, output_spec),
    )


def quantize(x: Array, spec: TensorSpec) -> Array:
    """float → the tensor's int8 (or float32 when it is not quantised)."""
    if spec.quantization is None:
        return np.ascontiguousarray(x, dtype=np.float32)
    scale, zero_point = spec.quantization["scale"], spec.quantization["zero_point"]
    return np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)


def dequantize(y: Array, spec: TensorSpec) -> Array:
    """The tensor's int8 (or float32) → float32."""
    if spec.quantization is None:
        return y.astype(np.float32)
    return (
        (y.astype(np.float32) - spec.quantization["zero_point"]) * spec.quantization["scale"]
    ).astype(np.float32)


RUNTIME = Runtime(
    name="litert",
    format="tflite",
    model_file="model.tflite",
    packages=("ai-edge-litert",),
    edge=True,
    runner_kinds=frozenset({"cpu"}),
    load=load,
    extra="edge",
)
