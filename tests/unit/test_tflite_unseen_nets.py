"""LiteRT conversion of nets shaped the way ModelPress had not met (found trying unseen nets
from a fresh checkout): a ShuffleNet-style net's numeric node names (nn.Sequential), which made
onnx2tf exit the whole process; an exact GELU, which needs TensorFlow's Flex delegate; and a
ConvNeXt-style net, whose shared scalar constants and leading-"/" layer names stopped onnx2tf."""

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


class _ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv, LayerNorm over channels-last, Linear-tanh-GELU-Linear, layer scale."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(
            nn.Linear(c, 4 * c), nn.GELU(approximate="tanh"), nn.Linear(4 * c, c)
        )
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class _ConvNeXt(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, width, 4, stride=4)  # patchify
        self.stem_norm = nn.LayerNorm(width)
        self.blocks = nn.Sequential(_ConvNeXtBlock(width), _ConvNeXtBlock(width))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the stem's channels-last norm between permutes: onnx2tf then builds the next
        # depthwise conv as a Keras layer named after its ONNX node
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(self.norm(self.blocks(x).mean((2, 3))))


def _shuffle_by_two(x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.size()  # torchvision's channel_shuffle, groups 2
    x = x.view(batch, 2, channels // 2, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, channels, height, width)


def _v2_branch(c_in: int, c: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=False),
        nn.BatchNorm2d(c),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
    )


class _V2Unit(nn.Module):
    """torchvision's ShuffleNetV2 unit. Stride 1: half the channels pass, half go through 1x1,
    3x3 depthwise, 1x1; stride 2: both halves are the whole input, one through a depthwise
    3x3 and a 1x1. Concatenated, then shuffled."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        half = c_out // 2
        self.stride = stride
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in),
                nn.Conv2d(c_in, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(),
            )
            if stride == 2
            else nn.Identity()
        )
        self.branch = _v2_branch(c_in if stride == 2 else half, half, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, worked = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch(worked)), dim=1)
        else:
            out = torch.cat((self.shortcut(x), self.branch(x)), dim=1)
        return _shuffle_by_two(out)


def shufflenet_v2_style(width: int = 16) -> nn.Module:
    """A stem, then two stages of torchvision's ShuffleNetV2, each a stride-2 unit and two
    stride-1 units (with one, torch-pruning's graph builds; with two it stopped)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        _V2Unit(width, 2 * width, 2),
        _V2Unit(2 * width, 2 * width, 1),
        _V2Unit(2 * width, 2 * width, 1),
        _V2Unit(2 * width, 4 * width, 2),
        _V2Unit(4 * width, 4 * width, 1),
        _V2Unit(4 * width, 4 * width, 1),
        nn.Conv2d(4 * width, 8 * width, 1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * width, 4),
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


def test_a_convnext_style_net_converts_and_matches_torch(tmp_path: Path) -> None:
    from tasks.op_profile import litert_ops, profile_variant

    model = _ConvNeXt().eval()
    variant, x = _fp16(tmp_path, model)
    with torch.no_grad():
        expected = model(torch.from_numpy(PREPROCESS.normalize(x))).numpy()
    np.testing.assert_allclose(load_predictor(variant)(x), expected, atol=2e-2)
    # its per-op profile too: a cut after an fp16 weight's DEQUANTIZE cannot run under XNNPACK
    profile = profile_variant(variant, runs=5)
    ops = {row.op: row for row in profile.rows}
    assert ops["DEQUANTIZE"].count > 0 and ops["TANH"].count == 2  # one GELU a block
    assert "SQUARED_DIFFERENCE" not in ops  # see the int8 test below
    assert sum(row.count for row in profile.rows) == len(litert_ops(variant / "model.tflite"))
    assert profile.total_ms > 0 and sum(row.percent for row in profile.rows) > 99


def test_channel_shuffles_become_gathers_onnx_runtime_agrees_on(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from tasks.onnx_for_tf import channel_shuffles_as_gather, simplified

    x = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    write_onnx_variant(
        shufflenet_v2_style(), PREPROCESS, x, tmp_path, name="b", technique="baseline", source=None
    )
    exported = onnx.load(str(tmp_path / "model.onnx"))
    model = simplified(exported)
    assert channel_shuffles_as_gather(model) == 6
    ops = [node.op_type for node in model.graph.node]
    assert "Transpose" not in ops and "Reshape" not in ops and ops.count("Gather") == 6
    onnx.checker.check_model(model)
    feed = {exported.graph.input[0].name: PREPROCESS.normalize(x)}
    before = ort.InferenceSession(exported.SerializeToString()).run(None, feed)[0]
    after = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_array_equal(after, before)  # the same permutation, not an approximation
    # a transpose of other axes, or one whose map is read elsewhere too, is no shuffle: kept
    assert channel_shuffles_as_gather(simplified(onnx.load(str(tmp_path / "model.onnx")))) == 6
    assert channel_shuffles_as_gather(model) == 0


@pytest.mark.slow  # a LiteRT int8 conversion (~10 s)
def test_a_shufflenet_v2_style_net_converts_to_litert(tmp_path: Path) -> None:
    """torchvision's ShuffleNetV2 stopped every LiteRT conversion: the shuffled map reached the
    next unit's Concat in NCHW beside an NHWC branch (found on the real torchvision model)."""
    from tasks.data import Split
    from tasks.op_profile import litert_ops
    from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize

    model = shufflenet_v2_style()
    variant, x = _fp16(tmp_path, model)
    with torch.no_grad():
        expected = model(torch.from_numpy(PREPROCESS.normalize(x))).numpy()
    np.testing.assert_allclose(load_predictor(variant)(x), expected, atol=2e-2)
    assert [op.op for op in litert_ops(variant / "model.tflite")].count("GATHER") == 6
    images = np.random.default_rng(1).random((32, 3, 16, 16), dtype=np.float32)
    calib = Split(x=images, y=np.zeros(len(images), dtype=np.int64))
    cfg = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=32)
    quantize("tflite_int8", cfg, tmp_path / "baseline", calib, PREPROCESS, tmp_path / "int8")
    got = load_predictor(tmp_path / "int8")(x)
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95


def test_an_exact_gelu_fails_the_variant_in_one_line_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(VariantError) as failed:
        _fp16(tmp_path, _net(nn.GELU()))
    message = str(failed.value)
    assert "needs TensorFlow Select ops (FlexErf)" in message and "\n" not in message
    assert "approximate='tanh'" in message
    assert not (tmp_path / "fp16").exists()  # nothing half-written
    _fp16(tmp_path / "tanh", _net(nn.GELU(approximate="tanh")))  # the fix it names converts


@pytest.mark.slow  # a LiteRT int8 conversion (~9 s)
def test_layer_norm_converts_to_int8_ops_xnnpack_runs(tmp_path: Path) -> None:
    """onnx2tf's LayerNorm computed its variance with SQUARED_DIFFERENCE, which has no int8
    XNNPACK kernel (31% of an unseen MobileViT-style net's int8 time, 19 us each): the variance
    is now mean((x - m) * (x - m)), SUB and MUL, and the int8 model still follows torch's."""
    from collections import Counter

    from tasks.data import Split
    from tasks.op_profile import litert_ops
    from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize

    model = _ConvNeXt().eval()
    x = np.random.default_rng(0).random((64, 3, 16, 16), dtype=np.float32)
    base = tmp_path / "baseline"
    write_onnx_variant(
        model, PREPROCESS, x[:4], base, name="baseline", technique="baseline", source=None
    )
    cfg = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=64)
    calib = Split(x=x, y=np.zeros(len(x), dtype=np.int64))
    quantize("tflite_int8", cfg, base, calib, PREPROCESS, tmp_path / "int8")

    ops = litert_ops(tmp_path / "int8" / "model.tflite")
    kinds = Counter(op.op for op in ops)
    assert "SQUARED_DIFFERENCE" not in kinds, kinds
    assert kinds["RSQRT"] == 4, kinds  # the four LayerNorms, each normalised once
    assert [op.op for op in ops if "float32" in op.input_dtypes + op.output_dtypes] == []
    with torch.no_grad():
        expected = model(torch.from_numpy(PREPROCESS.normalize(x))).numpy()
    got = load_predictor(tmp_path / "int8")(x)
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95


def test_moments_by_mul_equal_tensorflows() -> None:
    import tensorflow as tf

    from tasks.tflite_convert import _variance_by_mul

    x = tf.constant(np.random.default_rng(1).normal(3.0, 2.0, (2, 5, 7)).astype(np.float32))
    expected = [t.numpy() for t in tf.nn.moments(x, [2], keepdims=True)]
    kept = tf.nn.moments
    with _variance_by_mul():
        assert tf.nn.moments is not kept
        same = [t.numpy() for t in tf.nn.moments(x, [2], keepdims=True)]
        squeezed = [t.numpy() for t in tf.nn.moments(x, [1, 2])]
    assert tf.nn.moments is kept  # restored
    for mine, theirs in zip(same, expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)
    assert squeezed[0].shape == squeezed[1].shape == (2,)
