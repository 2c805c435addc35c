"""The ONNX graph made ready for onnx2tf, on a copy (the source never changes): constant
subgraphs folded, channel shuffles as a Gather, constants as initializers, and node names a
TensorFlow scope takes. Each rewrite is one that a real model's conversion failed without.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

# names onnx2tf keeps as they are: a letter first, then what a TensorFlow scope allows; others
# are renamed first. torch's leading "/" too: onnx2tf builds a depthwise conv that follows a
# channels-last LayerNorm (ConvNeXt) as a Keras layer named after its node, and the float
# outputs' SavedModel refuses `/blocks/blocks.0/dw/Conv/kernel`
_TF_SCOPE = re.compile(r"^[A-Za-z][A-Za-z0-9_./>-]*$")


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
