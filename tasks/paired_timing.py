"""paired_timing: two models timed in one process, their latency trials interleaved.

The only evidence a speed claim rests on (tasks/speed.py says what it can claim). Like the
benchmark harness, it runs in a fresh process under the runner's profile (threads, CPU affinity,
memory cap) and needs only numpy and the light runtimes: it runs on edge runners as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tasks.benchmark import (
    LATENCY_IMAGES,
    BenchmarkRow,
    apply_profile,
    images_for_measuring,
    latency_trial,
    measurement_key,
    run_measuring_child,
)
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.io import write_json
from tasks.plan import content_key
from tasks.speed import SpeedRatio, ratio_interval
from tasks.variant import BASELINE

NOT_MEASURED = BenchmarkRow.failed("", "", "not measured")


def compare(
    variant_dir: Path,
    reference_dir: Path,
    reference: str,
    images: np.ndarray,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
) -> SpeedRatio:
    """In this process (apply_profile is applied here): both models loaded and warmed, then
    `cfg.compare_rounds` rounds of one latency trial each, the order alternating per round so
    neither model always runs first."""
    from tasks.runtimes import load_predictor

    threads, _ = apply_profile(profile)
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


def compare_in_subprocess(
    variant_dir: Path,
    reference_dir: Path,
    reference: str,
    images_file: Path,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    timeout_s: float = 600,
) -> SpeedRatio | str:
    """`compare` in a fresh Python process: the ratio, or why there is none (one line)."""
    with tempfile.TemporaryDirectory(prefix="mp-paired-") as work:
        out = Path(work) / "ratio.json"
        images = images_for_measuring(images_file, cfg, Path(work))
        command = [
            sys.executable,
            "-m",
            "tasks.paired_timing",
            "--variant",
            str(variant_dir),
            "--reference",
            str(reference_dir),
            "--reference-name",
            reference,
            "--images",
            str(images),
            "--profile",
            profile.model_dump_json(),
            "--config",
            cfg.model_dump_json(),
            "--out",
            str(out),
        ]
        answer = run_measuring_child(command, out, timeout_s)
        return answer if isinstance(answer, str) else SpeedRatio(**answer)


def compare_with_references(
    rows: dict[str, BenchmarkRow],
    variant_dirs: dict[str, Path],
    sources: dict[str, str | None],
    images_file: Path,
    runner: str,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    compare: Callable[..., SpeedRatio | str],
    reuse_dir: Path | None,
    context: str,
) -> None:
    """Each measured variant timed interleaved with the baseline and with its source, in one
    process each (tasks/paired_timing.py): the speed evidence the gates and the review read.
    With `reuse_dir`, a pair timed before on the same files and context is not timed again (the
    claim is still same-session: both were measured together, and the row says when)."""
    for name, row in list(rows.items()):
        if name == BASELINE or row.status != "ok":
            continue
        references = [BASELINE, *([sources.get(name)] if sources.get(name) else [])]
        versus: dict[str, SpeedRatio] = {}
        for reference in dict.fromkeys(references):  # once each, the baseline first
            if reference is None or rows.get(reference, NOT_MEASURED).status != "ok":
                continue
            kept = None
            if reuse_dir is not None:
                pair = [measurement_key(variant_dirs[n], context) for n in (name, reference)]
                kept = reuse_dir / f"pair-{content_key(pair)}.json"
                if kept.exists():
                    versus[reference] = replace(
                        SpeedRatio(**json.loads(kept.read_text())), reference=reference, reused=True
                    )
                    continue
            ratio = compare(
                variant_dirs[name], variant_dirs[reference], reference, images_file, profile, cfg
            )
            if isinstance(ratio, str):
                print(f"benchmark on {runner}: {name} vs {reference} not timed together: {ratio}")
                continue
            versus[reference] = ratio
            if kept is not None:
                write_json(kept, asdict(ratio))
        rows[name] = replace(row, versus=versus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="time two models interleaved (the harness's child)"
    )
    for flag in (
        "--variant",
        "--reference",
        "--reference-name",
        "--images",
        "--profile",
        "--config",
        "--out",
    ):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    with np.load(args.images) as archive:
        images = archive["x"].astype(np.float32)
    ratio = compare(
        Path(args.variant),
        Path(args.reference),
        args.reference_name,
        images,
        RunnerProfile.model_validate_json(args.profile),
        BenchmarkConfig.model_validate_json(args.config),
    )
    write_json(Path(args.out), asdict(ratio))


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
