"""int8 on modern architectures: fp32 ONNX Runtime vs int8 LiteRT, before and after the rewrite.

Speed: the MobileNetV3-style and MobileNetV2-style test networks (tasks/mobilenets.py, width 1,
--size px, random weights with batch-norm statistics from real forward passes: timing does not
depend on weight values) are exported to ONNX and converted to full-int8 LiteRT twice, as onnx2tf
emits it ('int8_before') and with tasks/int8_friendly.py's rewrite ('int8', the default), and
measured with the benchmark harness on the edge-cpu profile (1 thread, CPU 0), with per-op tables.

Accuracy: a random network's logits barely depend on its input, so accuracy is measured on the
same architectures (width 0.5, --accuracy-size px) trained for --epochs on sklearn's digits
(1,400 train / 397 test, upscaled, 3 channels), converted the same two ways.

    python scripts/int8_modern.py [--size 96] [--out benchmarks/int8_modern.json]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.arrays import Array
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.data import Preprocess, Split
from tasks.export import write_onnx_variant
from tasks.io import write_json
from tasks.measuring_process import measure_in_subprocess
from tasks.mobilenets import mobilenet_v2_style, mobilenet_v3_style
from tasks.op_profile import format_profile, profile_variant
from tasks.runtimes import load_predictor
from tasks.techniques.tflite_int8 import TfliteInt8Config

ARCHS = {"v3": mobilenet_v3_style, "v2": mobilenet_v2_style}
VARIANTS = ("baseline", "int8_before", "int8")
EDGE = RunnerProfile(kind="cpu", threads=1, cpu_affinity=[0])
TIMING = BenchmarkConfig(
    warmup=20,
    iterations=300,
    max_seconds=2.0,
    trials=5,
    throughput_batch=8,
    throughput_seconds=0.2,
)


def _digits_rgb(size: int) -> tuple[Array, Array]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear").repeat(1, 3, 1, 1)
    return x.numpy(), digits.target.astype(np.int64)


def _train(model: torch.nn.Module, x: Array, y: Array, epochs: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    inputs, labels = (torch.from_numpy(x) - 0.5) / 0.25, torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(64):
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # exact batch-norm statistics of the final weights (running averages lag a short training)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for batch in inputs.split(200):
            model(batch)
    model.eval()


def build(model: torch.nn.Module, images: Array, labels: Array, root: Path) -> None:
    """fp32 ONNX baseline, int8 as onnx2tf emits it ('int8_before') and int8 rewritten ('int8')."""
    from tasks.techniques.tflite_int8 import quantize

    size = images.shape[-1]
    pre = Preprocess(image_size=size, channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    write_onnx_variant(
        model.eval(), pre, pre.normalize(images[:8]), root / "baseline", name="baseline",
        technique="baseline", source=None, parent_sha256="0" * 64,
    )  # fmt: skip
    cfg = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=128)
    calib = Split(x=images[:128], y=labels[:128])
    quantize("int8", cfg, root / "baseline", calib, pre, root / "int8")
    as_exported = cfg.model_copy(update={"hard_activations_as_relu6": False})
    quantize("int8_before", as_exported, root / "baseline", calib, pre, root / "int8_before")


def measure_speed(arch: str, size: int, root: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = ARCHS[arch](num_classes=10)
    images = np.random.default_rng(0).random((192, 3, size, size), dtype=np.float32)
    model.train()
    with torch.no_grad():  # batch-norm statistics of real activations
        for batch in np.split(images[:128], 4):
            model((torch.from_numpy(batch) - 0.5) / 0.25)
    build(model, images, np.zeros(len(images), dtype=np.int64), root)
    np.savez(root / "images.npz", x=images[128:])
    result: dict[str, Any] = {}
    for name in VARIANTS:
        row = measure_in_subprocess(
            name, root / name, root / "images.npz", "edge-cpu", EDGE, TIMING
        )
        result[name] = {
            "p50_ms": row.p50_ms,
            "p50_trials_ms": row.p50_trials_ms,
            "direct_p50_ms": row.direct_p50_ms,
            "op_profile": asdict(profile_variant(root / name, threads=1)),
        }
    return result


def measure_accuracy(arch: str, size: int, epochs: int, root: Path) -> dict[str, Any]:
    images, labels = _digits_rgb(size)
    torch.manual_seed(0)
    model = ARCHS[arch](num_classes=10, width=0.5)
    _train(model, images[:1400], labels[:1400], epochs)
    build(model, images[:1400], labels[:1400], root)
    test_x, test_y = images[1400:], labels[1400:]
    fp32 = load_predictor(root / "baseline")(test_x).argmax(1)
    result = {}
    for name in VARIANTS:
        predicted = load_predictor(root / name)(test_x).argmax(1)
        result[name] = {
            "accuracy": float((predicted == test_y).mean()),
            "top1_agreement_vs_fp32": float((predicted == fp32).mean()),
        }
    return result


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'net':<4} {'variant':<12} {'p50 ms':>7} {'vs fp32':>8} {'accuracy':>9} {'agree':>6}"
    ]
    for result in results:
        base = result["speed"]["baseline"]["p50_ms"]
        for name in VARIANTS:
            speed, accuracy = result["speed"][name], result["accuracy"][name]
            lines.append(
                f"{result['arch']:<4} {name:<12} {speed['p50_ms']:>7.4f} "
                f"{base / speed['p50_ms']:>7.2f}x {100 * accuracy['accuracy']:>8.1f}% "
                f"{accuracy['top1_agreement_vs_fp32']:>6.3f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=96, help="input size of the timed networks")
    parser.add_argument("--accuracy-size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/int8_modern.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mp-int8-modern-") as work:
        for arch in args.archs:
            speed = measure_speed(arch, args.size, Path(work) / arch / "speed")
            accuracy = measure_accuracy(
                arch, args.accuracy_size, args.epochs, Path(work) / arch / "accuracy"
            )
            results.append({"arch": arch, "speed": speed, "accuracy": accuracy})
    for result in results:
        for name in VARIANTS:
            profile = result["speed"][name]["op_profile"]
            print(f"\n[{result['arch']} {name}] " + format_profile_dict(profile))
    print(
        f"\nedge-cpu (1 thread) p50 at batch 1 ({args.size}px, width 1), speed-up vs fp32 "
        f"ONNX Runtime; digits test accuracy ({args.accuracy_size}px, width 0.5, "
        f"{args.epochs} epochs):"
    )
    print(format_table(results))
    settings = {"size": args.size, "accuracy_size": args.accuracy_size, "epochs": args.epochs}
    write_json(args.out, {"edge_profile": EDGE.model_dump(), **settings, "results": results})


def format_profile_dict(profile: dict[str, Any]) -> str:
    from tasks.op_profile import OpProfile, OpRow

    return format_profile(OpProfile(**(profile | {"rows": [OpRow(**r) for r in profile["rows"]]})))


if __name__ == "__main__":
    main()
