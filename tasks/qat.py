"""Quantization-aware training in torch, shared by the QAT techniques (qat_int8 for LiteRT,
qat_onnx_int8 for ONNX Runtime): the fake-quantization grid, FX preparation, the fine-tune with
its freezes, and the two ways out of it: the float network with the trained weights (for a
converter that calibrates again) and the QDQ network that carries the trained ranges as they are.

Grid: per-output-channel symmetric int8 weights on the narrow range [-127, 127] (what the TFLite
converter and ONNX Runtime's quantizer write), per-tensor asymmetric 8-bit activations (quint8
[0, 255], the same grid as int8 [-128, 127] shifted by 128), batch norm folded into the
convolutions while training (FX fuses conv+bn(+relu) into QAT modules that fake-quantize the
folded weight).

Activation ranges: `minmax` observers (moving average of each batch's range) or `learned`
(LSQ, Esser et al. 2020: scale and zero point are trained with the weights, starting from the
observed range; torch's `_LearnableFakeQuantize`). Min/max ranges are what fails on a network
with rare large activations: one outlier stretches the range and the common values share a few
levels; a learned range clips it where the loss says so.

Imported by the QAT techniques' builds only (torch at module level); their settings are
tasks/qat_settings.py.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, FakeQuantizeBase, QConfig
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
from torch.nn import functional

from tasks.data import Preprocess, Split
from tasks.errors import VariantError, brief
from tasks.qat_settings import QatTrainingConfig, Ranges

# a learned range's scale and zero point train at the weights' lr times this (about 1 % of a
# typical activation scale a step at the default lr)
LEARNED_RANGE_LR_FACTOR = 0.02


def int8_qconfig(ranges: Ranges = "minmax") -> QConfig:
    """Fake-quantization on the int8 grid above, activation ranges observed or learned."""
    from torch.ao.quantization.observer import (
        HistogramObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )

    grid: dict[str, Any] = {
        "observer": MovingAverageMinMaxObserver,
        "quant_min": 0,
        "quant_max": 255,
        "dtype": torch.quint8,
        "qscheme": torch.per_tensor_affine,
    }
    # learned ranges start where the quantization error of the first batch is least (the
    # histogram observer's search), not at its min/max: from a range an outlier stretched 3,000
    # times, training would need thousands of steps to come back
    activation = (
        _LearnableFakeQuantize.with_args(
            **(grid | {"observer": HistogramObserver}), use_grad_scaling=True
        )
        if ranges == "learned"
        else FakeQuantize.with_args(**grid, reduce_range=False)
    )
    # averaging_constant=1: the current weights' max-abs, as a converter will take it
    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        averaging_constant=1.0,
        quant_min=-127,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        reduce_range=False,
    )
    return QConfig(activation=activation, weight=weight)


def prepare_qat(
    model: nn.Module, preprocess: Preprocess, name: str, ranges: Ranges = "minmax"
) -> torch.fx.GraphModule:
    """A copy of `model` with BN folded into fake-quantized conv/linear layers (VariantError with
    the reason when FX cannot trace it or finds nothing to quantize)."""
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    from tasks.models import modularize

    model = copy.deepcopy(model)
    if isinstance(model, torch.fx.GraphModule):  # a user's .pt2 program: give it real layers
        model = modularize(model)
    example = (torch.zeros(1, *preprocess.input_shape),)
    try:
        with warnings.catch_warnings():
            # torch.ao.quantization warns it is deprecated; in 2.13 it is the QAT that ships
            warnings.simplefilter("ignore", DeprecationWarning)
            # Traced in eval mode, trained after: FX evaluates `if self.training` once, at trace
            # time. Traced in train mode, EfficientNet's drop-connect (stochastic depth) stayed
            # in the graph for good: the "eval" network dropped random blocks and its export
            # differed from itself by 5.4 logits. Dropout and batch-norm modules still follow
            # train()/eval() (they are layers in the graph, not branches).
            prepared = prepare_qat_fx(
                model.eval(), QConfigMapping().set_global(int8_qconfig(ranges)), example
            ).train()
    except Exception as exc:  # FX tracing fails with many types (control flow, proxies, ...)
        raise VariantError(
            f"{name}: QAT preparation cannot trace {type(model).__name__} with torch.fx "
            f"({brief(exc)})"
        ) from None
    if not weighted_qat_modules(prepared):
        raise VariantError(
            f"{name}: QAT preparation found no Conv2d/Linear layer to quantize in "
            f"{type(model).__name__}"
        )
    return prepared


def weighted_qat_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "weight_fake_quant")]


def _learned_quantizers(model: nn.Module) -> dict[str, _LearnableFakeQuantize]:
    """The activation quantizers whose ranges train, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _LearnableFakeQuantize)}


