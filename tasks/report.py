"""report: the variants table (terminal and markdown) and the accuracy-vs-size chart."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tasks.errors import ModelPressError
from tasks.io import atomic_file, read_json, save_figure

COLUMNS = (
    "variant",
    "technique",
    "status",
    "accuracy",
    "drop (pts)",
    "agreement",
    "size",
    "zstd size",  # the model file(s) as downloaded: zstd at tasks.evaluate.ZSTD_LEVEL
    "× smaller",
    "params",
    "MMACs",
    "note",
)


def load_metrics(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        raise ModelPressError(f"{path}: not found; run the pipeline first (make run / dvc repro)")
    return read_json(path)


def table_rows(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, row in metrics.items():
        ok = row["status"] == "ok"
        rows.append(
            (
                name,
                row["technique"],
                row["status"],
                f"{row['accuracy']:.4f}" if ok else "-",
                f"{row['accuracy_drop']:+.2f}" if ok else "-",
                f"{row['agreement']:.4f}" if ok else "-",
                _human_bytes(row["size_bytes"]) if ok else "-",
                _human_bytes(row["compressed_size_bytes"])
                if ok and row.get("compressed_size_bytes") is not None  # older files lack it
                else "-",
                f"{row['size_ratio']:.2f}" if ok else "-",
                f"{row['params']:,}" if row.get("params") else "-",
                f"{row['macs'] / 1e6:.1f}" if row.get("macs") else "-",
                _note(row),
            )
        )
    return rows


def format_table(metrics: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    rows = [COLUMNS, *table_rows(metrics)]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("---" for _ in COLUMNS) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def plot_accuracy_vs_size(metrics: dict[str, dict[str, Any]], path: Path) -> None:
    """Scatter of accuracy against model size (log scale), one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, row in metrics.items():
        if row["status"] != "ok":
            continue
        ax.scatter(row["size_bytes"] / 1024, 100 * row["accuracy"], s=60, zorder=3)
        ax.annotate(
            name,
            (row["size_bytes"] / 1024, 100 * row["accuracy"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("model size on disk (KiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ModelPress variants: accuracy vs size")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def _note(row: dict[str, Any]) -> str:
    parts = [row["reason"]] if row.get("reason") else []
    if row.get("cpu_fp16_accuracy") is not None:
        parts.append(f"accuracy in fp16 on CPU: {row['cpu_fp16_accuracy']:.4f}")
    return "; ".join(parts)


def _human_bytes(size: int) -> str:
    return f"{size / 1024:.0f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.2f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="report: variants table and chart")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="reports directory")
    args = parser.parse_args(argv)
    metrics = load_metrics(args.metrics)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_accuracy_vs_size(metrics, args.out / "accuracy_vs_size.png")
    summary = args.out / "summary.md"
    with atomic_file(summary) as tmp:
        tmp.write_text(
            f"# ModelPress variants\n\n{format_table(metrics, markdown=True)}\n\n![accuracy vs size](accuracy_vs_size.png)\n"
        )
    print(format_table(metrics))
    print(f"report: {summary}, {args.out / 'accuracy_vs_size.png'}")


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
