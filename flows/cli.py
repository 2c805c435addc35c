"""The `modelpress` command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.cli_support import run_main


def _table(args: argparse.Namespace) -> None:
    from tasks.report import format_table, load_metrics

    metrics = load_metrics(args.metrics)
    print(format_table(metrics, markdown=args.markdown))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpress", description="ModelPress: compress, validate, publish"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="print the variants table from a metrics file")
    table.add_argument("metrics", type=Path, nargs="?", default=Path("metrics/variants.json"))
    table.add_argument("--markdown", action="store_true", help="print a markdown table")
    table.set_defaults(handler=_table)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(lambda: args.handler(args))


if __name__ == "__main__":
    main()
