"""benchmark: latency, throughput and memory of a variant in its own runtime, the way the runtimes'
own benchmark tools measure: warm-up, many timed iterations, percentiles, fixed threads and affinity,
several independent trials so a reviewer can tell a real speedup from noise.

Each variant is measured in a fresh process (`measure_in_subprocess`) so peak memory, thread pools
and CPU affinity belong to that variant alone. This module and what it imports need only numpy and
the light runtimes (ONNX Runtime, LiteRT): it runs on an edge runner without torch or TensorFlow.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from tasks.arrays import Array
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.errors import ModelPressError
from tasks.runtimes import RUNTIME_PACKAGES
from tasks.speed import SpeedRatio, t_quantile_975

LATENCY_IMAGES = 64  # batch-1 latency cycles over this many real test images


@dataclass(frozen=True)
class BenchmarkRow:
    """One row of the metrics table's latency part: a variant on a runner."""

    variant: str
    runner: str
    status: str  # ok | failed | skipped
    reason: str | None = None
    p50_ms: float | None = None  # median over trials of each trial's p50
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    p50_trials_ms: list[float] = field(default_factory=list)
    p50_ci95_ms: list[float] | None = None  # 95% t-interval of the mean trial p50
    throughput_ips: float | None = None  # images per second at throughput_batch
    throughput_batch: int | None = None
    peak_rss_mb: float | None = None
    load_ms: float | None = None
    size_bytes: int | None = None
    iterations: int = 0
    direct_p50_ms: float | None = None  # LiteRT called directly in a plain loop (cross-check)
    host: dict[str, Any] = field(default_factory=dict)
    measured_at: str | None = None  # UTC, ISO 8601
    reused: bool = False  # taken from an earlier measurement of the same inputs (measured_at)
    # reference (the baseline, the source) → this variant's speed against it, timed interleaved
    # in one session: what every faster/slower judgment reads (tasks/speed.py)
    versus: dict[str, SpeedRatio] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # rows travel as JSON (runners, the store, kept measurements): ratios come back as dicts
        ratios = {
            reference: ratio if isinstance(ratio, SpeedRatio) else SpeedRatio(**ratio)
            for reference, ratio in self.versus.items()
        }
        object.__setattr__(self, "versus", ratios)

    @classmethod
    def failed(cls, variant: str, runner: str, reason: str, status: str = "failed") -> BenchmarkRow:
        return cls(variant=variant, runner=runner, status=status, reason=reason)


def apply_profile(profile: RunnerProfile) -> tuple[int, list[int]]:
    """Pin this process to the profile's CPUs and cap its memory; returns (threads, cpus)."""
    if profile.cpu_affinity is not None:
        available = os.sched_getaffinity(0)
        cpus = [c for c in profile.cpu_affinity if c in available]
        if not cpus:
            raise ModelPressError(
                f"runners: cpu_affinity {profile.cpu_affinity} names no CPU of this host"
            )
        os.sched_setaffinity(0, cpus)
    if profile.memory_limit_mb is not None:
        limit = profile.memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpus = sorted(os.sched_getaffinity(0))
    return (profile.threads or len(cpus)), cpus


