"""review: what a reviewer sees: the comparison table, a run summary, and a Pareto plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.benchmark import BenchmarkRow
from tasks.io import save_figure


@dataclass(frozen=True)
class GateVerdict:
    """Outcome of a variant's metrics suite, as the review shows it."""

    passed: bool
    reason: str  # "" when passed; the failing checks otherwise


def review_rows(
    metrics: dict[str, dict[str, Any]], bench: list[BenchmarkRow], verdicts: dict[str, GateVerdict]
) -> list[dict[str, Any]]:
    """One row per variant and runner (a variant no runner measured still gets a row)."""
    rows = []
    for name, row in metrics.items():
        verdict = verdicts.get(name, GateVerdict(False, row.get("reason") or row["status"]))
        measured = [b for b in bench if b.variant == name] or [None]
        for b in measured:
            ok = b is not None and b.status == "ok"
            rows.append(
                {
                    "variant": name,
                    "runner": b.runner if b else "-",
                    "accuracy": _fmt(row.get("accuracy"), "{:.4f}"),
                    "drop_pts": _fmt(row.get("accuracy_drop"), "{:+.2f}"),
                    "agreement": _fmt(row.get("agreement"), "{:.4f}"),
                    "size_kib": _fmt(
                        row["size_bytes"] / 1024 if row.get("size_bytes") else None, "{:.0f}"
                    ),
                    "ratio": _fmt(row.get("size_ratio"), "{:.2f}x"),
                    "p50_ms": _fmt(b.p50_ms if ok else None, "{:.3f}"),
                    "p90_ms": _fmt(b.p90_ms if ok else None, "{:.3f}"),
                    "p99_ms": _fmt(b.p99_ms if ok else None, "{:.3f}"),
                    "gate": "pass" if verdict.passed else "REJECTED",
                    "reason": "; ".join(part for part in (verdict.reason, _bench_note(b)) if part),
                }
            )
    return rows


def _bench_note(row: BenchmarkRow | None) -> str:
    if row is None or row.status == "ok":
        return ""
    return f"benchmark on {row.runner} {row.status}: {row.reason}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no variants_"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(r[h]).replace("|", "/") for h in header) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(
    model: str, inputs: dict[str, Any], rows: list[dict[str, Any]], changes: list[str]
) -> str:
    """The run summary: inputs, what passed, what failed and why, and change vs the last publish."""
    passed = [r["variant"] for r in rows if r["gate"] == "pass"]
    failed = [f"- **{r['variant']}**: {r['reason']}" for r in rows if r["gate"] != "pass"]
    lines = [f"## ModelPress review: `{model}`", "", "**Inputs**", ""]
    lines += [f"- {key}: `{value}`" for key, value in inputs.items()]
    lines += ["", f"**Passed every gate** ({len(passed)}): {', '.join(passed) or 'none'}", ""]
    lines += ["**Rejected**", "", *(failed or ["- none"]), "", "**Change vs last published**", ""]
    lines += changes or ["- nothing published before for this model"]
    lines += ["", markdown_table(rows)]
    return "\n".join(lines)


def changes_vs_published(
    metrics: dict[str, dict[str, Any]], previous: dict[str, Any] | None
) -> list[str]:
    """Accuracy and size changes per variant against the last published manifest."""
    if previous is None:
        return []
    lines = [f"- last published: version `{previous['version']}` ({previous['created_at']})"]
    for name, old in previous["variants"].items():
        new = metrics.get(name)
        old_metrics = old.get("metrics", {})
        if new is None or new.get("accuracy") is None or old_metrics.get("accuracy") is None:
            lines.append(f"- {name}: not available in this run")
            continue
        delta = 100 * (new["accuracy"] - old_metrics["accuracy"])
        size_delta = (new["size_bytes"] or 0) - (old_metrics.get("size_bytes") or 0)
        lines.append(f"- {name}: accuracy {delta:+.2f} pts, size {size_delta / 1024:+.1f} KiB")
    return lines


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names not dominated in (lower latency, higher accuracy)."""
    front = set()
    for name, (latency, acc) in points.items():
        dominated = any(
            (l2 <= latency and a2 >= acc) and (l2 < latency or a2 > acc)
            for other, (l2, a2) in points.items()
            if other != name
        )
        if not dominated:
            front.add(name)
    return front


def pareto_plot(
    metrics: dict[str, dict[str, Any]],
    bench: list[BenchmarkRow],
    verdicts: dict[str, GateVerdict],
    path: Path,
) -> Path:
    """Accuracy vs p50 latency per runner (marker shape); marker area ∝ size; Pareto front outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [
        b
        for b in bench
        if b.status == "ok" and metrics.get(b.variant, {}).get("accuracy") is not None
    ]
    runners = list(dict.fromkeys(b.runner for b in measured))
    shapes = "os^Dv<>p"
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    biggest = max((metrics[b.variant]["size_bytes"] for b in measured), default=1)
    for k, runner in enumerate(runners):
        on_runner = [b for b in measured if b.runner == runner]
        points = {
            b.variant: (float(b.p50_ms or 0), 100 * metrics[b.variant]["accuracy"])
            for b in on_runner
        }
        front = pareto_front(points)
        for index, (name, (latency, acc)) in enumerate(points.items()):
            passed = verdicts.get(name, GateVerdict(False, "")).passed
            ax.scatter(
                latency,
                acc,
                s=40 + 600 * metrics[name]["size_bytes"] / biggest,
                alpha=0.6,
                marker=shapes[k % len(shapes)],
                color="tab:green" if passed else "tab:red",
                edgecolors="black" if name in front else "none",
                linewidths=2 if name in front else 0,
                zorder=3,
                label=runner if index == 0 else None,
            )
            # staggered labels: variants with equal accuracy and latency would overlap
            ax.annotate(
                name,
                (latency, acc),
                textcoords="offset points",
                xytext=(7, 5 - 11 * (index % 3)),
                fontsize=7,
            )
    ax.set_xlabel("p50 latency, batch 1 (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        "Accuracy vs latency per runner (area ∝ size; outlined = Pareto front; red = rejected)"
    )
    ax.title.set_fontsize(9)
    if runners:
        ax.legend(title="runner", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
