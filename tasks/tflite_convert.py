"""ONNX → TF SavedModel (onnx2tf) → LiteRT: the conversion every LiteRT technique shares.

onnx2tf writes the SavedModel and then runs TensorFlow's TFLiteConverter once per output it is
asked for: float32 and float16 always, dynamic-range int8 and full-integer int8 on request. A
technique picks one `Output`, gets that file back, and records it with `litert_record`.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tasks.data import Preprocess
from tasks.errors import VariantError, brief
from tasks.quiet import held_back
from tasks.runtimes.litert import RUNTIME as LITERT
from tasks.variant import (
    TensorSpec,
    VariantRecord,
    carried_from,
    data_fields,
    finished_record,
    preprocess_fields,
    write_record,
)

MODEL_FILE = LITERT.model_file
# names onnx2tf keeps as they are: a letter first, then what a TensorFlow scope allows; others
# are renamed first. torch's leading "/" too: onnx2tf builds a depthwise conv that follows a
# channels-last LayerNorm (ConvNeXt) as a Keras layer named after its node, and the float
# outputs' SavedModel refuses `/blocks/blocks.0/dw/Conv/kernel`
_TF_SCOPE = re.compile(r"^[A-Za-z][A-Za-z0-9_./>-]*$")
# what onnx2tf calls each output: `<stem>_<suffix>.tflite`
Output = Literal["float32", "float16", "dynamic_range_quant", "full_integer_quant"]
_CONVERT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Calibration:
    """Full-integer only: NHWC pixel samples (onnx2tf applies (x - mean) / std itself) and the
    dtype of the model's input and output tensors."""

    samples_file: Path
    io_dtype: Literal["int8", "float32"] = "int8"


@dataclass(frozen=True)
class Converted:
    """The .tflite a technique asked for, and the size of the float32 one onnx2tf wrote beside
    it from the same SavedModel: the like-for-like reference of its size."""

    tflite: Path
    float32_bytes: int


def working_copy(onnx_file: Path, work_dir: Path) -> Path:
    """A simplified copy of the ONNX file in work_dir, its constants initializers and its node
    names ones TensorFlow takes: onnx2tf rewrites (simplifies) the file it is given, and the
    source must never change. Loaded and saved once, every step on the model in memory."""
    import onnx

    model = simplified(onnx.load(str(onnx_file)))
    channel_shuffles_as_gather(model)
    constants_as_initializers(model.graph)
    tf_safe_node_names(model.graph)
    copy = work_dir / "model.onnx"
    onnx.save(model, str(copy))
    return copy


def channel_shuffles_as_gather(model: Any) -> int:
    """Rewrite each channel shuffle of an onnx ModelProto (Reshape of an NCHW map to
    (N, g, C/g, H, W), Transpose (0, 2, 1, 3, 4), Reshape back to (N, C, H, W)) as the fixed
    permutation it is, a Gather of channels, and return how many: onnx2tf carries an NHWC
    layout through 4-D ops but not through the 5-D reshape, so the shuffled map reached the next
    Concat as NCHW beside an NHWC branch, and torchvision's ShuffleNetV2 failed every LiteRT
    conversion ("Dimension 1 in both shapes must be equal, but are 6 and 24")."""
    rewritten = 0
    # one at a time, shapes inferred again after each: a reshape to a computed shape hides the
    # sizes of every map after it, until it is a Gather
    while _one_shuffle_as_gather(model):
        rewritten += 1
    if rewritten:
        _drop_unread(model.graph)
    return rewritten


def _one_shuffle_as_gather(model: Any) -> bool:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    perms = [list(a.ints) for n in graph.node if n.op_type == "Transpose" for a in n.attribute]
    if [0, 2, 1, 3, 4] not in perms:  # no shuffle: no copy of the model to infer shapes on
        return False
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]  # onnxsim's sizes, unknown after a computed reshape
    inferred = onnx.shape_inference.infer_shapes(bare)
    shapes = {
        value.name: [
            d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim
        ]
        for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}

    def only_consumer(name: str, op_type: str) -> Any:
        found = consumers.get(name, [])
        if len(found) == 1 and found[0].op_type == op_type and name not in outputs:
            return found[0]
        return None

    for split in [node for node in graph.node if node.op_type == "Reshape"]:
        transpose = only_consumer(split.output[0], "Transpose")
        merge = transpose and only_consumer(transpose.output[0], "Reshape")
        if merge is None:
            continue
        perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
        source = shapes.get(split.input[0])
        grouped = _target_shape(graph, split.input[1])
        if perm != [[0, 2, 1, 3, 4]] or source is None or len(source) != 4 or None in source[1:]:
            continue
        channels, height, width = source[1:]
        if grouped is None or len(grouped) != 5 or grouped[3:] != [height, width]:
            continue
        groups, per_group = grouped[1], grouped[2]
        merged = _target_shape(graph, merge.input[1])
        if groups is None or per_group is None or groups * per_group != channels or merged is None:
            continue
        if len(merged) != 4 or merged[2:] != [height, width] or merged[1] not in (channels, -1):
            continue
        order = np.array(
            [g * per_group + j for j in range(per_group) for g in range(groups)], dtype=np.int64
        )
        indices = numpy_helper.from_array(order, f"{merge.output[0]}_shuffle_order")
        graph.initializer.append(indices)
        at = list(graph.node).index(split)
        for node in (split, transpose, merge):
            graph.node.remove(node)
        gather = helper.make_node(
            "Gather",
            [split.input[0], indices.name],
            [merge.output[0]],
            axis=1,
            name=f"{merge.name or merge.output[0]}_shuffle",
        )
        graph.node.insert(at, gather)
        return True
    return False


