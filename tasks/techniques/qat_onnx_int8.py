"""qat_onnx_int8: quantization-aware fine-tuning whose trained ranges are the deployed ones, run
as int8 by ONNX Runtime.

qat_int8 hands its trained float weights to a converter that calibrates activations again with
min/max, so the ranges QAT learned never reach its LiteRT model; where min/max is what fails (a
network with rare large activations: SiLU, squeeze-excitation), QAT then scores what
post-training int8 scores. Here the fake-quantized network itself is exported: every activation
quantizer becomes a QuantizeLinear/DequantizeLinear pair with the scale and zero point it ended
training with, every conv/linear reads its weights as int8 (per output channel, the grid it was
trained on) through a DequantizeLinear. ONNX Runtime fuses each pattern into an int8 kernel
(QLinearConv, QGemm) when it loads the model, so the int8 model computes what the fake-quantized
network computed, up to the kernels' rounding; the record says how closely (`fake_quant_agreement`
on the test images' top-1).

`ranges: learned` (the default) trains each activation's scale and zero point with the weights
(LSQ), starting from the observed range; `minmax` keeps the moving-average observers.

The training runs in a child process, as qat_int8's does (torch.fx's trace patches
torch.nn.Module.__call__ for the whole process). torch and onnx are imported where they are used.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tasks.arrays import Array
from tasks.data import Preprocess
from tasks.errors import ModelError, VariantError
from tasks.qat_settings import QatTrainingConfig, Ranges
from tasks.runtimes.onnxruntime import RUNTIME as ONNXRUNTIME
from tasks.technique import Technique
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord

if TYPE_CHECKING:
    import onnx
    from torch import fx

MODEL_FILE = ONNXRUNTIME.model_file
# the test images the int8 model is compared with the fake-quantized network on (as the fp32
# export's check: a few hundred tell what thousands do)
AGREEMENT_IMAGES = 256


class QatOnnxInt8Config(QatTrainingConfig):
    technique: Literal["qat_onnx_int8"]
    ranges: Ranges = "learned"


def build(context: BuildContext, config: QatOnnxInt8Config) -> VariantRecord:
    """The source's torch model, fine-tuned fake-quantized, as a QDQ int8 ONNX model."""
    from tasks.child_process import in_child_process

    return in_child_process(f"{context.name}'s build", _build_here, context, config)


def _build_here(context: BuildContext, config: QatOnnxInt8Config) -> VariantRecord:
    from tasks.io import atomic_dir
    from tasks.qat import prepare_qat, qat_finetune, to_qdq, weighted_qat_modules
    from tasks.variant import record_built

    preprocess = context.preprocess()
    model = context.editable_source_model("quantization-aware training")
    prepared = prepare_qat(model, preprocess, context.name, config.ranges)
    qat_finetune(
        prepared,
        config,
        context.split("train"),
        context.split("val"),
        preprocess,
        context.seed,
        context.name,
    )
    qdq = to_qdq(prepared)
    check_x = preprocess.normalize(context.split("test").x[:AGREEMENT_IMAGES])
    with atomic_dir(context.out_dir) as staging:
        model_file = staging / MODEL_FILE
        export_qdq(context.name, qdq, preprocess, model_file)
        int8_weights = store_weights_as_int8(model_file)
        check = int8_check(model_file, prepared, check_x)
        if not check.int8_kernels:
            raise VariantError(
                f"{context.name}: ONNX Runtime fused no int8 kernel from the QDQ model "
                f"({int8_weights} int8 weight(s)): it would run in float"
            )
        return record_built(
            staging,
            name=context.name,
            settings=config.model_dump(),
            source=context.source_record(),  # float32 I/O, the source's tensors
            preprocess=preprocess,
            runtime="onnxruntime",
            model_file=MODEL_FILE,
            extra={
                "onnxruntime": version("onnxruntime"),
                "quant_format": "QDQ",
                "ranges": config.ranges,
                "qat_layers": len(weighted_qat_modules(prepared)),
                "int8_weights": int8_weights,
                "int8_kernels": check.int8_kernels,
                "fake_quant_agreement": check.agreement,
                "agreement_images": len(check_x),
            },
        )


