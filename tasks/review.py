"""review: what a reviewer sees: the comparison table, a run summary, and a Pareto plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.benchmark import BenchmarkRow
from tasks.io import save_figure
from tasks.pareto import pareto_front


@dataclass(frozen=True)
class GateVerdict:
    """Outcome of a variant's metrics suite, as the review shows it."""

    passed: bool
    reason: str  # "" when passed; the failing checks otherwise
    # upper bound of the accuracy drop's confidence interval, in points: what the drop gate
    # judges (the point estimate alone would let a small test set pass a regression by luck)
    drop_upper: float | None = None
    # the same-session speed evidence against each reference, in words: "on edge-cpu 1.12x
    # slower than baseline (1.10-1.14x, ...)", shown even when the variant passed on size
    speed: str = ""


def review_rows(
    metrics: dict[str, dict[str, Any]], bench: list[BenchmarkRow], verdicts: dict[str, GateVerdict]
) -> list[dict[str, Any]]:
    """One row per variant and runner (a variant no runner measured still gets a row), the gate
    and its reason right after the names."""
    rows = []
    for name, row in metrics.items():
        verdict = verdicts.get(name, GateVerdict(False, row.get("reason") or row["status"]))
        measured: list[BenchmarkRow | None] = [b for b in bench if b.variant == name] or [None]
        for b in measured:
            timed = b if b is not None and b.status == "ok" else None
            rows.append(
                {
                    "variant": name,
                    "runner": b.runner if b else "-",
                    # the verdict first: a narrow window or a paged table still shows it
                    "gate": "pass" if verdict.passed else "REJECTED",
                    "reason": "; ".join(part for part in (verdict.reason, _bench_note(b)) if part),
                    "accuracy": _fmt(row.get("accuracy"), "{:.4f}"),
                    "drop_pts": _fmt(row.get("accuracy_drop"), "{:+.2f}"),
                    "drop_upper_pts": _fmt(verdict.drop_upper, "{:+.2f}"),
                    "agreement": _fmt(row.get("agreement"), "{:.4f}"),
                    "size_kib": _fmt(_kib(row.get("size_bytes")), "{:.0f}"),
                    # the same file(s) zstd-compressed (tasks.evaluate.ZSTD_LEVEL): the download
                    "zstd_kib": _fmt(_kib(row.get("compressed_size_bytes")), "{:.0f}"),
                    "ratio": _fmt(row.get("size_ratio"), "{:.2f}x"),
                    "p50_ms": _fmt(timed.p50_ms if timed else None, "{:.3f}") + _reused(timed),
                    "p90_ms": _fmt(timed.p90_ms if timed else None, "{:.3f}"),
                    "p99_ms": _fmt(timed.p99_ms if timed else None, "{:.3f}"),
                    # against each reference, timed interleaved in one session (tasks/speed.py)
                    "speed": _speed_cell(timed),
                }
            )
    return rows


def _reused(row: BenchmarkRow | None) -> str:
    """A row measured in an earlier session says when: its p50 is not this night's."""
    return f" (reused, {row.measured_at})" if row is not None and row.reused else ""


def _speed_cell(row: BenchmarkRow | None) -> str:
    if row is None or not row.versus:
        return "-"
    return "; ".join(f"vs {ref}: {ratio.short()}" for ref, ratio in row.versus.items())


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
    """The run summary: inputs, what passed, what failed and why, and change vs the last publish.

    `rows` are per variant and runner; each variant is counted and listed once.
    """
    passed = list(dict.fromkeys(r["variant"] for r in rows if r["gate"] == "pass"))
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if r["gate"] != "pass":
            reasons.setdefault(r["variant"], [])
            if r["reason"] and r["reason"] not in reasons[r["variant"]]:
                reasons[r["variant"]].append(r["reason"])
    failed = [f"- **{name}**: {'; '.join(why) or 'rejected'}" for name, why in reasons.items()]
    lines = [f"## ModelPress review: `{model}`", "", "**Inputs**", ""]
    lines += [f"- {key}: `{value}`" for key, value in inputs.items()]
    lines += ["", f"**Passed every gate** ({len(passed)}): {', '.join(passed) or 'none'}", ""]
    lines += [f"**Rejected** ({len(failed)})", "", *(failed or ["- none"]), ""]
    lines += ["**Change vs last published** (each variant vs its own last published version)", ""]
    lines += changes or ["- nothing published before for this model"]
    lines += ["", DROP_NOTE, "", markdown_table(rows)]
    return "\n".join(lines)


