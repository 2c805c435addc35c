"""evaluate: every variant in its own runtime (dvc.yaml's evaluate stage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.data import load_split
from tasks.evaluate import evaluate, write_evaluation
from tasks.params_file import load_params
from tasks.variant import (
    EVALUATION_SPLIT,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="evaluate: every variant in its own runtime")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--variants", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="metrics directory")
    parser.add_argument(
        "--plot", type=Path, required=True, help="accuracy-vs-size plot data (JSON)"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    evaluation = evaluate(
        args.variants, list(params.variants), load_split(args.data, EVALUATION_SPLIT)
    )
    write_evaluation(evaluation, args.out, args.plot)
    print(f"evaluate: {len(evaluation.metrics)} variants → {args.out / 'variants.json'}")


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