def _target_shape(graph: Any, name: str) -> list[int | None] | None:
    """A Reshape's target shape where it is a constant, or a Concat of one-element parts some of
    which are constants (torch computes the batch size from Shape): None for a part computed."""
    from onnx import numpy_helper

    tensors = {t.name: t for t in graph.initializer}  # read only where asked: weights are large
    for node in graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensors[node.output[0]] = node.attribute[0].t
    if name in tensors:
        return [int(v) for v in numpy_helper.to_array(tensors[name]).ravel()]
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None or producer.op_type != "Concat":
        return None
    parts: list[int | None] = []
    for part in producer.input:
        if part in tensors:
            parts += [int(v) for v in numpy_helper.to_array(tensors[part]).ravel()]
        else:
            parts.append(None)  # one element: a batch size torch computed
    return parts


def _drop_unread(graph: Any) -> None:
    """Remove the nodes and initializers nothing reads any more (a rewritten reshape's shape,
    computed from Shape or stored as a constant)."""
    outputs = {value.name for value in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


def constants_as_initializers(graph: Any) -> int:
    """Turn every Constant node of an onnx GraphProto holding a tensor into an initializer, and
    return how many: onnxsim keeps a scalar Constant that many nodes share, and onnx2tf's
    accuracy check of a Mul then builds a Keras model whose output is that bare float and stops
    (a tanh-GELU after a Linear on NHWC maps: "Output tensors of a Functional model must be the
    output of a TensorFlow `Layer`"; found on an unseen ConvNeXt-style net). As an initializer
    it is a weight like any other."""
    import onnx

    moved = 0
    for node in list(graph.node):
        if node.op_type != "Constant" or [a.name for a in node.attribute] != ["value"]:
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
        moved += 1
    return moved


def tf_safe_node_names(graph: Any) -> int:
    """Rename the nodes of an onnx GraphProto whose names TensorFlow refuses as a scope, and
    return how many: an nn.Sequential exports `/8/body/body.0/Conv`, and onnx2tf then exits
    with "OP name does not match the pattern" (found on a net it had never seen)."""
    taken = {node.name for node in graph.node}
    renamed = 0
    for index, node in enumerate(graph.node):
        if _TF_SCOPE.match(node.name):
            continue
        name = node.name.lstrip("/")  # torch's "/blocks/blocks.0/dw/Conv" keeps its scopes
        if not _TF_SCOPE.match(name):
            name = re.sub(r"[^A-Za-z0-9_.]", "_", name).strip("_") or f"node{index}"
            name = name if name[0].isalpha() else f"n{name}"
        while name in taken:
            name += "_"
        taken.add(name)
        node.name = name
        renamed += 1
    return renamed


def simplified(model: Any) -> Any:
    """The onnx ModelProto with its constant subgraphs folded by onnxsim, in this process (the
    model as given where onnxsim cannot fold it).

    onnx2tf simplifies through the `onnxsim` command; where that is not on PATH (the venv's
    `modelpress` run without activating the venv) it silently converts the raw graph, and the
    Pad amounts torch computes at run time (Concat/Slice/Transpose of a constant) come out
    transposed: EfficientNet-Lite's TF-'SAME' pads turned a 48x48 map into 49x47 and the
    conversion failed. Folded here, every Pad is a constant or fused into its Conv.
    """
    import onnxsim

    try:
        folded, checked = onnxsim.simplify(model)
    except Exception:  # onnxsim cannot fold every graph; onnx2tf then gets it as exported
        return model
    return folded if checked else model


def convert(
    technique: str,
    onnx_file: Path,
    work_dir: Path,
    output: Output,
    input_name: str,
    preprocess: Preprocess,
    per_channel: bool = True,
    calibration: Calibration | None = None,
) -> Converted:
    """Run onnx2tf on `onnx_file` (a working copy) and return the `output` .tflite it wrote;
    `per_channel` sets the int8 outputs' weight scales (one per output channel, or one a tensor)."""
    if (output == "full_integer_quant") != (calibration is not None):
        raise ValueError("a full-integer model needs calibration; the other outputs take none")
    options: dict[str, Any] = {
        "quant_type": "per-channel" if per_channel else "per-tensor",
        "output_dynamic_range_quantized_tflite": output == "dynamic_range_quant",
    }
    if calibration is not None:
        options |= {
            "output_integer_quantized_tflite": True,
            "custom_input_op_name_np_data_path": [
                [input_name, str(calibration.samples_file), preprocess.mean, preprocess.std]
            ],
            "input_quant_dtype": calibration.io_dtype,
            "output_quant_dtype": calibration.io_dtype,
        }
    said = None
    try:
        # onnx2tf keeps global Keras/TF state: one conversion at a time in a process.
        # TensorFlow's chatter (importing it included) is held back: `--verbose` shows it.
        with _CONVERT_LOCK, held_back() as said, _variance_by_mul():
            import onnx2tf

            onnx2tf.convert(
                input_onnx_file_path=str(onnx_file),
                output_folder_path=str(work_dir / "tf"),
                non_verbose=True,
                **options,
            )
    # onnx2tf raises bare exceptions naming the failing op, or prints ERROR lines and calls
    # sys.exit(1): that must fail this variant, not end the night
    except (Exception, SystemExit) as exc:
        if isinstance(exc, SystemExit):
            detail = _said_error(said.text() if said else "") or f"it exited with {exc.code}"
        else:
            detail = _conversion_detail(exc)
        raise VariantError(
            f"{technique}: onnx2tf could not convert {onnx_file.name} ({detail})"
        ) from None
    produced = work_dir / "tf" / f"{onnx_file.stem}_{output}.tflite"
    float32 = work_dir / "tf" / f"{onnx_file.stem}_float32.tflite"
    flex = _select_tf_ops(produced if produced.exists() else float32)
    if flex:  # TensorFlow kernels the builtin LiteRT interpreter (and XNNPACK) do not have
        hint = "; ONNX Erf is an exact GELU: export nn.GELU(approximate='tanh')" * ("Erf" in flex)
        raise VariantError(
            f"{technique}: the converted model needs TensorFlow Select ops "
            f"({', '.join(f'Flex{op}' for op in flex)}) that LiteRT's builtin interpreter "
            f"cannot run{hint}"
        )
    if not produced.exists():  # onnx2tf logs (not raises) a failed dynamic-range conversion
        why = _said_error(said.text() if said else "")
        raise VariantError(
            f"{technique}: onnx2tf wrote no {output} model for {onnx_file.name}"
            + (f" ({why})" if why else "")
        )
    return Converted(produced, float32.stat().st_size)  # float32 is always written first


@contextlib.contextmanager
def _variance_by_mul() -> Iterator[None]:
    """tf.nn.moments, while onnx2tf converts, with the variance as mean((x - m) * (x - m)).

    onnx2tf builds LayerNormalization (a Keras layer) and InstanceNormalization on tf.nn.moments,
    whose SQUARED_DIFFERENCE has no int8 XNNPACK kernel: on an unseen MobileViT-style net its 3
    took 31% of the full-integer model's time, 19 us each where an int8 MUL took 2.5. SUB and MUL
    run in XNNPACK; the value is the same. Conversions hold _CONVERT_LOCK, so nothing else in
    the process builds TensorFlow graphs meanwhile."""
    import tensorflow as tf

    def moments(
        x: Any, axes: Any, shift: Any = None, keepdims: bool = False, name: Any = None
    ) -> tuple[Any, Any]:
        mean = tf.reduce_mean(x, axes, keepdims=True)
        centred = x - tf.stop_gradient(mean)
        variance = tf.reduce_mean(centred * centred, axes, keepdims=True)
        if not keepdims:
            mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
        return mean, variance

    namespaces = list({id(ns): ns for ns in (tf.nn, tf.compat.v2.nn)}.values())
    originals = [ns.moments for ns in namespaces]
    for namespace in namespaces:
        namespace.moments = moments
    try:
        yield
    finally:
        for namespace, original in zip(namespaces, originals, strict=True):
            namespace.moments = original


def _select_tf_ops(tflite_file: Path) -> list[str]:
    """The TensorFlow ops a .tflite file calls through the Flex delegate (custom ops named
    Flex<Op>), sorted; none for a model the builtin interpreter runs."""
    if not tflite_file.exists():
        return []
    names = re.findall(rb"Flex([A-Z][A-Za-z0-9]*)", tflite_file.read_bytes())
    return sorted({name.decode() for name in names})


def io_specs(tflite_file: Path) -> tuple[TensorSpec, TensorSpec]:
    """The model's input (NHWC) and output tensors as LiteRT reads them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_file))
    return _spec(interpreter.get_input_details()[0], "NHWC"), _spec(
        interpreter.get_output_details()[0], None
    )


def _spec(detail: dict, layout: str | None) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail["quantization"]
    quantization = (
        {"scale": float(scale), "zero_point": int(zero_point)} if dtype == "int8" else None
    )
    shape = [None if dim < 0 else int(dim) for dim in detail["shape_signature"]]
    return TensorSpec(detail["name"], shape, dtype, layout=layout, quantization=quantization)


def write_litert_variant(
    converted: Converted,
    staging: Path,
    *,
    name: str,
    technique: str,
    settings: dict[str, Any],
    source: VariantRecord,
    preprocess: Preprocess,
    extra: dict[str, Any],
) -> VariantRecord:
    """Compact the converted model into the variant directory being staged and write its record."""
    converted_bytes = converted.tflite.stat().st_size
    (staging / MODEL_FILE).write_bytes(compact(converted.tflite.read_bytes()))
    input_spec, output_spec = io_specs(staging / MODEL_FILE)
    record = VariantRecord(
        name=name,
        technique=technique,
        status="ok",
        runtime="litert",
        model_file=MODEL_FILE,
        input=input_spec,
        output=output_spec,
        preprocess=preprocess_fields(preprocess),
        data=data_fields(preprocess),
        settings=settings,
        **carried_from(source),
        extra={
            "onnx2tf": version("onnx2tf"),
            "float32_tflite_bytes": converted.float32_bytes,
            "converted_bytes": converted_bytes,
        }
        | extra,
    )
    record = finished_record(staging, record)
    write_record(staging, record)
    return record


def compact(content: bytes) -> bytes:
    """The same LiteRT model with every identical small vector stored once.

    TensorFlow's converter writes each tensor's quantization parameters as vectors of their own,
    and LiteRT requires as many zero points (int64) as scales: a per-channel int8 model carries
    8 bytes of zeros per output channel of every weight and bias tensor (EfficientNet-Lite0:
    337 KB of its 3.97 MB). A flatbuffer may point many tables at one vector, so one vector of
    zeros serves every tensor with that many channels; tensor data keeps its 16-byte alignment.
    Models whose buffers live outside the flatbuffer (offset/size, over 2 GB) are returned as
    they are.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    if any(buffer.offset for buffer in model.buffers or []):
        return content
    builder = _sharing_builder(len(content))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    packed = bytes(builder.Output())
    return packed if len(packed) < len(content) else content


def _sharing_builder(size: int) -> Any:
    """A flatbuffers.Builder whose numpy vectors up to 64 KiB are written once per content."""
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, initial: int) -> None:
            super().__init__(initial)
            self.written: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x: np.ndarray) -> int:  # flatbuffers' name
            key = (x.dtype.str, x.tobytes()) if x.nbytes <= 1 << 16 else None
            if key is not None and key in self.written:
                return self.written[key]
            if x.dtype == np.uint8:  # tensor data: 16-byte aligned, as the converter writes it
                self.StartVector(1, x.size, 16)
                head = int(self.Head()) - x.nbytes
                self.head = head
                self.Bytes[head : head + x.nbytes] = x.tobytes()
                offset = int(self.EndVector())
            else:
                offset = int(super().CreateNumpyVector(x))
            if key is not None:
                self.written[key] = offset
            return offset

    return SharingBuilder(size)


# Keras wraps a layer's error between a header and the call's arguments: the cause is in between
_KERAS_FRAME = ("Exception encountered when calling layer", "Call arguments received", "•")


def _said_error(text: str) -> str | None:
    """onnx2tf's own ERROR lines (colour codes removed), joined: why it gave up."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    errors = [line.split("ERROR:", 1)[1].strip() for line in plain.splitlines() if "ERROR:" in line]
    return brief(" ".join(e for e in errors if e)) if errors else None


def _conversion_detail(exc: BaseException) -> str:
    """The line of an onnx2tf/Keras error that says what went wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(_KERAS_FRAME)]
    return brief(causes[0]) if causes else brief(exc, last_line=True)
