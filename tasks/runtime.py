"""Runtime wrappers: each takes a variant directory and returns logits for a batch of images.

Images go in as float32 NCHW pixels in [0, 1]; each wrapper applies the variant's own
preprocessing (normalisation, layout, int8 quantisation) as recorded in variant.json. A loaded
model is split into prepare → infer → finish so a benchmark can time `infer` alone, the way the
runtimes' own benchmark tools do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.errors import ModelError, brief
from tasks.variant import TensorSpec, VariantRecord, model_path, read_record

Array = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LoadedModel:
    """A variant in its runtime: images → logits, in three steps."""

    prepare: Array  # [0, 1] NCHW images → the runtime's input (normalised, laid out, quantised)
    infer: Array  # runtime input → raw output (the part a benchmark times)
    finish: Array  # raw output → float32 logits

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.finish(self.infer(self.prepare(images)))


Predictor = LoadedModel


def load_predictor(variant_dir: Path, threads: int = 1) -> LoadedModel:
    """Load the variant in its own runtime (ONNX Runtime, LiteRT or TensorRT)."""
    record = read_record(variant_dir)
    if record.status != "ok":
        raise ModelError(
            f"{variant_dir}: variant '{record.name}' is {record.status}: {record.reason}"
        )
    path = model_path(variant_dir, record)
    if not path.exists():
        raise ModelError(f"{path}: model file missing from the variant directory")
    loaders = {"onnxruntime": _onnxruntime, "litert": _litert, "tensorrt": _tensorrt}
    return loaders[str(record.runtime)](path, record, threads)


def normalize(images: np.ndarray, record: VariantRecord) -> np.ndarray:
    spec = record.preprocess or {}
    mean = np.asarray(spec.get("mean", [0.0]), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.get("std", [1.0]), dtype=np.float32).reshape(1, -1, 1, 1)
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)


def _onnxruntime(path: Path, record: VariantRecord, threads: int) -> LoadedModel:
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


def _litert(path: Path, record: VariantRecord, threads: int) -> LoadedModel:
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

    def infer(x: np.ndarray) -> np.ndarray:
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


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return np.ascontiguousarray(x, dtype=np.float32)
    scale, zero_point = spec.quantization["scale"], spec.quantization["zero_point"]
    return np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)


def dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return y.astype(np.float32)
    return (
        (y.astype(np.float32) - spec.quantization["zero_point"]) * spec.quantization["scale"]
    ).astype(np.float32)


def _tensorrt(path: Path, record: VariantRecord, threads: int) -> LoadedModel:
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

    def infer(x: np.ndarray) -> np.ndarray:
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