def qat_finetune(
    prepared: torch.fx.GraphModule,
    cfg: QatTrainingConfig,
    train: Split,
    val: Split,
    preprocess: Preprocess,
    seed: int,
    label: str,
) -> None:
    """Fine-tune the fake-quantized network, freezing BN statistics and ranges on schedule.

    Learned ranges start from the range observed on one batch and are trained until
    `freeze_observers_after` (min/max observers follow the batches until then)."""
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer

    from tasks.train import FitSettings, fit

    steps_per_epoch = max(1, -(-len(train) // cfg.batch_size))
    steps = 0
    learned = _learned_quantizers(prepared)

    def freeze_ranges() -> None:
        prepared.apply(disable_observer)
        for quantizer in learned.values():
            quantizer.toggle_qparam_learning(enabled=False)

    def apply_freezes() -> None:
        # step boundaries of the epochs fit() runs: the freeze holds from the next step on
        if cfg.freeze_bn_after and steps == cfg.freeze_bn_after * steps_per_epoch:
            prepared.apply(freeze_bn_stats)
        if cfg.freeze_observers_after and steps == cfg.freeze_observers_after * steps_per_epoch:
            freeze_ranges()

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, _inputs: torch.Tensor) -> torch.Tensor:
        nonlocal steps
        steps += 1
        apply_freezes()
        return torch.nn.functional.cross_entropy(logits, labels)

    if cfg.freeze_bn_after == 0:
        prepared.apply(freeze_bn_stats)
    if learned or cfg.freeze_observers_after == 0:
        # the observers' look at real data: where learned ranges start, or the fixed ranges
        with torch.no_grad():
            prepared.eval()(torch.from_numpy(preprocess.normalize(train.x[: cfg.batch_size])))
        prepared.apply(disable_observer)
        for quantizer in learned.values():
            if cfg.freeze_observers_after:
                quantizer.enable_param_learning()
    fit(
        prepared,
        train,
        val,
        preprocess,
        # its batch norms are frozen on schedule (freeze_bn_after), part of what QAT trains
        FitSettings(
            cfg.epochs,
            cfg.batch_size,
            cfg.lr,
            recalibrate_norms=False,
            lr_factors=tuple(
                (f"{name}.{part}", LEARNED_RANGE_LR_FACTOR)
                for name in learned
                for part in ("scale", "zero_point")
            ),
        ),
        seed,
        label,
        loss_fn=loss_fn,
    )
    freeze_ranges()  # what was trained is what is deployed: nothing moves in evaluation


def to_float(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The QAT network as a float one: each QAT layer its float layer with BN folded (the weights
    it trained with), fake-quant nodes removed."""
    return _rebuilt(prepared, keep_ranges=False)


def to_qdq(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The QAT network with its trained ranges as fixed quantize-dequantize steps: each activation
    quantizer a fixed per-tensor fake-quant with the scale and zero point it ended with, each
    QAT layer its float layer (BN folded) whose weights are already on their per-channel int8
    grid. Exported to ONNX it is a QDQ graph that ONNX Runtime runs as int8 with exactly these
    ranges; in torch it computes what the fake-quantized network computes."""
    return _rebuilt(prepared, keep_ranges=True)


def _rebuilt(prepared: torch.fx.GraphModule, keep_ranges: bool) -> torch.fx.GraphModule:
    model = copy.deepcopy(prepared).eval()
    graph = model.graph
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = model.get_submodule(str(node.target))
        if isinstance(module, FakeQuantizeBase):
            if keep_ranges:
                model.set_submodule(str(node.target), FixedRange(module))
            else:
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
        elif hasattr(module, "weight_fake_quant") and hasattr(module, "to_float"):
            float_layer: nn.Module = module.to_float().eval()  # type: ignore[operator]
            if keep_ranges:
                # to_float of a fused conv+relu is a Sequential(conv, relu)
                inner = float_layer[0] if isinstance(float_layer, nn.Sequential) else float_layer
                gridded = GriddedWeight(inner, module.weight_fake_quant)
                if isinstance(float_layer, nn.Sequential):
                    float_layer[0] = gridded
                else:
                    float_layer = gridded
            model.set_submodule(str(node.target), float_layer)
    graph.eliminate_dead_code()
    return torch.fx.GraphModule(model, graph).eval()


class FixedRange(nn.Module):
    """A per-tensor fake-quant with a trained quantizer's final scale and zero point as constants
    (exported as QuantizeLinear/DequantizeLinear with those values)."""

    def __init__(self, quantizer: Any) -> None:
        super().__init__()
        scale, zero_point = quantizer.calculate_qparams()
        self.scale = float(scale.reshape(-1)[0])
        self.zero_point = int(zero_point.reshape(-1)[0])
        self.quant_min, self.quant_max = int(quantizer.quant_min), int(quantizer.quant_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max
        )


class GriddedWeight(nn.Module):
    """`layer` (Conv2d or Linear) with its weights rounded onto the quantizer's per-channel grid,
    quantized again at run time on the same grid (a no-op in value) so that the export writes
    the weights as int8 with these scales. The narrow range [-127, 127] the weights were clamped
    to fits ONNX's int8 range [-128, 127] unchanged."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, layer: Any, quantizer: Any) -> None:
        super().__init__()
        scale = quantizer.scale.detach().clone().float()
        zero_point = quantizer.zero_point.detach().clone().int()
        with torch.no_grad():
            layer.weight.copy_(
                torch.fake_quantize_per_channel_affine(
                    layer.weight, scale, zero_point, 0, quantizer.quant_min, quantizer.quant_max
                )
            )
        self.layer: Any = layer
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        weight = torch.fake_quantize_per_channel_affine(
            layer.weight, self.scale, self.zero_point, 0, -128, 127
        )
        if isinstance(layer, nn.Conv2d):
            return functional.conv2d(
                x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )
        return functional.linear(x, weight, layer.bias)