def export_qdq(name: str, qdq: fx.GraphModule, preprocess: Preprocess, path: Path) -> None:
    """The QDQ network as ONNX (one error line when the exporter refuses an op)."""
    from tasks.export import export_onnx

    try:
        export_onnx(qdq, preprocess, path)
    except ModelError as error:
        raise VariantError(f"{name}: {error}") from None


def store_weights_as_int8(path: Path) -> int:
    """Rewrite each QuantizeLinear of a constant (a weight, exported in float with its grid) as the
    int8 initializer it computes, read by the DequantizeLinear as before: the file holds the int8
    weights (a quarter of the float bytes) and ONNX Runtime sees the weight pattern it fuses.
    Returns how many weights were stored as int8."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    constants = _constants(graph)
    folded: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in constants:
            continue
        values = constants[node.input[0]]
        scale = constants[node.input[1]]
        zero_point = constants[node.input[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per channel: broadcast along `axis`
            shape = [1] * values.ndim
            shape[axis] = scale.size
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        info = np.iinfo(zero_point.dtype)
        quantized = np.clip(
            np.rint(values / scale) + zero_point.astype(np.int32), info.min, info.max
        ).astype(zero_point.dtype)
        name = f"{node.output[0]}_int8"
        graph.initializer.append(numpy_helper.from_array(quantized, name))
        for consumer in graph.node:
            consumer.input[:] = [name if i == node.output[0] else i for i in consumer.input]
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for initializer in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(initializer)
    onnx.save(model, str(path))
    return len(folded)


def _constants(graph: onnx.GraphProto) -> dict[str, Array]:
    from onnx import helper, numpy_helper

    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # in topological order: a Cast or Identity of a constant is one
        if node.op_type == "Constant":
            value = next(a.t for a in node.attribute if a.name == "value")
            found[node.output[0]] = numpy_helper.to_array(value)
        elif node.op_type == "Identity" and node.input[0] in found:  # a shared zero point
            found[node.output[0]] = found[node.input[0]]
        elif node.op_type == "Cast" and node.input[0] in found:
            to = next(a.i for a in node.attribute if a.name == "to")
            dtype = helper.tensor_dtype_to_np_dtype(to)
            found[node.output[0]] = found[node.input[0]].astype(dtype)
    return found


@dataclass(frozen=True)
class Int8Check:
    agreement: float  # top-1 agreement with the fake-quantized network
    int8_kernels: int  # ops ONNX Runtime runs in int8 once it has fused the QDQ patterns


def int8_check(path: Path, prepared: fx.GraphModule, x: Array) -> Int8Check:
    """ONNX Runtime's int8 model against the fake-quantized network, and what ORT made of it."""
    import onnx
    import onnxruntime as ort

    from tasks.export import INPUT_NAME
    from tasks.train import predict

    with tempfile.TemporaryDirectory(prefix="mp-qdq-") as work:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the optimized copy is this machine's: ORT says so
        options.optimized_model_filepath = str(Path(work) / "optimized.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        int8_logits = session.run(None, {INPUT_NAME: x})[0]
        fused = onnx.load(options.optimized_model_filepath).graph.node
    kernels = sum(n.op_type.startswith(("QLinear", "QGemm", "ConvInteger")) for n in fused)
    agreement = float((int8_logits.argmax(1) == predict(prepared.eval(), x).argmax(1)).mean())
    return Int8Check(agreement=agreement, int8_kernels=kernels)


TECHNIQUE = Technique(
    name="qat_onnx_int8",
    config=QatOnnxInt8Config,
    starts_from="torch",
    runtime="onnxruntime",
    # a QDQ graph: not a float model for onnx2tf or TensorRT's fp16 builder to start from
    produces_onnx=False,
    build=build,
    uses=("tasks.export", "tasks.qat", "tasks.train", "tasks.child_process"),
)
