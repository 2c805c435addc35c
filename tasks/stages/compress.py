"""compress: build one variant (dvc.yaml's compress stage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.compress import compress
from tasks.params_file import load_params
from tasks.quiet import show_converter_output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="compress: build one variant")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--name", required=True, help="variant name (a key of params.yaml variants)"
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, required=True, help="the train stage's output")
    parser.add_argument("--source", type=Path, required=True, help="the source variant's directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--verbose", action="store_true", help="show the converters' output (TensorFlow's)"
    )
    args = parser.parse_args(argv)
    if args.verbose:
        show_converter_output()
    params = load_params(args.params)
    record = compress(params, args.name, args.data, args.baseline, args.source, args.out)
    note = f" ({record.reason})" if record.reason else ""
    print(f"compress: {args.name} [{record.technique}] {record.status}{note} → {args.out}")


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
