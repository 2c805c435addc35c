"""Which int8 runtime wins on this CPU: fp32 ONNX Runtime (the baseline), tflite_int8 (LiteRT) and
openvino_int8 (OpenVINO), side by side on the same data, runners and threads.

The pipeline's own stages on the params file's data (default: digits at 32 px, the default CNN):
prepare, train, export, then each named variant built by the compress stage with the file's
settings, its accuracy measured by the evaluator on the test split (drop with the gate's 95%
upper bound), and its p50 by the benchmark harness (a fresh process per variant) on each of the
file's CPU runners (edge-cpu: 1 thread on CPU 0; cloud-cpu: every core) with its benchmark
settings. Data, baseline and variants are kept in --work and reused on the next run.

    python scripts/int8_runtimes.py [--params params/all-techniques.yaml] \\
        [--variants tflite_int8 openvino_int8] [--out benchmarks/int8_runtimes.json]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tasks.benchmark import BenchmarkRow
from tasks.compress import compress
from tasks.data import load_split
from tasks.evaluate import evaluate
from tasks.io import write_json
from tasks.measuring_process import measure_in_subprocess
from tasks.params_file import load_params
from tasks.runtimes import runs_on
from tasks.statistics import paired_drop_interval
from tasks.variant import BASELINE, EVALUATION_SPLIT


def build(params_file: Path, work: Path, names: list[str]) -> None:
    """The stages `dvc repro` runs, for the baseline and `names` only; what exists is kept."""
    from tasks.stages import export, prepare, train

    params = load_params(params_file)
    if not (work / "data").exists():
        prepare.main(["--params", str(params_file), "--out", str(work / "data")])
    if not (work / "models" / BASELINE).exists():
        train.main(
            [
                "--params",
                str(params_file),
                "--data",
                str(work / "data"),
                "--out",
                str(work / "models" / BASELINE),
            ]
        )
    variants = work / "variants"
    if not (variants / BASELINE).exists():
        export.main(
            [
                "--baseline",
                str(work / "models" / BASELINE),
                "--data",
                str(work / "data"),
                "--out",
                str(variants / BASELINE),
            ]
        )
    for name in names:
        if not (variants / name).exists():
            cfg = params.variants[name]
            record = compress(
                params,
                name,
                work / "data",
                work / "models" / BASELINE,
                variants / cfg.source,
                variants / name,
            )
            print(f"built {name}: {record.status} {record.reason or ''}", flush=True)


def measure(params_file: Path, work: Path, names: list[str]) -> dict[str, Any]:
    params = load_params(params_file)
    test = load_split(work / "data", EVALUATION_SPLIT)
    evaluation = evaluate(work / "variants", names, test)
    base_pred = evaluation.logits[BASELINE].argmax(1)
    runners = {
        name: profile
        for name, profile in params.runners.items()
        if name in params.benchmark.runners and profile.kind == "cpu"
    }
    rows: list[BenchmarkRow] = []
    with tempfile.TemporaryDirectory(prefix="mp-int8-runtimes-") as scratch:
        images = Path(scratch) / "test.npz"
        np.savez(images, x=test.x)
        for runner, profile in runners.items():
            for name in [BASELINE, *names]:
                directory = work / "variants" / name
                metrics = evaluation.metrics[name]
                if metrics.status != "ok" or not runs_on(metrics.runtime, profile):
                    continue
                row = measure_in_subprocess(
                    name, directory, images, runner, profile, params.benchmark
                )
                print(f"{runner:<10} {name:<14} {row.status} p50 {row.p50_ms} ms", flush=True)
                rows.append(row)
    variants = {}
    for name in [BASELINE, *names]:
        metrics = evaluation.metrics[name]
        upper = None
        if name in evaluation.logits:
            pred = evaluation.logits[name].argmax(1)
            upper = paired_drop_interval(test.y, base_pred, pred, params.gates.confidence)[2]
        variants[name] = {
            "runtime": metrics.runtime,
            "status": metrics.status,
            "reason": metrics.reason,
            "accuracy": metrics.accuracy,
            "drop_pt": metrics.accuracy_drop,
            "drop_upper_pt": None if upper is None else round(upper, 3),
            "agreement": metrics.agreement,
            "size_bytes": metrics.size_bytes,
            "p50_ms": {r.runner: r.p50_ms for r in rows if r.variant == name},
            "p50_trials_ms": {r.runner: r.p50_trials_ms for r in rows if r.variant == name},
            "failed": {r.runner: r.reason for r in rows if r.variant == name and r.status != "ok"},
        }
    return {
        "params": str(params_file),
        "samples": len(test.y),
        "benchmark": params.benchmark.model_dump(),
        "runners": {name: profile.model_dump() for name, profile in runners.items()},
        "host": rows[0].host if rows else {},
        "variants": variants,
        "rows": [asdict(r) for r in rows],
    }


def format_table(result: dict[str, Any], reference: str = "tflite_int8") -> str:
    """One line a variant: accuracy, drop (95% upper bound), size, p50 per runner and its ratio to
    `reference`'s p50 on the same runner (> 1: faster than it)."""
    variants = result["variants"]
    runners = list(result["runners"])
    header = ["variant", "runtime", "accuracy", "drop pt (95% up)", "size KiB"]
    for runner in runners:
        header += [f"p50 {runner} ms", f"vs {reference}"]
    lines = [header]
    for name, v in variants.items():
        ok = v["accuracy"] is not None
        line = [
            name,
            str(v["runtime"]),
            f"{v['accuracy']:.4f}" if ok else v["status"],
            f"{v['drop_pt']:.2f} ({v['drop_upper_pt']:.2f})" if ok else "-",
            f"{v['size_bytes'] / 1024:.1f}" if ok else "-",
        ]
        for runner in runners:
            p50 = v["p50_ms"].get(runner)
            ref = variants.get(reference, {}).get("p50_ms", {}).get(runner)
            line += [
                f"{p50:.4f}" if p50 else "-",
                f"{ref / p50:.2f}x" if p50 and ref else "-",
            ]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params/all-techniques.yaml"))
    parser.add_argument("--variants", nargs="+", default=["tflite_int8", "openvino_int8"])
    parser.add_argument("--work", type=Path, default=Path(".modelpress/int8_runtimes"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/int8_runtimes.json"))
    args = parser.parse_args()
    build(args.params, args.work, args.variants)
    result = measure(args.params, args.work, args.variants)
    print()
    print(format_table(result))
    write_json(args.out, result)
    print(f"\n→ {args.out}")


if __name__ == "__main__":
    main()
