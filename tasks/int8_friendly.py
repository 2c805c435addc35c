"""int8_friendly: rewrite an ONNX graph's hard activations into ops LiteRT's int8 fast path runs.

Why (issue 10, measured in benchmarks/int8_modern.py): onnx2tf turns ONNX HardSwish into TFLite
HARD_SWISH and HardSigmoid into RELU_0_TO_1. LiteRT's XNNPACK delegate takes neither in int8,
so every one of them falls back to a builtin kernel and splits the delegated graph into one
partition per activation; on a MobileNetV3-style net int8 ran 2x slower than fp32 ONNX Runtime.
Written as ReLU6 arithmetic, the same functions become ADD/MUL with a fused RELU6 (or a MINIMUM/
MAXIMUM clamp), which XNNPACK runs in int8: one partition, no fallbacks.

    hard_swish(x)   = x * relu6(x + 3) / 6
    hard_sigmoid(x) = relu6(6·alpha·x + 6·beta) / 6      (torch: alpha = 1/6, beta = 1/2)

Both are exact in real arithmetic; int8 adds one requantisation per op.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Rewrite:
    """How many activations of each kind were rewritten."""

    hard_swish: int
    hard_sigmoid: int

    @property
    def total(self) -> int:
        return self.hard_swish + self.hard_sigmoid


def rewrite_hard_activations(onnx_file: Path) -> Rewrite:
    """Replace HardSwish/HardSigmoid nodes in onnx_file (in place) by ReLU6 arithmetic."""
    import onnx

    model = onnx.load(str(onnx_file))
    graph = model.graph
    recognised = _recognise_written_out(graph)
    constants = _Constants(graph)
    new_nodes = []
    counts = {"HardSwish": 0, "HardSigmoid": 0}
    for node in graph.node:
        if node.op_type == "HardSwish":
            folded = _fold_sixth_into_consumers(graph, node.output[0])
            new_nodes += _hard_swish(node, constants, divide=not folded)
        elif node.op_type == "HardSigmoid":
            folded = _fold_sixth_into_consumers(graph, node.output[0])
            new_nodes += _hard_sigmoid(node, constants, divide=not folded)
        else:
            new_nodes.append(node)
            continue
        counts[node.op_type] += 1
    if recognised or counts["HardSwish"] + counts["HardSigmoid"]:
        del graph.node[:]
        graph.node.extend(new_nodes)
        onnx.checker.check_model(model)
        onnx.save(model, str(onnx_file))
    return Rewrite(hard_swish=counts["HardSwish"], hard_sigmoid=counts["HardSigmoid"])


def _recognise_written_out(graph: object) -> int:
    """Turn hard-swish and hard-sigmoid written out in arithmetic into HardSwish/HardSigmoid
    nodes (in place); how many were found.

    MobileNetV3 code often writes them by hand: x * relu6(x + 3) / 6 and relu6(x + 3) / 6,
    exported as Add/Clip/Mul/Div. onnx2tf fuses that chain itself and loses the Add's constant
    ("Output tensors of a Functional model must be the output of a TensorFlow Layer ... Found:
    3.0"): the conversion failed. As named nodes they take the rewrite below, the form that
    converts and runs in int8.
    """
    from onnx import helper

    nodes = list(graph.node)  # type: ignore[attr-defined]
    scalars = _scalar_values(graph)
    producer = {out: n for n in nodes for out in n.output}
    readers = _use_counts(nodes)
    outputs = {o.name for o in graph.output}  # type: ignore[attr-defined]

    def private(name: str) -> bool:  # read by one node only, and no graph output
        return readers.get(name, 0) == 1 and name not in outputs

    def sixth_of(node: object) -> str | None:  # y / 6 or y * (1/6): y
        a, b = node.input[0], node.input[1]  # type: ignore[attr-defined]
        if node.op_type == "Div" and _near(scalars.get(b), 6.0):  # type: ignore[attr-defined]
            return str(a)
        if node.op_type == "Mul":  # type: ignore[attr-defined]
            for y, k in ((a, b), (b, a)):
                if _near(scalars.get(k), 1.0 / 6.0):
                    return str(y)
        return None

    def relu6_of_plus3(name: str) -> str | None:  # name = clip(x + 3, 0, 6): x
        clip = producer.get(name)
        if clip is None or clip.op_type != "Clip" or len(clip.input) != 3 or not private(name):
            return None
        if not (_near(scalars.get(clip.input[1]), 0.0) and _near(scalars.get(clip.input[2]), 6.0)):
            return None
        add = producer.get(clip.input[0])
        if add is None or add.op_type != "Add" or not private(clip.input[0]):
            return None
        for x, k in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            # the rewrite's own output has this shape too: leave it be
            if _near(scalars.get(k), 3.0) and not k.startswith(_CONSTANT_PREFIX):
                return str(x)
        return None

    replaced: dict[int, object] = {}  # id of the last node of a pattern -> its named node
    dropped: set[int] = set()
    for node in nodes:
        inner = sixth_of(node) if node.op_type in ("Div", "Mul") else None
        if inner is None or not private(inner):
            continue
        source = producer.get(inner)
        if source is None:
            continue
        x = relu6_of_plus3(inner)
        if x is not None:  # relu6(x + 3) / 6
            clip = source
            chain = [clip, producer[clip.input[0]]]
            named = helper.make_node(
                "HardSigmoid",
                [x],
                [node.output[0]],
                alpha=1.0 / 6.0,
                beta=0.5,
                name=f"{node.name or node.output[0]}/hard_sigmoid",
            )
        elif source.op_type == "Mul":  # x * relu6(x + 3) / 6
            a, b = source.input[0], source.input[1]
            found = [(x, g) for x, g in ((a, b), (b, a)) if relu6_of_plus3(g) == x]
            if not found:
                continue
            gate = producer[found[0][1]]
            chain = [source, gate, producer[gate.input[0]]]
            named = helper.make_node(
                "HardSwish",
                [found[0][0]],
                [node.output[0]],
                name=f"{node.name or node.output[0]}/hard_swish",
            )
        else:
            continue
        replaced[id(node)] = named
        dropped.update(id(n) for n in chain)
    if not replaced:
        return 0
    kept = [replaced.get(id(n), n) for n in nodes if id(n) not in dropped]
    del graph.node[:]  # type: ignore[attr-defined]
    graph.node.extend(kept)  # type: ignore[attr-defined]
    return len(replaced)


def _near(value: float | None, target: float) -> bool:
    return value is not None and bool(np.isclose(value, target, rtol=1e-5, atol=1e-6))


def _scalar_values(graph: object) -> dict[str, float]:
    """Single-value initializers and Constant nodes, by tensor name."""
    from onnx import numpy_helper

    values: dict[str, float] = {}
    for tensor in graph.initializer:  # type: ignore[attr-defined]
        array = numpy_helper.to_array(tensor)
        if array.size == 1:
            values[tensor.name] = float(array.reshape(()))
    for node in graph.node:  # type: ignore[attr-defined]
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
            if array.size == 1:
                values[node.output[0]] = float(array.reshape(()))
    return values


_CONSTANT_PREFIX = "mp_int8_friendly_const_"


class _Constants:
    """Scalar initializers shared by every rewritten node (one per value)."""

    def __init__(self, graph: object) -> None:
        self.graph = graph
        self.names: dict[float, str] = {}

    def __call__(self, value: float) -> str:
        from onnx import numpy_helper

        if value not in self.names:
            name = f"{_CONSTANT_PREFIX}{len(self.names)}"
            tensor = numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
            self.graph.initializer.append(tensor)  # type: ignore[attr-defined]
            self.names[value] = name
        return self.names[value]


def _hard_swish(node: object, const: _Constants, divide: bool) -> list[Any]:
    """x/6 · relu6(x + 3); without the /6 where the consumers' weights took it.

    The /6 goes on x, not on the product: the TFLite converter fuses x·relu6(x+3)/6 (in that
    order) back into HARD_SWISH, the op this rewrite is there to avoid.
    """
    from onnx import helper

    x, y, name = node.input[0], node.output[0], node.name or node.output[0]  # type: ignore[attr-defined]
    shifted, gated, sixth = f"{name}/plus3", f"{name}/relu6", f"{name}/sixth"
    nodes = [
        helper.make_node("Add", [x, const(3.0)], [shifted], name=f"{name}/add"),
        helper.make_node("Clip", [shifted, const(0.0), const(6.0)], [gated], name=f"{name}/clip"),
    ]
    if divide:
        nodes.append(helper.make_node("Mul", [x, const(1.0 / 6.0)], [sixth], name=f"{name}/div6"))
        x = sixth
    return [*nodes, helper.make_node("Mul", [x, gated], [y], name=f"{name}/mul")]


# Ops through which a positive constant factor passes unchanged: f(y/6) = f(y)/6. Mul is bilinear
# (its other input is untouched); the pools, Relu and the shape ops are positively homogeneous.
_SCALE_PASSING = {
    "Mul",
    "GlobalAveragePool",
    "AveragePool",
    "GlobalMaxPool",
    "MaxPool",
    "Relu",
    "Identity",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
}
_SCALE_ABSORBING = {"Conv", "Gemm", "MatMul"}


def _fold_sixth_into_consumers(graph: object, tensor: str) -> bool:
    """Scale by 1/6 the weights of the Conv/Gemm/MatMul nodes `tensor` reaches, if it reaches
    nothing else (on its way it may pass through the ops of _SCALE_PASSING).

    conv(W, y/6) = conv(W/6, y): the division costs a weight change instead of an int8 MUL over
    the whole feature map. In a squeeze-excitation block the activation reaches its convs through
    the pool and the gating Mul (issue 10: 6 full-map MULs of the MobileNetV3-style net, and 6
    on the gates). Only when each weight belongs to that one node, is reached once, and no tensor
    on the way is a graph output.
    """
    from onnx import numpy_helper

    nodes = list(graph.node)  # type: ignore[attr-defined]
    outputs = {o.name for o in graph.output}  # type: ignore[attr-defined]
    initializers = {i.name: i for i in graph.initializer}  # type: ignore[attr-defined]
    uses = _use_counts(nodes)

    def absorbing_weights(name: str) -> list[str] | None:
        readers = [n for n in nodes if name in n.input]
        if not readers or name in outputs:
            return None
        found: list[str] = []
        for reader in readers:
            inputs = list(reader.input)
            if inputs.count(name) != 1:
                return None  # Mul(y, y) is y²/36: not one factor of 1/6
            if reader.op_type in _SCALE_ABSORBING:
                weight = inputs[1] if len(inputs) > 1 else ""
                if inputs.index(name) != 0 or weight not in initializers or uses[weight] != 1:
                    return None
                found.append(weight)
            elif reader.op_type in _SCALE_PASSING:
                if reader.op_type != "Mul" and inputs.index(name) != 0:
                    return None  # a shape input, not the data
                further = absorbing_weights(reader.output[0])
                if further is None:
                    return None
                found += further
            else:
                return None
        return found

    weights = absorbing_weights(tensor)
    if not weights or len(set(weights)) != len(weights):
        return False
    for weight in weights:
        scaled = numpy_helper.to_array(initializers[weight]) / np.float32(6.0)
        initializers[weight].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), weight))
    return True


def _hard_sigmoid(node: object, const: _Constants, divide: bool) -> list[Any]:
    """relu6(6·alpha·x + 6·beta) / 6; without the /6 where the consumers' weights took it."""
    from onnx import helper

    attrs = {a.name: a.f for a in node.attribute}  # type: ignore[attr-defined]
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    x, y, name = node.input[0], node.output[0], node.name or node.output[0]  # type: ignore[attr-defined]
    nodes = []
    if not np.isclose(alpha, 1.0 / 6.0):
        nodes.append(helper.make_node("Mul", [x, const(6.0 * alpha)], [f"{name}/scaled"]))
        x = f"{name}/scaled"
    shifted, gated = f"{name}/shifted", (f"{name}/relu6" if divide else y)
    nodes += [
        helper.make_node("Add", [x, const(6.0 * beta)], [shifted], name=f"{name}/add"),
        helper.make_node("Clip", [shifted, const(0.0), const(6.0)], [gated], name=f"{name}/clip"),
    ]
    if divide:
        nodes.append(helper.make_node("Mul", [gated, const(1.0 / 6.0)], [y], name=f"{name}/div6"))
    return nodes


def _use_counts(nodes: list[Any]) -> dict[str, int]:
    """How many node inputs read each tensor (a tensor read twice by one node counts twice)."""
    counts: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts
