"""export: the baseline as ONNX fp32 (dvc.yaml's export stage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.data import load_preprocess, load_split
from tasks.export import write_onnx_variant
from tasks.io import read_json
from tasks.train import load_baseline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="export: baseline → ONNX fp32")
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    preprocess = load_preprocess(args.data)
    model = load_baseline(args.baseline)
    weights_sha = read_json(args.baseline / "baseline.json")["sha256"]
    test_x = preprocess.normalize(load_split(args.data, "test").x)
    record = write_onnx_variant(
        model,
        preprocess,
        test_x,
        args.out,
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256=weights_sha,
    )
    print(
        f"export: baseline ONNX fp32 → {args.out} (max |Δ| vs torch {record.extra['onnx_max_abs_diff']:.2e})"
    )


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
