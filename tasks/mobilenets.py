"""MobileNetV2- and MobileNetV3-style networks: the blocks modern edge models are made of.

Small, dependency-free versions of the two architectures (inverted residuals with depthwise
convolutions; V3 adds squeeze-excitation with hard-sigmoid gates and hard-swish). They are here
so the conversions are tested on the layers that make int8 hard (issue 10), and they work as
`baseline.factory: tasks.mobilenets:mobilenet_v3_style` for a user who wants to try one.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Activation = Literal["relu", "relu6", "hardswish"]

# MobileNetV3-Small's block table (kernel, expansion, out, squeeze-excitation, activation, stride)
_V3_SMALL: list[tuple[int, int, int, bool, Activation, int]] = [
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
]
# MobileNetV2's table (expansion factor, out, repeats, first stride), last two stages dropped
_V2: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
]


def _divisible(channels: float, divisor: int = 8) -> int:
    """Round channels to a multiple of divisor, never more than 10% below (as MobileNets do)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _activation(kind: Activation) -> nn.Module:
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish}[kind]()


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int, act: Activation | None, groups: int = 1
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(_activation(act))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate: global pool → 1x1 reduce → ReLU → 1x1 expand → hard-sigmoid → scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _divisible(channels / 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gate(self.expand(nn.functional.relu(self.reduce(self.pool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """1x1 expand → depthwise kxk → (squeeze-excitation) → 1x1 project, residual when shapes match."""

    def __init__(
        self,
        cin: int,
        expanded: int,
        cout: int,
        kernel: int,
        stride: int,
        act: Activation,
        squeeze_excite: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn(cin, expanded, 1, 1, act))
        layers.append(_conv_bn(expanded, expanded, kernel, stride, act, groups=expanded))
        if squeeze_excite:
            layers.append(SqueezeExcitation(expanded))
        layers.append(_conv_bn(expanded, cout, 1, 1, None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNet(nn.Module):
    """Stem, a stack of inverted residuals, a 1x1 head conv, global pool, classifier."""

    def __init__(
        self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module, classifier: nn.Module
    ) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.pool(x).flatten(1))


def mobilenet_v3_style(num_classes: int, in_channels: int = 3, width: float = 1.0) -> MobileNet:
    """MobileNetV3-Small-style: depthwise convs, squeeze-excitation (hard-sigmoid), hard-swish."""
    stem_out = _divisible(16 * width)
    blocks: list[nn.Module] = []
    cin = stem_out
    for kernel, expansion, out, se, act, stride in _V3_SMALL:
        cout = _divisible(out * width)
        blocks.append(
            InvertedResidual(cin, _divisible(expansion * width), cout, kernel, stride, act, se)
        )
        cin = cout
    head_out = _divisible(576 * width)
    return MobileNet(
        stem=_conv_bn(in_channels, stem_out, 3, 2, "hardswish"),
        blocks=blocks,
        head=_conv_bn(cin, head_out, 1, 1, "hardswish"),
        classifier=nn.Sequential(
            nn.Linear(head_out, 256), nn.Hardswish(), nn.Linear(256, num_classes)
        ),
    )


def mobilenet_v2_style(num_classes: int, in_channels: int = 3, width: float = 1.0) -> MobileNet:
    """MobileNetV2-style: inverted residuals of depthwise convs with ReLU6, linear bottlenecks."""
    stem_out = _divisible(32 * width)
    blocks: list[nn.Module] = []
    cin = stem_out
    for expansion, out, repeats, first_stride in _V2:
        cout = _divisible(out * width)
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            blocks.append(InvertedResidual(cin, cin * expansion, cout, 3, stride, "relu6"))
            cin = cout
    head_out = _divisible(320 * width)
    return MobileNet(
        stem=_conv_bn(in_channels, stem_out, 3, 2, "relu6"),
        blocks=blocks,
        head=_conv_bn(cin, head_out, 1, 1, "relu6"),
        classifier=nn.Linear(head_out, num_classes),
    )
