"""TensorRT: a serialized fp16 engine (`model.engine`) from tensorrt_fp16, built and run on a
CUDA runner. `tensorrt` and torch (for the CUDA buffers) are imported only when an engine loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.errors import ModelError
from tasks.runtimes.base import LoadedModel, Runtime, normalize
from tasks.variant import VariantRecord


def load(path: Path, record: VariantRecord, threads: int) -> LoadedModel:
    """Run a serialized TensorRT engine; needs `tensorrt` and a CUDA device (buffers via torch)."""
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        raise ModelError(f"{path}: a TensorRT engine needs a CUDA device; none is visible")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ModelError(
            f"{path}: TensorRT could not deserialize the engine (built for another GPU/version?)"
        )
    context = engine.create_execution_context()
    assert record.input is not None and record.output is not None
    input_name, output_name = record.input.name, record.output.name

    def infer(x: Array) -> Array:
        inputs = torch.from_numpy(np.ascontiguousarray(x)).cuda()
        context.set_input_shape(input_name, tuple(inputs.shape))
        outputs = torch.empty(
            tuple(context.get_tensor_shape(output_name)), dtype=torch.float32, device="cuda"
        )
        context.set_tensor_address(input_name, inputs.data_ptr())
        context.set_tensor_address(output_name, outputs.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise ModelError(f"{path}: TensorRT execution failed")
        stream.synchronize()
        return outputs.cpu().numpy()

    return LoadedModel(
        prepare=lambda images: normalize(images, record), infer=infer, finish=lambda y: y
    )


RUNTIME = Runtime(
    name="tensorrt",
    format="tensorrt",
    model_file="model.engine",
    packages=("tensorrt", "torch"),
    edge=False,
    runner_kinds=frozenset({"cuda"}),
    load=load,
)
