"""LiteRT conversion of nets shaped the way ModelPress had not met (found trying an unseen
ShuffleNet-style net from a fresh checkout): nn.Sequential's numeric node names, which made
onnx2tf exit the whole process, and an exact GELU, which needs TensorFlow's Flex delegate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tasks.data import Preprocess
from tasks.errors import VariantError
from tasks.export import write_onnx_variant
from tasks.runtimes import load_predictor
from tasks.techniques.tflite_fp16 import TfliteFp16Config, to_fp16

PREPROCESS = Preprocess(image_size=16, channels=3, num_classes=4, mean=[0.5] * 3, std=[0.25] * 3)


class _Shuffle(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)


class _Block(nn.Module):
    """ShuffleNet-style: grouped 1x1, channel shuffle, depthwise 3x3, squeeze-excitation."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 1, groups=4, bias=False),
            nn.BatchNorm2d(c),
            nn.Hardswish(),
            _Shuffle(),
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.Conv2d(c, c, 1, groups=4, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _net(activation: nn.Module, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    # blocks inside a Sequential: /5/body/body.0/Conv, a name TensorFlow refused
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.Hardswish(),
        _Block(width),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, groups=4, bias=False),
        _Block(2 * width),
        activation,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 4),
    ).eval()


def _fp16(tmp_path: Path, model: nn.Module) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    base = tmp_path / "baseline"
    write_onnx_variant(
        model, PREPROCESS, x, base, name="baseline", technique="baseline", source=None
    )
    cfg = TfliteFp16Config(technique="tflite_fp16", source="baseline")
    to_fp16("tflite_fp16", cfg, base, PREPROCESS, tmp_path / "fp16")
    return tmp_path / "fp16", x


def test_a_sequential_net_s_numeric_node_names_convert(tmp_path: Path) -> None:
    model = _net(nn.Hardswish())
    variant, x = _fp16(tmp_path, model)
    with torch.no_grad():
        expected = model(torch.from_numpy(PREPROCESS.normalize(x))).numpy()
    np.testing.assert_allclose(load_predictor(variant)(x), expected, atol=2e-2)


def test_an_exact_gelu_fails_the_variant_in_one_line_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(VariantError) as failed:
        _fp16(tmp_path, _net(nn.GELU()))
    message = str(failed.value)
    assert "needs TensorFlow Select ops (FlexErf)" in message and "\n" not in message
    assert "approximate='tanh'" in message
    assert not (tmp_path / "fp16").exists()  # nothing half-written
    _fp16(tmp_path / "tanh", _net(nn.GELU(approximate="tanh")))  # the fix it names converts
