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


def load_metrics(path: Path) -> dict[str, dict[str, Any]] | list[dict[str, Any]]:
    """metrics/variants.json (an object of variant rows) or a nightly's review.json (a list of
    variant-and-runner rows); anything else is one line naming the file."""
    import json

    if not path.exists():
        raise ModelPressError(f"{path}: not found; run the pipeline first (make run / dvc repro)")
    try:
        loaded = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPressError(f"{path}: not readable as JSON ({exc})") from None
    expected = (
        "expected metrics/variants.json (an object of variant rows with a status) or a "
        "nightly's runs/<time>/review.json (a list of rows with a variant)"
    )
    if isinstance(loaded, dict) and all(
        isinstance(row, dict) and "status" in row for row in loaded.values()
    ):
        return loaded
    if isinstance(loaded, list) and all(
        isinstance(row, dict) and "variant" in row for row in loaded
    ):
        return loaded
    raise ModelPressError(f"{path}: {expected}")


REVIEW_COLUMNS = (
    "variant",
    "runner",
    "accuracy",
    "drop_pts",
    "drop_upper_pts",
    "zstd_kib",
    "p50_ms",
    "speed",
    "gate",
    "reason",
)


def format_review(rows: list[dict[str, Any]], path: Path, markdown: bool = False) -> str:
    """A nightly's review rows (one per variant and runner): accuracy, the drop and its bound,
    p50 on each runner, the same-session speed, the gate and why."""
    header = tuple(c for c in REVIEW_COLUMNS if any(c in row for row in rows))
    table = [header, *(tuple(str(row.get(c, "-")) for c in header) for row in rows)]
    return _render(table, markdown) + f"\n({len(rows)} rows from {path})"


def _render(rows: list[tuple[str, ...]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(cell.replace("|", "/") for cell in r) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


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


def format_table(
    metrics: dict[str, dict[str, Any]],
    markdown: bool = False,
    p50_ms: dict[str, dict[str, float]] | None = None,
    gates: dict[str, str] | None = None,
) -> str:
    """The variants table; with `p50_ms` (variant → runner → p50) a column per runner, with
    `gates` (variant → "pass" or the reason it was rejected) the verdict."""
    runners = sorted({runner for by_runner in (p50_ms or {}).values() for runner in by_runner})
    header = (
        *COLUMNS[:-1],
        *(f"{runner} p50 ms" for runner in runners),
        *(("gate",) if gates is not None else ()),
        COLUMNS[-1],
    )
    rows: list[tuple[str, ...]] = [header]
    for name, row in zip(metrics, table_rows(metrics), strict=True):
        timed = (p50_ms or {}).get(name, {})
        latency = tuple(f"{timed[r]:.3f}" if r in timed else "-" for r in runners)
        verdict = ((gates or {}).get(name, "-"),) if gates is not None else ()
        rows.append((*row[:-1], *latency, *verdict, row[-1]))
    return _render(rows, markdown)


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
    if isinstance(metrics, list):
        raise ModelPressError(
            f"{args.metrics}: a review.json; the report reads metrics/variants.json"
        )
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
