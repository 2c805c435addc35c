"""paired_timing: two models timed in one process, their latency trials interleaved.

The only evidence a speed claim rests on (tasks/speed.py says what it can claim). Like the
benchmark harness, it runs in a fresh process under the runner's profile (threads, CPU affinity,
memory cap) and needs only numpy and the light runtimes: it runs on edge runners as well. Every
pair of a runner is timed in one such process, one pair after another (each pair's two models
loaded, compared and let go before the next): one process start per runner, not per pair.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.benchmark import LATENCY_IMAGES, BenchmarkRow, apply_profile, latency_trial
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.errors import ModelPressError, brief
from tasks.io import write_json
from tasks.measuring_process import images_for_measuring, measurement_key, run_measuring_child
from tasks.plan import content_key
from tasks.speed import SpeedRatio, ratio_interval
from tasks.variant import BASELINE

NOT_MEASURED = BenchmarkRow.failed("", "", "not measured")


@dataclass(frozen=True)
class Pair:
    """A variant and what it is compared with (its reference's name and directory)."""

    variant: str
    variant_dir: str
    reference: str
    reference_dir: str


Compare = Callable[[list[Pair], Path, RunnerProfile, BenchmarkConfig], dict[int, SpeedRatio | str]]


def compare(
    variant_dir: Path,
    reference_dir: Path,
    reference: str,
    images: Array,
    threads: int,
    cfg: BenchmarkConfig,
) -> SpeedRatio:
    """In this process: both models loaded and warmed, then `cfg.compare_rounds` rounds of one
    latency trial each, the order alternating per round so neither model always runs first."""
    from tasks.runtimes import load_predictor

    models = [load_predictor(d, threads=threads) for d in (variant_dir, reference_dir)]
    count = min(len(images), LATENCY_IMAGES)
    prepared = [[m.prepare(images[i : i + 1]) for i in range(count)] for m in models]
    for model, inputs in zip(models, prepared, strict=True):
        for i in range(cfg.warmup):
            model.infer(inputs[i % len(inputs)])
    p50s: list[list[float]] = [[], []]
    for round_number in range(cfg.compare_rounds):
        order = (0, 1) if round_number % 2 == 0 else (1, 0)
        for which in order:
            timings = latency_trial(models[which].infer, prepared[which], cfg)
            p50s[which].append(float(np.percentile(timings, 50)))
    ratio, low, high = ratio_interval(p50s[0], p50s[1])
    return SpeedRatio(
        reference=reference,
        ratio=round(ratio, 4),
        low=round(low, 4),
        high=round(high, 4),
        rounds=cfg.compare_rounds,
        variant_p50_ms=round(float(np.median(p50s[0])), 4),
        reference_p50_ms=round(float(np.median(p50s[1])), 4),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def compare_pairs(
    pairs: list[Pair], images: Array, profile: RunnerProfile, cfg: BenchmarkConfig
) -> dict[int, SpeedRatio | str]:
    """Every pair in this process (apply_profile first), by index: its ratio, or why there is
    none (a model its runtime cannot load fails its own pair, not the others)."""
    threads, _ = apply_profile(profile)
    found: dict[int, SpeedRatio | str] = {}
    for index, pair in enumerate(pairs):
        try:
            found[index] = compare(
                Path(pair.variant_dir),
                Path(pair.reference_dir),
                pair.reference,
                images,
                threads,
                cfg,
            )
        except (ModelPressError, RuntimeError, ValueError, OSError) as exc:
            found[index] = brief(exc)
        gc.collect()  # the pair's sessions go before the next pair's load (the memory cap)
    return found


def compare_in_subprocess(
    pairs: list[Pair],
    images_file: Path,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    timeout_s: float = 900,
) -> dict[int, SpeedRatio | str]:
    """compare_pairs in a fresh Python process; a process that fails answers every pair with
    why (one line)."""
    if not pairs:
        return {}
    with tempfile.TemporaryDirectory(prefix="mp-paired-") as work:
        out, listing = Path(work) / "ratios.json", Path(work) / "pairs.json"
        listing.write_text(json.dumps([asdict(pair) for pair in pairs]))
        images = images_for_measuring(images_file, cfg, Path(work))
        command = [
            sys.executable,
            *("-m", "tasks.paired_timing", "--pairs", str(listing), "--images", str(images)),
            *("--profile", profile.model_dump_json(), "--config", cfg.model_dump_json()),
            *("--out", str(out)),
        ]
        answer = run_measuring_child(command, out, timeout_s)
    if isinstance(answer, str):
        return dict.fromkeys(range(len(pairs)), answer)
    return {
        int(index): value if isinstance(value, str) else SpeedRatio(**value)
        for index, value in answer.items()
    }


def compare_with_references(
    rows: dict[str, BenchmarkRow],
    variant_dirs: dict[str, Path],
    sources: dict[str, str | None],
    images_file: Path,
    runner: str,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    compare_all: Compare,
    reuse_dir: Path | None,
    context: str,
) -> None:
    """Each measured variant timed interleaved with the baseline and with its source, all pairs
    of this runner in one measuring process: the speed evidence the gates and the review read.
    With `reuse_dir`, a pair timed before on the same files and context is not timed again (the
    claim is still same-session: both were measured together, and the ratio says when)."""
    versus: dict[str, dict[str, SpeedRatio]] = {}
    pending: list[tuple[Pair, Path | None]] = []
    for name, row in rows.items():
        if name == BASELINE or row.status != "ok":
            continue
        versus[name] = {}
        for reference in dict.fromkeys([BASELINE, sources.get(name) or BASELINE]):
            if rows.get(reference, NOT_MEASURED).status != "ok":
                continue
            kept = None
            if reuse_dir is not None:
                key = [measurement_key(variant_dirs[n], context) for n in (name, reference)]
                kept = reuse_dir / f"pair-{content_key(key)}.json"
                if kept.exists():
                    earlier = SpeedRatio(**json.loads(kept.read_text()))
                    versus[name][reference] = replace(earlier, reference=reference, reused=True)
                    continue
            pair = Pair(name, str(variant_dirs[name]), reference, str(variant_dirs[reference]))
            pending.append((pair, kept))
    timed = compare_all([pair for pair, _ in pending], images_file, profile, cfg)
    for index, (pair, kept) in enumerate(pending):
        ratio = timed.get(index, "not timed")
        if isinstance(ratio, str):
            print(
                f"benchmark on {runner}: {pair.variant} vs {pair.reference} not timed together: {ratio}"
            )
            continue
        versus[pair.variant][pair.reference] = ratio
        if kept is not None:
            write_json(kept, asdict(ratio))
    for name, found in versus.items():
        rows[name] = replace(rows[name], versus=found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="time pairs of models interleaved (the harness's child)"
    )
    for flag in ("--pairs", "--images", "--profile", "--config", "--out"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    pairs = [Pair(**pair) for pair in json.loads(Path(args.pairs).read_text())]
    with np.load(args.images) as archive:
        images = archive["x"].astype(np.float32)
    found = compare_pairs(
        pairs,
        images,
        RunnerProfile.model_validate_json(args.profile),
        BenchmarkConfig.model_validate_json(args.config),
    )
    write_json(
        Path(args.out),
        {str(i): value if isinstance(value, str) else asdict(value) for i, value in found.items()},
    )


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
