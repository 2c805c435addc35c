"""int8 on modern architectures: fp32 ONNX Runtime vs int8 LiteRT, before and after the rewrite.

Builds the MobileNetV3-style and MobileNetV2-style test networks (tasks/mobilenets.py, random
weights with batch-norm statistics from real forward passes), exports each to ONNX, converts it to
full-int8 LiteRT twice (as onnx2tf emits it, and with tasks/int8_friendly.py's rewrite, the
default), and measures each with the benchmark harness on the edge-cpu profile (1 thread, CPU 0).
Prints the p50 table and the per-op tables and writes them as JSON.

    python scripts/int8_modern.py [--size 96] [--out benchmarks/int8_modern.json]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from tasks.benchmark import measure_in_subprocess
from tasks.config import BenchmarkConfig, RunnerProfile, TfliteInt8Config
from tasks.data import Preprocess, Split
from tasks.export import write_onnx_variant
from tasks.int8_friendly import Rewrite
from tasks.io import write_json
from tasks.mobilenets import mobilenet_v2_style, mobilenet_v3_style
from tasks.op_profile import format_profile, profile_variant
from tasks.runtime import load_predictor

ARCHS = {"v3": mobilenet_v3_style, "v2": mobilenet_v2_style}
EDGE = RunnerProfile(kind="cpu", threads=1, cpu_affinity=[0])
TIMING = BenchmarkConfig(
    warmup=20,
    iterations=300,
    max_seconds=2.0,
    trials=5,
    throughput_batch=8,
    throughput_seconds=0.2,
)


def build(arch: str, size: int, root: Path) -> np.ndarray:
    """fp32 ONNX baseline, int8 as onnx2tf emits it ('int8_before') and int8 rewritten ('int8')."""
    from tasks.tflite_int8 import quantize

    torch.manual_seed(0)
    model = ARCHS[arch](num_classes=10)
    images = np.random.default_rng(0).random((256, 3, size, size), dtype=np.float32)
    model.train()
    with torch.no_grad():  # batch-norm statistics of real activations
        for batch in np.split(images[:128], 4):
            model((torch.from_numpy(batch) - 0.5) / 0.25)
    model.eval()
    pre = Preprocess(image_size=size, channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    write_onnx_variant(
        model, pre, pre.normalize(images[:8]), root / "baseline", name="baseline",
        technique="baseline", source=None, parent_sha256="0" * 64,
    )  # fmt: skip
    cfg = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=128)
    calib = Split(x=images[:128], y=np.zeros(128, dtype=np.int64))
    quantize("int8", cfg, root / "baseline", calib, pre, root / "int8")
    with mock.patch("tasks.tflite_int8.rewrite_hard_activations", return_value=Rewrite(0, 0)):
        quantize("int8_before", cfg, root / "baseline", calib, pre, root / "int8_before")
    held_out = images[128:]
    np.savez(root / "images.npz", x=held_out[:64])
    return held_out


def measure_arch(arch: str, size: int, root: Path) -> dict:
    held_out = build(arch, size, root)
    fp32 = load_predictor(root / "baseline")(held_out)
    result: dict = {"arch": arch, "size": size, "variants": {}}
    for name in ("baseline", "int8_before", "int8"):
        row = measure_in_subprocess(
            name, root / name, root / "images.npz", "edge-cpu", EDGE, TIMING
        )
        logits = load_predictor(root / name)(held_out)
        result["variants"][name] = {
            "p50_ms": row.p50_ms,
            "p50_trials_ms": row.p50_trials_ms,
            "direct_p50_ms": row.direct_p50_ms,
            "top1_agreement_vs_fp32": float((logits.argmax(1) == fp32.argmax(1)).mean()),
            "relative_logit_error": float(np.linalg.norm(logits - fp32) / np.linalg.norm(fp32)),
            "op_profile": asdict(profile_variant(root / name, threads=1)),
        }
    return result


def format_table(results: list[dict]) -> str:
    lines = [
        f"{'net':<4} {'variant':<12} {'p50 ms':>7} {'vs fp32':>8} {'top1 agree':>10} {'rel err':>8}"
    ]
    for result in results:
        base = result["variants"]["baseline"]["p50_ms"]
        for name, v in result["variants"].items():
            lines.append(
                f"{result['arch']:<4} {name:<12} {v['p50_ms']:>7.4f} {base / v['p50_ms']:>7.2f}x "
                f"{v['top1_agreement_vs_fp32']:>10.3f} {v['relative_logit_error']:>8.4f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/int8_modern.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mp-int8-modern-") as work:
        for arch in args.archs:
            results.append(measure_arch(arch, args.size, Path(work) / arch))
    for result in results:
        for name, v in result["variants"].items():
            print(f"\n[{result['arch']} {name}] " + format_profile_dict(v["op_profile"]))
    print("\nedge-cpu (1 thread), p50 at batch 1, speed-up vs fp32 ONNX Runtime:")
    print(format_table(results))
    write_json(args.out, {"edge_profile": EDGE.model_dump(), "results": results})


def format_profile_dict(profile: dict) -> str:
    from tasks.op_profile import OpProfile, OpRow

    return format_profile(OpProfile(**(profile | {"rows": [OpRow(**r) for r in profile["rows"]]})))


if __name__ == "__main__":
    main()