def measure(
    name: str,
    variant_dir: Path,
    images: Array,
    runner: str,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
) -> BenchmarkRow:
    """Measure in this process (call apply_profile first): load, latency trials, throughput."""
    from tasks.evaluate import model_size
    from tasks.runtimes import load_predictor

    threads, cpus = apply_profile(profile)
    started = time.perf_counter()
    predictor = load_predictor(variant_dir, threads=threads)
    load_ms = 1000 * (time.perf_counter() - started)
    # inputs are prepared (normalised, quantised) outside the timed region, as benchmark tools do
    prepared = [
        predictor.prepare(images[i : i + 1]) for i in range(min(len(images), LATENCY_IMAGES))
    ]
    for i in range(cfg.warmup):
        predictor.infer(prepared[i % len(prepared)])
    trials = [latency_trial(predictor.infer, prepared, cfg) for _ in range(cfg.trials)]
    p50s = [float(np.percentile(t, 50)) for t in trials]
    every = np.concatenate(trials)
    return BenchmarkRow(
        variant=name,
        runner=runner,
        status="ok",
        p50_ms=rounded(float(np.median(p50s))),
        p90_ms=rounded(float(np.median([np.percentile(t, 90) for t in trials]))),
        p99_ms=rounded(float(np.median([np.percentile(t, 99) for t in trials]))),
        mean_ms=rounded(float(every.mean())),
        p50_trials_ms=[rounded(v) for v in p50s],
        p50_ci95_ms=_t_interval(p50s),
        throughput_ips=rounded(_throughput(predictor, images, cfg)),
        throughput_batch=cfg.throughput_batch,
        peak_rss_mb=rounded(peak_rss_mb()),
        load_ms=rounded(load_ms),
        size_bytes=model_size(variant_dir),
        iterations=int(every.size),
        host=host_facts(threads, cpus),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program. Linux keeps getrusage's
    ru_maxrss across execve: a measuring child of the 20 GB nightly reported 20 GB for every
    variant. The kernel's high-water mark of the address space (VmHWM) starts anew at exec."""
    for line in (read_or_none("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latency_trial(infer: Any, prepared: list[Array], cfg: BenchmarkConfig) -> Array:
    """Batch-1 timings (ms) over real test images, until iterations or max_seconds."""
    timings: list[float] = []
    deadline = time.perf_counter() + cfg.max_seconds
    while len(timings) < cfg.iterations and time.perf_counter() < deadline:
        x = prepared[len(timings) % len(prepared)]
        tick = time.perf_counter()
        infer(x)
        timings.append(1000 * (time.perf_counter() - tick))
    return np.asarray(timings)


def _throughput(predictor: Any, images: Array, cfg: BenchmarkConfig) -> float:
    batch = predictor.prepare(np.resize(images, (cfg.throughput_batch, *images.shape[1:])))
    predictor.infer(batch)  # warm the batch shape (LiteRT re-allocates on a new shape)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < cfg.throughput_seconds:
        predictor.infer(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def _t_interval(values: list[float]) -> list[float] | None:
    """95% confidence interval of the mean of the trials' p50s."""
    if len(values) < 2:
        return None
    quantile = t_quantile_975(len(values) - 1)
    mean = float(np.mean(values))
    half = quantile * float(np.std(values, ddof=1)) / len(values) ** 0.5
    return [rounded(mean - half), rounded(mean + half)]


def host_facts(threads: int, cpus: list[int]) -> dict[str, Any]:
    """What a reviewer needs to trust a number: which CPU, how many threads, pinned where."""
    return {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "affinity": cpus,
        "governor": read_or_none("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "python": platform.python_version(),
        "libraries": _versions(),
    }


def _cpu_model() -> str:
    text = read_or_none("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def read_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _versions() -> dict[str, str]:
    found = {}
    for package in RUNTIME_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def rounded(value: float) -> float:
    return round(value, 4)


# ---- measured twice: references, and variants that measured slow --------------------------


def measure_again(
    rows: dict[str, BenchmarkRow],
    measured: list[str],
    sources: dict[str, str | None],
    measure: Callable[[str], BenchmarkRow],
    below_speedup: float | None = None,
) -> None:
    """Measure some of `measured` once more, keeping each one's faster row in `rows`:

    - each reference (the baseline, or the source of another variant), after the others. Every
      speed-up is relative to a reference, and a small model's trials last milliseconds: one
      busy second (the flow's bookkeeping between two runners) slowed every trial of an unseen
      net's baseline by 1.45x, and every variant looked that much faster than it is;
    - then each other variant measured less than `below_speedup` times faster than the baseline
      or its source: a disturbed measurement of a variant is what rejects it (a LiteRT fp16
      model measured 0.602 ms one night and 0.308 the next, its baseline 0.4), and a variant
      measured twice is judged as its references are. None: only the references.

    `sources` maps each variant to the variant it was built from.
    """
    references = {"baseline"} | {source for source in sources.values() if source}
    for name in measured[:-1]:  # the last one measured has nothing after it to be fair to
        if name in references and rows[name].status == "ok":
            rows[name] = faster_of(rows[name], measure(name))
    if below_speedup is None:
        return
    for name in measured:
        if name not in references and _looks_slow(rows, name, sources.get(name), below_speedup):
            rows[name] = faster_of(rows[name], measure(name))


def _looks_slow(
    rows: dict[str, BenchmarkRow], name: str, source: str | None, below_speedup: float
) -> bool:
    """Measured less than `below_speedup` times faster than the baseline or its source."""
    mine = rows[name].p50_ms if rows[name].status == "ok" else None
    if mine is None:
        return False
    for reference in {"baseline", source or "baseline"}:
        row = rows.get(reference)
        if (
            row is not None
            and row.status == "ok"
            and row.p50_ms
            and row.p50_ms / mine < below_speedup
        ):
            return True
    return False


def faster_of(first: BenchmarkRow, again: BenchmarkRow) -> BenchmarkRow:
    """The less disturbed of two measurements of one variant: nothing runs faster than it can."""
    if again.status != "ok" or again.p50_ms is None or first.p50_ms is None:
        return first
    faster = again if again.p50_ms < first.p50_ms else first
    if max(first.p50_ms, again.p50_ms) > 1.1 * min(first.p50_ms, again.p50_ms):
        print(
            f"benchmark on {first.runner}: {first.variant} measured twice, p50 {first.p50_ms:.3f} "
            f"then {again.p50_ms:.3f} ms; kept {faster.p50_ms:.3f} (the other was disturbed)",
            flush=True,
        )
    return faster