DROP_NOTE = (
    "_drop_: baseline accuracy minus the variant's, in points; _upper_: the upper bound of its "
    "confidence interval (paired, exact), which is what the `max_accuracy_drop` gate judges."
)
BASELINE_NOTE = (
    "`baseline` is the fp32 reference model itself, re-published as a deployable ONNX file "
    "(no compression): approve it to ship the uncompressed model beside (or instead of) a "
    "compressed one."
)


def key_runner(bench: list[BenchmarkRow]) -> str | None:
    """The runner whose latency the form shows: an edge runner if one measured, else the first."""
    runners = list(dict.fromkeys(b.runner for b in bench if b.status == "ok"))
    return next((r for r in runners if "edge" in r), runners[0] if runners else None)


def key_numbers(
    name: str, metrics: dict[str, Any], verdict: GateVerdict, bench: list[BenchmarkRow]
) -> dict[str, str]:
    """A variant's accuracy, drop, drop upper bound, size and p50 on the key runner, formatted."""
    runner = key_runner(bench)
    p50 = next(
        (b.p50_ms for b in bench if b.variant == name and b.runner == runner and b.status == "ok"),
        None,
    )
    size = metrics.get("size_bytes")
    return {
        "accuracy": _fmt(metrics.get("accuracy"), "{:.4f}"),
        "drop": _fmt(metrics.get("accuracy_drop"), "{:+.2f}"),
        "upper": _fmt(verdict.drop_upper, "{:+.2f}"),
        "size_kib": _fmt(size / 1024 if size else None, "{:.0f}"),
        "p50_ms": _fmt(p50, "{:.3f}"),
        "runner": runner or "-",
    }


def toggle_title(name: str, numbers: dict[str, str]) -> str:
    """The label of a variant's toggle in the form: its key numbers beside its name."""
    what = " (fp32 reference as ONNX, uncompressed)" if name == "baseline" else ""
    return (
        f"Publish {name}{what}: acc {numbers['accuracy']}, drop {numbers['drop']} pts "
        f"(upper {numbers['upper']}), {numbers['size_kib']} KiB, "
        f"p50 {numbers['p50_ms']} ms on {numbers['runner']}"
    )


def form_markdown(
    model: str,
    numbers: dict[str, dict[str, str]],
    rejected: list[str],
    changes: list[str],
    who: str,
) -> str:
    """The text above the approval form: narrow enough for the dialog's scroll box."""
    runner = next(iter(numbers.values()), {}).get("runner", "-")
    lines = [f"### Review `{model}`: {len(numbers)} variant(s) passed every gate", "", who, ""]
    lines += [
        "Toggle what to publish; nothing toggled publishes nothing (the decision is recorded).",
        "",
        f"| variant | acc | drop | upper | KiB | p50 ms ({runner}) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {n['accuracy']} | {n['drop']} | {n['upper']} | {n['size_kib']} "
        f"| {n['p50_ms']} |"
        for name, n in numbers.items()
    ]
    lines += ["", DROP_NOTE]
    if "baseline" in numbers:
        lines += ["", BASELINE_NOTE]
    if rejected:
        lines += ["", f"Rejected by the gates, not offered: {', '.join(rejected)}."]
    lines += ["", "**Change vs last published**", "", *(changes or ["- nothing published before"])]
    lines += ["", "Full table, summary and Pareto plot: the run's Artifacts tab."]
    return "\n".join(lines)


