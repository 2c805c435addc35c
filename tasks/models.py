"""Model definitions and loading: the default residual CNN, user factories and .pt2 programs."""

from __future__ import annotations

import importlib
import logging
import re
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.errors import ModelError, VariantError, brief

# torch.export.load keeps its deserializer in a module global and refuses a second load while one
# runs ("_CURRENT_DESERIALIZER is already set"): the flow's threads load the baseline in parallel.
_PT2_LOAD_LOCK = threading.Lock()

DEFAULT_FACTORY = "tasks.models:resnet_cnn"


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCNN(nn.Module):
    """A small ResNet: stem, three residual stages (1x, 2x, 4x width), global pool, linear."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.stage1 = ResidualBlock(width, width)
        self.stage2 = ResidualBlock(width, 2 * width, stride=2)
        self.stage3 = ResidualBlock(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def resnet_cnn(num_classes: int, in_channels: int = 1, width: int = 32) -> ResNetCNN:
    """Factory for the default model (referenced as 'tasks.models:resnet_cnn')."""
    return ResNetCNN(num_classes=num_classes, in_channels=in_channels, width=width)


def build_from_factory(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    """Import 'package.module:function' and call it with kwargs."""
    module_name, _, attr = factory.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"baseline.factory: cannot import {factory!r} ({exc})") from None
    except SyntaxError as exc:  # the user's module: where, not a traceback
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else module_name
        raise ModelError(f"baseline.factory: {where}: {exc.msg} (importing {factory!r})") from None
    except Exception as exc:  # the module's own code failed while it was imported
        raise ModelError(
            f"baseline.factory: importing {module_name!r} raised {type(exc).__name__}: {brief(exc)}"
        ) from None
    try:
        model = fn(**kwargs)
    except TypeError as exc:
        raise ModelError(f"baseline.factory_kwargs: {factory} rejected them ({exc})") from None
    except Exception as exc:  # the factory's own code: one line naming it and what it raised
        raise ModelError(
            f"baseline.factory: {factory}({', '.join(kwargs)}) raised "
            f"{type(exc).__name__}: {brief(exc)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"baseline.factory: {factory} returned {type(model).__name__}, not nn.Module"
        )
    return model


def load_state_dict_file(model: nn.Module, path: Path) -> nn.Module:
    """Load a state_dict file into model, with one-line errors for missing/corrupt/mismatched files."""
    if not path.exists():
        raise ModelError(f"{path}: state_dict file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ModelError(f"{path}: not a readable torch state_dict ({_short(exc)})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds a {type(state).__name__}; expected a state_dict mapping")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path}: does not fit the factory's model ({_short(exc)})") from None
    return model


# aten ops that take a shape list, and the Tensor method each one is
_SHAPED_BY_SIZES = {
    torch.ops.aten.view.default: "view",
    torch.ops.aten.reshape.default: "reshape",
}


def load_pt2(path: Path) -> torch.fx.GraphModule:
    """Load a torch.export program as a plain GraphModule that can be trained and exported."""
    if not path.exists():
        raise ModelError(f"{path}: .pt2 file not found")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a readable torch.export .pt2 file (not a zip archive)")
    # torch.export.load logs the real cause as a warning and then raises "check the warnings
    # above"; a user sees no such warnings, so the cause is caught here and named instead.
    export_logger = logging.getLogger("torch.export")  # torch gives it its own stderr handler
    causes = _CauseCollector()
    previous = export_logger.level, export_logger.propagate, export_logger.handlers
    export_logger.setLevel(logging.WARNING)
    export_logger.propagate, export_logger.handlers = False, [causes]
    try:
        with _PT2_LOAD_LOCK:
            program = torch.export.load(str(path))
    except Exception as exc:  # corrupt zip, wrong format, version mismatch
        cause = causes.exceptions[-1] if causes.exceptions else exc
        raise ModelError(
            f"{path}: not a readable torch.export .pt2 file ({_short(cause)})"
        ) from None
    finally:
        export_logger.setLevel(previous[0])
        export_logger.propagate, export_logger.handlers = previous[1], previous[2]
    graph_module = program.module()
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph_module.graph.erase_node(node)  # export's input guards pin the batch size
        elif node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            # aten.sym_size.int gives a plain int to the ONNX exporter's trace, which then bakes
            # the example's batch into every view/reshape that uses it (a channel shuffle's
            # view(n, groups, c // groups, h, w)); Tensor.size(dim) is traced as a graph value
            node.op, node.target = "call_method", "size"
        elif node.op == "call_function" and node.target in _SHAPED_BY_SIZES:
            # ... and the trace keeps a size as a graph value only through Tensor methods
            node.op, node.target = "call_method", _SHAPED_BY_SIZES[node.target]
    # A plain GraphModule: the exported one refuses train()/eval(), which fine-tuning needs.
    return torch.fx.GraphModule(graph_module, graph_module.graph).eval()


class _CauseCollector(logging.Handler):
    """Keeps the exceptions attached to log records instead of printing them."""

    def __init__(self) -> None:
        super().__init__()
        self.exceptions: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.exceptions.append(record.exc_info[1])


_CONV = torch.ops.aten.conv2d.default
_LINEAR = torch.ops.aten.linear.default
_BATCH_NORM = torch.ops.aten.batch_norm.default
_LAYER_NORM = torch.ops.aten.layer_norm.default
_GROUP_NORM = torch.ops.aten.group_norm.default
_LAYERS = (_CONV, _LINEAR, _BATCH_NORM, _LAYER_NORM, _GROUP_NORM)
# ops whose parameter operand torch-pruning handles as an "unwrapped parameter" (a layer scale)
_SCALING = (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor)


def with_layers(model: nn.Module) -> nn.Module:
    """`model`, or for an imported .pt2 program that calls functional ops, its modularized form:
    real layers for a technique that changes them (pruning, a narrowed student)."""
    if isinstance(model, torch.fx.GraphModule) and not any(
        isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in model.modules()
    ):
        return modularize(model)
    return model


def modularize(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Turn functional conv2d/linear/batch_norm/layer_norm/group_norm calls into nn modules
    owning their parameters.

    torch.export programs call aten ops on free-standing parameters; structural pruning needs
    real layers, so the parameters move into Conv2d/Linear/BatchNorm2d/LayerNorm/GroupNorm
    modules. A parameter an elementwise mul/add reads (ConvNeXt's layer scale) stays where it
    is: torch-pruning prunes such a tensor along with the channels it scales. A weighted op of
    any other kind raises VariantError naming it.
    """
    graph = graph_module.graph
    for index, node in enumerate(list(graph.nodes)):
        if node.op != "call_function" or node.target not in _LAYERS:
            continue
        name = _layer_name(graph_module, node, index)
        graph_module.add_submodule(name, _module_for(graph_module, node))
        with graph.inserting_before(node):
            replacement = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    plain = torch.fx.GraphModule(graph_module, graph)
    _check_parameters_owned(plain)
    return plain.eval()


