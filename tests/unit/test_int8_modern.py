"""int8 on MobileNetV2/V3-style networks: the converted graph stays whole on LiteRT's fast path.

Issue 10: onnx2tf turned hard-swish and hard-sigmoid into HARD_SWISH / RELU_0_TO_1, which
XNNPACK does not run in int8; each fell back to a builtin kernel and split the graph, and int8 ran
2x slower than fp32. These tests check the structure that makes it fast (timings live in
scripts/int8_modern.py), and that the rewrite keeps the function and the accuracy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.data import Preprocess, Split
from tasks.export import write_onnx_variant
from tasks.int8_friendly import rewrite_hard_activations
from tasks.mobilenets import mobilenet_v2_style, mobilenet_v3_style
from tasks.op_profile import litert_ops
from tasks.runtimes import load_predictor
from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize

SIZE = 32
# ops that XNNPACK has no int8 kernel for: each would fall back and split the graph
SLOW_INT8_OPS = {"HARD_SWISH", "RELU_0_TO_1", "LOGISTIC", "QUANTIZE", "DEQUANTIZE"}


def _digits_rgb() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits as 3-channel SIZE x SIZE images in [0, 1] (ships with sklearn)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=SIZE, mode="bilinear").repeat(1, 3, 1, 1)
    return x.numpy(), digits.target.astype(np.int64)


def _trained(factory: object, images: np.ndarray, labels: np.ndarray) -> torch.nn.Module:
    """Two quick epochs: a random network's logits barely depend on its input, which would
    make any int8-vs-fp32 agreement check pass vacuously."""
    torch.manual_seed(0)
    model = factory(num_classes=10, width=0.5)  # type: ignore[operator]
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = (torch.from_numpy(images) - 0.5) / 0.25, torch.from_numpy(labels)
    model.train()
    for _ in range(2):
        for batch in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    _reestimate_batch_norm(model, x)
    return model.eval()


def _reestimate_batch_norm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Exact batch-norm statistics of the final weights: after 32 Adam steps the running
    averages still describe the early network, and eval-mode accuracy falls to chance."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for batch in x.split(200):
            model(batch)


def _calibrated(factory: object, seed: int = 0) -> tuple[torch.nn.Module, np.ndarray]:
    """A network with batch-norm statistics from real forward passes (not the 0/1 defaults)."""
    torch.manual_seed(seed)
    model = factory(num_classes=10, width=0.5)  # type: ignore[operator]
    images = np.random.default_rng(seed).random((96, 3, SIZE, SIZE), dtype=np.float32)
    model.train()
    with torch.no_grad():
        for batch in np.split(images, 3):
            model((torch.from_numpy(batch) - 0.5) / 0.25)
    return model.eval(), images


@pytest.fixture(scope="module", params=["v3", "v2"])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    factory = {"v3": mobilenet_v3_style, "v2": mobilenet_v2_style}[request.param]
    images, labels = _digits_rgb()
    model = _trained(factory, images[:1000], labels[:1000])
    preprocess = Preprocess(
        image_size=SIZE, channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3
    )
    root = tmp_path_factory.mktemp(request.param)
    write_onnx_variant(
        model,
        preprocess,
        preprocess.normalize(images[:8]),
        root / "baseline",
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256="0" * 64,
    )
    cfg = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=64)
    calib = Split(x=images[:64], y=labels[:64])
    record = quantize("int8", cfg, root / "baseline", calib, preprocess, root / "int8")
    held_out = {"images": images[1000:], "labels": labels[1000:]}
    return {"arch": request.param, "root": root, "record": record, **held_out}


@pytest.mark.slow  # trains and converts two networks (about a minute each)
def test_int8_graph_has_no_fallback_ops_or_float_islands(converted: dict) -> None:
    ops = litert_ops(converted["root"] / "int8" / "model.tflite")
    kinds = Counter(op.op for op in ops)
    assert not SLOW_INT8_OPS & set(kinds), kinds
    float_ops = [op for op in ops if "float32" in op.input_dtypes + op.output_dtypes]
    assert float_ops == []
    assert kinds["CONV_2D"] + kinds["DEPTHWISE_CONV_2D"] >= 20
    if converted["arch"] == "v3":  # 13 hard-swish + 6 hard-sigmoid, each now ReLU6 arithmetic
        assert converted["record"].extra["rewritten_activations"] == 19
        assert kinds["MUL"] <= 45 and len(ops) <= 130
    else:  # ReLU6 fuses into the convolutions: nothing but convs, adds, pooling, the head
        assert "rewritten_activations" not in converted["record"].extra
        assert kinds["MUL"] == 0 and len(ops) <= 80


@pytest.mark.slow  # trains and converts two networks (about a minute each)
def test_xnnpack_runs_the_whole_int8_graph_as_one_partition(converted: dict) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(
        model_path=str(converted["root"] / "int8" / "model.tflite"), num_threads=1
    )
    interpreter.allocate_tensors()
    # after delegation the graph's node list ends with the delegate kernels that replaced ops
    kinds = Counter(op["op_name"] for op in interpreter._get_ops_details())
    assert kinds["DELEGATE"] == 1, kinds


@pytest.mark.slow  # trains and converts two networks (about a minute each)
def test_int8_agrees_with_fp32_on_the_modern_nets(converted: dict) -> None:
    root, images, labels = converted["root"], converted["images"], converted["labels"]
    fp32 = load_predictor(root / "baseline")(images).argmax(1)
    int8 = load_predictor(root / "int8")(images).argmax(1)
    assert len(set(fp32)) == 10  # a network that tells the digits apart
    assert (int8 == fp32).mean() >= 0.9
    assert (int8 == labels).mean() >= (fp32 == labels).mean() - 0.03


def test_rewritten_activations_compute_the_same_function(tmp_path: Path) -> None:
    import onnxruntime as ort

    model, images = _calibrated(mobilenet_v3_style, seed=1)
    preprocess = Preprocess(
        image_size=SIZE, channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3
    )
    record = write_onnx_variant(
        model,
        preprocess,
        preprocess.normalize(images[:8]),
        tmp_path / "v",
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256="0" * 64,
    )
    onnx_file = tmp_path / "v" / record.model_file
    x = preprocess.normalize(images[:16])
    before = ort.InferenceSession(str(onnx_file)).run(None, {"input": x})[0]
    rewrite = rewrite_hard_activations(onnx_file)
    after = ort.InferenceSession(str(onnx_file)).run(None, {"input": x})[0]
    assert (rewrite.hard_swish, rewrite.hard_sigmoid) == (13, 6)
    assert np.abs(after - before).max() < 1e-4 * max(1.0, float(np.abs(before).max()))
    assert rewrite_hard_activations(onnx_file).total == 0  # nothing left to rewrite
    # every /6 went into a conv's or the classifier's weights, through the squeeze-excitation
    # pools and gating Muls too: no int8 MUL by a constant is left over a feature map
    assert _multiplications_by_a_sixth(onnx_file) == 0


def _multiplications_by_a_sixth(onnx_file: Path) -> int:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    sixths = {t.name for t in graph.initializer if np.allclose(numpy_helper.to_array(t), 1.0 / 6.0)}
    return sum(1 for n in graph.node if n.op_type == "Mul" and set(n.input) & sixths)


class _Activation(torch.nn.Module):
    """hard-swish, then where it goes: the cases the /6 can and cannot be folded into."""

    def __init__(self, reader: str) -> None:
        super().__init__()
        self.reader = reader
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.act = torch.nn.Hardswish()
        self.out = torch.nn.Conv2d(4, 4, 1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        if self.reader == "pool-gemm":  # GlobalAveragePool → Flatten → Gemm: folds
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))
        if self.reader == "gate-conv":  # Mul by a gate of x, then a conv: folds
            return self.out(y * torch.sigmoid(x))
        if self.reader == "residual":  # Add with x: the /6 stays
            return self.out(y + x)
        return self.out(y * y)  # y² is y²/36 after the fold: the /6 stays


@pytest.mark.parametrize(
    ("reader", "folded"),
    [("pool-gemm", True), ("gate-conv", True), ("residual", False), ("square", False)],
)
def test_a_sixth_folds_only_where_the_readers_are_linear(
    tmp_path: Path, reader: str, folded: bool
) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _Activation(reader).eval()
    x = torch.randn(2, 4, 8, 8) * 3
    onnx_file = tmp_path / "m.onnx"
    torch.onnx.export(
        model, (x[:1],), str(onnx_file), input_names=["x"], dynamo=False,
        dynamic_axes={"x": {0: "batch"}},
    )  # fmt: skip
    rewrite = rewrite_hard_activations(onnx_file)
    after = ort.InferenceSession(str(onnx_file)).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert rewrite.hard_swish == 1
    assert np.abs(after - expected).max() < 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert _multiplications_by_a_sixth(onnx_file) == (0 if folded else 1)


@pytest.mark.slow  # converts a real EfficientNet-Lite0 twice (~40 s)
@pytest.mark.parametrize("fold", [True, False], ids=["simplified-here", "raw-graph"])
def test_tf_same_pads_convert_without_onnxsim_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fold: bool
) -> None:
    """EfficientNet-Lite's TF-'SAME' pads (ZeroPad2d before each strided conv) are computed
    at run time in the exported graph; onnx2tf folds them only through the `onnxsim` command,
    absent from PATH when the venv's `modelpress` runs without the venv activated. Without the
    in-process fold the conversion fails (the raw-graph case shows the test can fail)."""
    pytest.importorskip("efficientnet_lite_pytorch")  # the `real` extra: installed by make
    from tasks import onnx_for_tf
    from tasks.errors import VariantError
    from tasks.pretrained import efficientnet_lite0

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if not fold:
        monkeypatch.setattr(onnx_for_tf, "simplified", lambda model: model)
    torch.manual_seed(0)
    model = efficientnet_lite0(num_classes=10, image_size=64)
    preprocess = Preprocess(
        image_size=64, channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3
    )
    x = np.random.default_rng(0).random((32, 3, 64, 64), dtype=np.float32)
    write_onnx_variant(
        model,
        preprocess,
        x[:2],
        tmp_path / "baseline",
        name="baseline",
        technique="baseline",
        source=None,
    )
    cfg = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=16)
    calib = Split(x=x, y=np.zeros(len(x), dtype=np.int64))
    if not fold:
        with pytest.raises(VariantError, match=r"could not convert .*Negative dimension"):
            quantize("int8", cfg, tmp_path / "baseline", calib, preprocess, tmp_path / "int8")
        return
    record = quantize("int8", cfg, tmp_path / "baseline", calib, preprocess, tmp_path / "int8")
    assert record.status == "ok" and record.input is not None and record.input.dtype == "int8"
    logits = load_predictor(tmp_path / "int8")(x[:8])
    assert logits.shape == (8, 10) and np.isfinite(logits).all()


class _WrittenOutV3Block(torch.nn.Module):
    """MobileNetV3 as much code writes it: hard-swish and the squeeze-excitation's hard-sigmoid
    spelled out (x * relu6(x + 3) / 6, relu6(x + 3) / 6), not nn.Hardswish/nn.Hardsigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, 2, 1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.squeeze, self.excite = torch.nn.Conv2d(16, 4, 1), torch.nn.Conv2d(4, 16, 1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x * torch.nn.functional.relu6(x + 3) / 6
        y = self.depthwise(x)
        y = y * torch.nn.functional.relu6(y + 3) / 6
        gate = torch.relu(self.squeeze(y.mean((2, 3), keepdim=True)))
        y = y * (torch.nn.functional.relu6(self.excite(gate) + 3.0) / 6.0)
        return self.head((x + y).mean((2, 3)))


@pytest.mark.slow  # a LiteRT conversion (~9 s)
def test_written_out_hard_activations_convert_and_keep_their_function(tmp_path: Path) -> None:
    """onnx2tf fused the written-out chain itself, lost the Add's constant and failed the
    whole conversion ('... must be the output of a TensorFlow Layer ... Found: 3.0')."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _WrittenOutV3Block().eval()
    preprocess = Preprocess(
        image_size=SIZE, channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3
    )
    images = np.random.default_rng(0).random((48, 3, SIZE, SIZE), dtype=np.float32)
    write_onnx_variant(
        model,
        preprocess,
        preprocess.normalize(images[:4]),
        tmp_path / "baseline",
        name="baseline",
        technique="baseline",
        source=None,
    )
    copy = tmp_path / "copy.onnx"
    copy.write_bytes((tmp_path / "baseline" / "model.onnx").read_bytes())
    x = preprocess.normalize(images[:16])
    before = ort.InferenceSession(str(copy)).run(None, {"input": x})[0]
    rewrite = rewrite_hard_activations(copy)
    after = ort.InferenceSession(str(copy)).run(None, {"input": x})[0]
    assert (rewrite.hard_swish, rewrite.hard_sigmoid) == (2, 1)
    assert np.abs(after - before).max() < 1e-4 * max(1.0, float(np.abs(before).max()))

    cfg = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=32)
    calib = Split(x=images, y=np.zeros(len(images), dtype=np.int64))
    record = quantize("int8", cfg, tmp_path / "baseline", calib, preprocess, tmp_path / "int8")
    assert record.status == "ok"
    assert not {op.op for op in litert_ops(tmp_path / "int8" / "model.tflite")} & SLOW_INT8_OPS


@pytest.mark.slow  # a LiteRT int8 conversion (~12 s)
def test_the_rewrite_can_be_turned_off_to_measure_what_it_gains(tmp_path: Path) -> None:
    """hard_activations_as_relu6: false converts the hard activations as exported (what
    scripts/int8_modern.py times against the rewrite): LiteRT's HARD_SWISH ops stay."""
    model, images = _calibrated(mobilenet_v3_style)
    preprocess = Preprocess(
        image_size=SIZE, channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3
    )
    write_onnx_variant(
        model, preprocess, preprocess.normalize(images[:8]), tmp_path / "baseline",
        name="baseline", technique="baseline", source=None, parent_sha256="0" * 64,
    )  # fmt: skip
    cfg = TfliteInt8Config(
        technique="tflite_int8",
        source="baseline",
        calibration_samples=32,
        hard_activations_as_relu6=False,
    )
    calib = Split(x=images[:32], y=np.zeros(32, dtype=np.int64))
    record = quantize("as_exported", cfg, tmp_path / "baseline", calib, preprocess, tmp_path / "q")
    kinds = Counter(op.op for op in litert_ops(tmp_path / "q" / "model.tflite"))
    assert kinds["HARD_SWISH"] > 0
    assert "rewritten_activations" not in record.extra
    assert record.settings["hard_activations_as_relu6"] is False