def changes_vs_published(
    metrics: dict[str, dict[str, Any]],
    published: dict[str, dict[str, Any]],
    bench: list[BenchmarkRow] | None = None,
) -> list[str]:
    """Each variant of this run against its own last published version: accuracy, size, p50.

    `published` maps a variant to its manifest entry with `version` and `created_at` added
    (Registry.last_published); variants never published say so.
    """
    if not published:
        return []
    lines = []
    for name, new in metrics.items():
        old = published.get(name)
        if old is None:
            lines.append(f"- {name}: never published before")
            continue
        old_metrics = old.get("metrics", {})
        head = f"- {name} vs version `{old['version']}` ({old['created_at']}):"
        if new.get("accuracy") is None or old_metrics.get("accuracy") is None:
            lines.append(f"{head} not available in this run")
            continue
        delta = 100 * (new["accuracy"] - old_metrics["accuracy"])
        size_delta = (new.get("size_bytes") or 0) - (old_metrics.get("size_bytes") or 0)
        parts = [f"accuracy {delta:+.2f} pts", f"size {size_delta / 1024:+.1f} KiB"]
        parts += _latency_changes(name, old_metrics.get("benchmarks") or [], bench or [])
        lines.append(f"{head} {', '.join(parts)}")
    lines += [
        f"- {name}: published in version `{old['version']}`, not built in this run"
        for name, old in published.items()
        if name not in metrics
    ]
    return lines


def _latency_changes(name: str, old: list[dict[str, Any]], bench: list[BenchmarkRow]) -> list[str]:
    """'p50 on <runner> a → b ms (±x%)' for each runner that measured the variant both times."""
    before = {b["runner"]: b.get("p50_ms") for b in old if b.get("status") == "ok"}
    parts = []
    for row in bench:
        was = before.get(row.runner)
        if row.variant != name or row.status != "ok" or row.p50_ms is None or not was:
            continue
        change = 100 * (row.p50_ms - was) / was
        parts.append(f"p50 on {row.runner} {was:.3f} → {row.p50_ms:.3f} ms ({change:+.0f}%)")
    return parts


