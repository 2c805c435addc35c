"""prepare: load, check and split the data (dvc.yaml's prepare stage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.data import prepare, write_prepared
from tasks.params_file import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="prepare: load, check and split the data")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    prepared = prepare(params.data, params.seed, root=args.params.parent)
    write_prepared(prepared, args.out)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in prepared.splits.items())
    print(
        f"prepare: {params.data.source} → {args.out} ({sizes}; {prepared.preprocess.num_classes} classes)"
    )


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
