"""benchmark: latency of one variant at batch 1 in its own runtime, after warm-up, as percentiles."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import BenchmarkConfig
from tasks.runtime import load_predictor


@dataclass(frozen=True)
class LatencyResult:
    variant: str
    runner: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    iterations: int
    threads: int
    load_ms: float
    host: str


def measure_latency(
    name: str, variant_dir: Path, images: np.ndarray, cfg: BenchmarkConfig, runner: str = "local"
) -> LatencyResult:
    """Warm up, then time single-image inference until `iterations` or `max_seconds`, first reached."""
    started = time.perf_counter()
    predictor = load_predictor(variant_dir, threads=cfg.threads)
    load_ms = 1000 * (time.perf_counter() - started)
    for i in range(cfg.warmup):
        predictor(images[i % len(images)][None])
    timings: list[float] = []
    deadline = time.perf_counter() + cfg.max_seconds
    while len(timings) < cfg.iterations and time.perf_counter() < deadline:
        image = images[len(timings) % len(images)][None]  # real test images, not zeros
        tick = time.perf_counter()
        predictor(image)
        timings.append(1000 * (time.perf_counter() - tick))
    p50, p90, p99 = np.percentile(timings, [50, 90, 99])
    return LatencyResult(
        variant=name,
        runner=runner,
        p50_ms=round(float(p50), 4),
        p90_ms=round(float(p90), 4),
        p99_ms=round(float(p99), 4),
        mean_ms=round(float(np.mean(timings)), 4),
        iterations=len(timings),
        threads=cfg.threads,
        load_ms=round(load_ms, 2),
        host=f"{platform.node()} ({platform.processor() or platform.machine()})",
    )
