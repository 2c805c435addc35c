"""bench_all: `make bench`, every built variant on every local runner profile, one at a time.

Each variant in a fresh measuring process (tasks.benchmark), references measured again after the
others, then each variant timed interleaved with its baseline and source (tasks.paired_timing):
the speedup column is that same-session ratio with its interval, never two rows measured apart.

    python -m tasks.bench_all --params params.yaml --variants variants --data data --out benchmarks [--ops]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tasks.benchmark import BenchmarkRow, measure_again
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.measuring_process import measure_in_subprocess
from tasks.paired_timing import compare_in_subprocess, compare_with_references
from tasks.runtimes import runs_on


def bench_all(
    variants_dir: Path,
    names: list[str],
    images_file: Path,
    runners: dict[str, RunnerProfile],
    cfg: BenchmarkConfig,
) -> list[BenchmarkRow]:
    """Benchmark each ready variant on each profile, one at a time (measurements must not overlap)."""
    from tasks.variant import read_record

    rows: list[BenchmarkRow] = []
    for runner, profile in runners.items():
        runner_rows: dict[str, BenchmarkRow] = {}
        measured: list[str] = []
        sources: dict[str, str | None] = {}
        for name in names:
            record = read_record(variants_dir / name)
            if record.status != "ok":
                runner_rows[name] = BenchmarkRow.failed(
                    name, runner, f"variant is {record.status}: {record.reason}", "skipped"
                )
                continue
            if not runs_on(record.runtime, profile):
                reason = f"{record.runtime} variants are not measured on {profile.kind} runners"
                runner_rows[name] = BenchmarkRow.failed(name, runner, reason, "skipped")
                continue
            row = measure_in_subprocess(
                name, variants_dir / name, images_file, runner, profile, cfg
            )
            print(f"bench: {runner:<10} {name:<16} {_brief(row)}", flush=True)
            runner_rows[name] = row
            measured.append(name)
            sources[name] = record.source

        def again(
            name: str, runner: str = runner, profile: RunnerProfile = profile
        ) -> BenchmarkRow:
            return measure_in_subprocess(
                name, variants_dir / name, images_file, runner, profile, cfg
            )

        measure_again(runner_rows, measured, sources, again, cfg.measure_again_below_speedup)
        dirs = {name: variants_dir / name for name in runner_rows}
        compare_with_references(
            runner_rows,
            dirs,
            sources,
            images_file,
            runner,
            profile,
            cfg,
            compare_in_subprocess,
            None,
            "",
        )
        rows += runner_rows.values()
    return rows


def _brief(row: BenchmarkRow) -> str:
    if row.status != "ok":
        return f"{row.status}: {row.reason}"
    return f"p50 {row.p50_ms:.3f} ms (trials {min(row.p50_trials_ms):.3f}–{max(row.p50_trials_ms):.3f}), {row.throughput_ips:.0f} img/s"


def format_bench_table(rows: list[BenchmarkRow], baseline: str = "baseline") -> str:
    """Table of each row's numbers; "vs baseline" is the variant's speed against the baseline
    timed interleaved in one session (with its interval), never two rows measured apart."""
    header = (
        "runner",
        "variant",
        "p50 ms",
        "p50 spread",
        "p90 ms",
        "p99 ms",
        "vs baseline (same session)",
        "img/s",
        "peak MiB",
        "status",
    )
    lines = [header]
    for r in rows:
        ok = r.status == "ok"
        timed = r.versus.get(baseline) if ok else None
        speedup = timed.short() if timed is not None else "-"
        spread = (
            f"{min(r.p50_trials_ms):.3f}–{max(r.p50_trials_ms):.3f}"
            if ok and r.p50_trials_ms
            else "-"
        )
        lines.append(
            (
                r.runner,
                r.variant,
                f"{r.p50_ms:.3f}" if ok else "-",
                spread,
                f"{r.p90_ms:.3f}" if ok else "-",
                f"{r.p99_ms:.3f}" if ok else "-",
                speedup,
                f"{r.throughput_ips:.0f}" if ok else "-",
                f"{r.peak_rss_mb:.0f}" if ok else "-",
                r.status if ok else f"{r.status}: {r.reason}",
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    table = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    checks = [
        f"cross-check {r.runner} {r.variant}: harness p50 {r.p50_ms:.4f} ms, LiteRT direct loop "
        f"{r.direct_p50_ms:.4f} ms ({100 * (r.p50_ms - r.direct_p50_ms) / r.direct_p50_ms:+.1f}%)"
        for r in rows
        if r.status == "ok" and r.direct_p50_ms and r.p50_ms
    ]
    return "\n".join([*table, "", *checks] if checks else table)


def plot_latency(rows: list[BenchmarkRow], path: Path) -> Path:
    """Grouped bars: p50 latency per variant and runner, with the trials' spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.io import save_figure

    # bars need a p50; a row without one has nothing to draw
    ok = [r for r in rows if r.status == "ok" and r.p50_ms is not None]
    variants = list(dict.fromkeys(r.variant for r in ok))
    runners = list(dict.fromkeys(r.runner for r in ok))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(variants) + 2), 4.5), dpi=120)
    width = 0.8 / max(1, len(runners))
    for k, runner in enumerate(runners):
        by_variant = {r.variant: r for r in ok if r.runner == runner}
        xs = [i + k * width for i, v in enumerate(variants) if v in by_variant]
        chosen = [by_variant[v] for v in variants if v in by_variant]
        heights = [float(r.p50_ms or 0.0) for r in chosen]
        errors = [
            [h - min(r.p50_trials_ms or [h]) for h, r in zip(heights, chosen, strict=True)],
            [max(r.p50_trials_ms or [h]) - h for h, r in zip(heights, chosen, strict=True)],
        ]
        ax.bar(xs, heights, width, yerr=errors, capsize=3, label=runner)
    ax.set_xticks(
        [i + width * (len(runners) - 1) / 2 for i in range(len(variants))], variants, rotation=20
    )
    ax.set_ylabel("p50 latency, batch 1 (ms)")
    ax.set_title("Latency by variant and runner (error bars: spread of p50 over trials)")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _bench(args: argparse.Namespace) -> None:
    from tasks.data import load_split
    from tasks.io import atomic_dir, write_json
    from tasks.params_file import load_params

    params = load_params(args.params)
    runners = {
        name: params.runners[name]
        for name in params.benchmark.runners
        if params.runners[name].work_pool is None
    }
    names = ["baseline", *params.variants]
    test = load_split(args.data, "test")
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as work:
        images_file = Path(work) / "test.npz"
        np.savez(images_file, x=test.x)
        rows = bench_all(args.variants, names, images_file, runners, params.benchmark)
    with atomic_dir(args.out) as staging:
        write_json(
            staging / "latest.json",
            {"rows": [asdict(r) for r in rows], "config": params.benchmark.model_dump()},
        )
        plot_latency(rows, staging / "latency.png")
        profiles = _op_profiles(args.variants, names, staging / "ops") if args.ops else []
    print(format_bench_table(rows))
    for text in profiles:
        print(f"\n{text}")
    print(f"bench: {args.out / 'latest.json'}, {args.out / 'latency.png'}")
    if profiles:
        print(f"per-op profiles (1 thread, batch 1): {args.out / 'ops'}/<variant>.json")


def _op_profiles(variants_dir: Path, names: list[str], out_dir: Path) -> list[str]:
    """Per-operator time of each built variant at 1 thread: where the time goes (an int8 model
    slower than fp32 shows which ops fell off the fast path), as tables and JSON files."""
    from tasks.errors import ModelPressError
    from tasks.io import write_json
    from tasks.op_profile import format_profile, profile_variant

    tables = []
    for name in names:
        try:
            profile = profile_variant(variants_dir / name, threads=1, runs=100)
        except (ModelPressError, FileNotFoundError) as exc:  # not built, failed, or no profiler
            tables.append(f"{name}: no per-op profile ({exc})")
            continue
        write_json(out_dir / f"{name}.json", asdict(profile))
        tables.append(f"{name}: {format_profile(profile)}")
    return tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="every variant on every local profile (make bench)"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", type=Path, default=Path("variants"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument(
        "--ops", action="store_true", help="also profile each variant per operator (1 thread)"
    )
    _bench(parser.parse_args(argv))


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