def latency_accuracy_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names not dominated in (lower latency, higher accuracy)."""
    names = list(points)
    return {names[i] for i in pareto_front([(lat, -acc) for lat, acc in points.values()])}


def pareto_plot(
    metrics: dict[str, dict[str, Any]],
    bench: list[BenchmarkRow],
    verdicts: dict[str, GateVerdict],
    path: Path,
) -> Path:
    """Accuracy vs p50 latency, one panel per runner (each variant once per panel); marker area ∝
    size; Pareto front outlined; labels beside their points, nudged apart where they would
    overlap; the legend below the panels, with markers of one size, covering nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    measured = [
        b
        for b in bench
        if b.status == "ok" and metrics.get(b.variant, {}).get("accuracy") is not None
    ]
    runners = list(dict.fromkeys(b.runner for b in measured)) or ["no runner"]
    fig, axes = plt.subplots(
        1, len(runners), figsize=(5.2 * len(runners), 4.6), dpi=120, sharey=True, squeeze=False
    )
    biggest = max((metrics[b.variant]["size_bytes"] for b in measured), default=1)
    labels: list[tuple[Any, dict[str, tuple[float, float]], dict[str, float]]] = []
    for ax, runner in zip(axes[0], runners, strict=True):
        points = {
            b.variant: (float(b.p50_ms or 0), 100 * metrics[b.variant]["accuracy"])
            for b in measured
            if b.runner == runner
        }
        front = latency_accuracy_front(points)
        areas = {name: 40 + 600 * metrics[name]["size_bytes"] / biggest for name in points}
        for name, (latency, acc) in points.items():
            passed = verdicts.get(name, GateVerdict(False, "")).passed
            ax.scatter(
                latency,
                acc,
                s=areas[name],
                alpha=0.55,
                color="tab:green" if passed else "tab:red",
                edgecolors="black" if name in front else "none",
                linewidths=2 if name in front else 0,
                zorder=3,
            )
        labels.append((ax, points, areas))
        ax.set_title(runner, fontsize=9)
        ax.set_xlabel("p50 latency, batch 1 (ms)")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.25, y=0.12)  # room for the labels right of the rightmost points
        low, high = ax.get_ylim()
        ax.set_ylim(low, min(high, 101.0))  # no accuracy above 100 % on the axis
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle("Accuracy vs latency (marker area ∝ size)", fontsize=10)
    handles = [
        Line2D([], [], marker="o", ls="", ms=8, color="tab:green", alpha=0.6, label="passed"),
        Line2D([], [], marker="o", ls="", ms=8, color="tab:red", alpha=0.6, label="rejected"),
        Line2D([], [], marker="o", ls="", ms=8, mfc="none", mec="black", mew=2,
               label="Pareto front (outlined)"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    for ax, points, areas in labels:  # last: placed in the axes' final pixels
        _label_points(ax, points, areas)
    return save_figure(fig, path)


Box = tuple[float, float, float, float]  # left, bottom, right, top, in pixels


def _label_points(ax: Any, points: dict[str, tuple[float, float]], areas: dict[str, float]) -> None:
    """Each variant's name right of its marker's edge, where it covers no other label and no
    other marker: else the first free place a line lower, joined to its point by a thin line (in
    pixels, so it holds whatever the axes' scale)."""
    ax.figure.canvas.draw()  # the data-to-pixel transform needs the final limits
    to_pixels = ax.transData.transform
    pixels_per_point = ax.figure.dpi / 72
    line = 9 * pixels_per_point
    centres = {name: to_pixels(xy) for name, xy in points.items()}
    radius = {name: areas[name] ** 0.5 / 2 * pixels_per_point for name in points}
    markers: dict[str, Box] = {
        n: (cx - radius[n], cy - radius[n], cx + radius[n], cy + radius[n])
        for n, (cx, cy) in centres.items()
    }
    taken: list[Box] = []
    for name, (x, y) in sorted(points.items(), key=lambda item: (-item[1][1], item[1][0])):
        cx, cy = centres[name]
        left = cx + radius[name] + 4 * pixels_per_point
        width = len(name) * 4.3 * pixels_per_point  # 7-point text
        others = [box for n, box in markers.items() if n != name] + taken
        drop = 0.0
        while drop < 12 * line and any(
            _overlap((left, cy - drop - line / 2, left + width, cy - drop + line / 2), box)
            for box in others
        ):
            drop += line
        taken.append((left, cy - drop - line / 2, left + width, cy - drop + line / 2))
        ax.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=((left - cx) / pixels_per_point, -drop / pixels_per_point),
            va="center",
            fontsize=7,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if drop else None,
        )


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _kib(size: int | None) -> float | None:
    return size / 1024 if size else None


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def study_markdown(variant_dir: Path) -> str | None:
    """The sensitivity ranking and calibration study written beside a variant directory
    (`python -m tasks.sensitivity`, `python -m tasks.calibration_study`), as one markdown with
    the plots inline; None where neither was run."""
    import base64

    parts = []
    table = variant_dir.with_name(f"{variant_dir.name}.sensitivity.md")
    if table.exists():
        parts.append(table.read_text())
    for kind, title in (("sensitivity", "Layer sensitivity"), ("calibration", "Calibration")):
        plot = variant_dir.with_name(f"{variant_dir.name}.{kind}.png")
        if plot.exists():
            encoded = base64.b64encode(plot.read_bytes()).decode()
            parts.append(f"![{title}](data:image/png;base64,{encoded})\n\nFile: `{plot.resolve()}`")
    return "\n\n".join(parts) or None