def _layer_name(graph_module: torch.fx.GraphModule, node: Any, index: int) -> str:
    """The layer's own module path, as its weight names it (features.denselayer1.norm1.weight
    → features_denselayer1_norm1): messages name the user's layer, not mp_layer175."""
    weight = node.args[1] if len(node.args) > 1 else None
    target = getattr(weight, "target", None) if getattr(weight, "op", None) == "get_attr" else None
    if not isinstance(target, str):
        return f"mp_layer{index}"
    name = target.removesuffix(".weight").replace(".", "_")
    taken = dict(graph_module.named_children())
    return name if name.isidentifier() and name not in taken else f"{name}_{index}"


def _attr(graph_module: torch.fx.GraphModule, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if node.op != "get_attr":
        raise VariantError(f"unsupported layer {node.name}: its weights are computed at run time")
    value: Any = graph_module
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def _required_attr(graph_module: torch.fx.GraphModule, node: Any, layer: str) -> torch.Tensor:
    """A tensor the layer cannot do without (a weight, a running mean)."""
    value = _attr(graph_module, node)
    if value is None:
        raise VariantError(f"unsupported layer {layer}: a weight or running statistic is missing")
    return value


def _module_for(graph_module: torch.fx.GraphModule, node: Any) -> nn.Module:
    args = list(node.args) + [None] * 9
    if node.target is _CONV:
        weight = _required_attr(graph_module, args[1], node.name)
        bias = _attr(graph_module, args[2])
        stride, padding, dilation = args[3] or [1, 1], args[4] or [0, 0], args[5] or [1, 1]
        groups = args[6] or 1
        if isinstance(padding, str):
            raise VariantError(f"unsupported layer {node.name}: string padding {padding!r}")
        conv = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            (weight.shape[2], weight.shape[3]),
            stride=tuple(stride),
            padding=tuple(padding),
            dilation=tuple(dilation),
            groups=groups,
            bias=bias is not None,
        )
        _copy_params(conv, weight=weight, bias=bias)
        return conv
    if node.target is _LINEAR:
        weight = _required_attr(graph_module, args[1], node.name)
        bias = _attr(graph_module, args[2])
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        _copy_params(linear, weight=weight, bias=bias)
        return linear
    if node.target is _LAYER_NORM:
        norm_weight, norm_bias = _attr(graph_module, args[2]), _attr(graph_module, args[3])
        layer_norm = nn.LayerNorm(
            list(args[1]), eps=float(args[4] if args[4] is not None else 1e-5),
            elementwise_affine=norm_weight is not None, bias=norm_bias is not None,
        )  # fmt: skip
        _copy_params(layer_norm, weight=norm_weight, bias=norm_bias)
        return layer_norm
    if node.target is _GROUP_NORM:
        group_weight, group_bias = _attr(graph_module, args[2]), _attr(graph_module, args[3])
        if group_weight is None or group_bias is None:
            raise VariantError(f"unsupported layer {node.name}: a GroupNorm without affine")
        eps = float(args[4] if args[4] is not None else 1e-5)
        group_norm = nn.GroupNorm(int(args[1]), group_weight.shape[0], eps=eps)
        _copy_params(group_norm, weight=group_weight, bias=group_bias)
        return group_norm
    scale, shift = _attr(graph_module, args[1]), _attr(graph_module, args[2])
    mean = _required_attr(graph_module, args[3], node.name)
    var = _required_attr(graph_module, args[4], node.name)
    norm = nn.BatchNorm2d(
        mean.shape[0], eps=float(args[7]), momentum=float(args[6]), affine=scale is not None
    )
    _copy_params(norm, weight=scale, bias=shift, running_mean=mean, running_var=var)
    return norm


