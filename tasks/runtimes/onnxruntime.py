"""ONNX Runtime: `model.onnx` on the CPU execution provider; the baseline and the torch
techniques (pruned, distilled) produce it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.errors import ModelError, brief
from tasks.runtimes.base import LoadedModel, Runtime, normalize
from tasks.variant import VariantRecord


def load(path: Path, record: VariantRecord, threads: int) -> LoadedModel:
    """An ONNX Runtime session on `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for corrupt models
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({brief(exc)})") from None
    input_name = session.get_inputs()[0].name
    return LoadedModel(
        prepare=lambda images: normalize(images, record),
        infer=lambda x: session.run(None, {input_name: x})[0],
        finish=lambda y: y.astype(np.float32),
    )


RUNTIME = Runtime(
    name="onnxruntime",
    format="onnx",
    model_file="model.onnx",
    packages=("onnxruntime",),
    edge=True,
    runner_kinds=frozenset({"cpu"}),
    load=load,
    extra="edge",
)
