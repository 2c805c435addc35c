"""OpenVINO: an IR (`model.xml`, its weights in `model.bin`) from openvino_int8, compiled for the
CPU plugin. Not in the slim `[edge]` install: its wheel (59 MB) outweighs ONNX Runtime's and
LiteRT's together (17 + 22 MB); an edge runner that measures it installs `[edge-openvino]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.arrays import Array
from tasks.errors import ModelError, brief
from tasks.runtimes.base import LoadedModel, Runtime, normalize
from tasks.variant import VariantRecord

WEIGHTS_FILE = "model.bin"  # openvino.save_model writes it beside model.xml, same stem


def compile_config(threads: int) -> dict[str, str | int]:
    """The CPU plugin's settings: `threads` inference threads in one stream, tuned for latency.

    f32 precision is pinned: on CPUs with bf16 units (AVX512-BF16, AMX) the plugin would run the
    non-quantized ops in bf16 by default, so the same IR would give other logits, and another
    accuracy, on the runner than where it was evaluated.
    """
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32",
    }


def load(path: Path, record: VariantRecord, threads: int) -> LoadedModel:
    """The IR compiled on the CPU plugin with `threads` threads, once per batch size: a static
    shape ran the default CNN ~5% faster at batch 1 than the IR's dynamic batch (LiteRT too
    re-allocates per shape); batch 1, the benchmark's, is compiled here, so a broken IR fails at
    load and the benchmark's load time includes a compilation."""
    import openvino as ov

    core = ov.Core()
    requests: dict[int, Any] = {}

    def request_for(shape: tuple[int, ...]) -> Any:
        if shape[0] not in requests:
            try:
                model = core.read_model(str(path))
                model.reshape(list(shape))
                compiled = core.compile_model(model, "CPU", compile_config(threads))
            except RuntimeError as exc:  # OpenVINO's error for unreadable or invalid IRs
                raise ModelError(f"{path}: OpenVINO cannot load it ({brief(exc)})") from None
            requests[shape[0]] = compiled.create_infer_request()
        return requests[shape[0]]

    dims = record.input.shape[1:] if record.input is not None else [None]
    fixed = [d for d in dims if d is not None]
    if len(fixed) == len(dims):
        request_for((1, *fixed))

    def infer(x: Array) -> Array:
        request = request_for(x.shape)
        # a tensor over x's memory, no dict of outputs: ~20 µs less a call than infer({0: x})
        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x), shared_memory=True))
        request.infer()
        # the request reuses its output buffer on the next call: hand out a copy
        return np.array(request.get_output_tensor(0).data)

    return LoadedModel(
        prepare=lambda images: normalize(images, record),
        infer=infer,
        finish=lambda y: y.astype(np.float32),
    )


RUNTIME = Runtime(
    name="openvino",
    format="openvino",
    model_file="model.xml",
    packages=("openvino",),
    edge=False,
    runner_kinds=frozenset({"cpu"}),
    load=load,
    extra="edge-openvino",
    companion_files=(WEIGHTS_FILE,),
)