def _copy_params(module: nn.Module, **tensors: torch.Tensor | None) -> None:
    with torch.no_grad():
        for name, tensor in tensors.items():
            if tensor is not None:
                getattr(module, name).copy_(tensor)


def _check_parameters_owned(graph_module: torch.fx.GraphModule) -> None:
    """Any parameter still read by a raw op belongs to a layer type we cannot convert."""
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target in _SCALING:
            continue
        for arg in node.all_input_nodes:
            if arg.op == "get_attr" and isinstance(_attr(graph_module, arg), nn.Parameter):
                raise VariantError(
                    f"unsupported layer for structural pruning: {node.target} (node "
                    f"'{node.name}') holds weights; supported: conv2d, linear, batch_norm, "
                    f"layer_norm, group_norm, and a parameter that scales or shifts a tensor"
                )


def count_macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int | None, int]:
    """Multiply-accumulates for one image (None where unknown), and the parameter count."""
    import copy

    import torch_pruning as tp

    params = sum(p.numel() for p in model.parameters())
    if isinstance(model, torch.fx.GraphModule) and not _has_layers(model):
        try:  # torch-pruning counts MACs per layer module; a .pt2 program needs real layers
            model = modularize(copy.deepcopy(model))
        except VariantError:
            return None, params
    was_training = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(macs), params


def _has_layers(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())


def _short(exc: BaseException) -> str:
    text = re.sub(r"\s*\(Could this error message be improved\?.*$", "", brief(exc))
    return text.rstrip(".")  # torch's C++ checks end with a plea for bug reports
