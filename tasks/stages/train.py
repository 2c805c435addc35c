"""train: make the baseline model (dvc.yaml's train stage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.params_file import load_params
from tasks.train import make_baseline, mmacs, save_baseline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train: make the baseline model")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    root = args.params.parent
    result = make_baseline(params.baseline, params.train, args.data, params.seed, root=root)
    save_baseline(result, params.baseline, args.out, root=root)
    print(
        f"train: baseline ({result.kind}) test accuracy {result.test_accuracy:.4f}, "
        f"{result.params:,} params, {mmacs(result.macs)} MACs → {args.out}"
    )


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
