"""speed: what a same-session comparison can claim, and the interleaved timing behind it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from flows.benchmark import benchmark_variants
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.data import load_split
from tasks.paired_timing import Pair, compare_in_subprocess
from tasks.speed import SpeedRatio, ratio_interval, t_quantile_975

QUICK = BenchmarkConfig(
    warmup=2,
    iterations=30,
    max_seconds=0.5,
    trials=2,
    throughput_batch=4,
    throughput_seconds=0.05,
    compare_rounds=4,
)
PROFILE = RunnerProfile(threads=1)


def test_a_constant_ratio_has_no_width() -> None:
    ratio, low, high = ratio_interval([2.0, 4.0, 3.0], [1.0, 2.0, 1.5])
    assert (ratio, low, high) == pytest.approx((2.0, 2.0, 2.0))


def test_the_interval_is_a_t_interval_of_the_log_ratios() -> None:
    variant, reference = [1.1, 0.9, 1.2, 1.0], [1.0, 1.0, 1.0, 1.0]
    logs = np.log(variant)
    half = t_quantile_975(3) * logs.std(ddof=1) / 2
    ratio, low, high = ratio_interval(variant, reference)
    assert ratio == pytest.approx(math.exp(logs.mean()))
    assert (low, high) == pytest.approx(
        (math.exp(logs.mean() - half), math.exp(logs.mean() + half))
    )
    with pytest.raises(ValueError, match="at least 2"):
        ratio_interval([1.0], [1.0])


def test_a_machine_slowdown_that_hits_both_cancels() -> None:
    # the third round ran while something else used the CPU: both slowed 3x, the ratio did not
    ratio, low, high = ratio_interval([0.5, 0.5, 1.5, 0.5], [1.0, 1.0, 3.0, 1.0])
    assert (ratio, low, high) == pytest.approx((0.5, 0.5, 0.5))


def _ratio(ratio: float, low: float, high: float) -> SpeedRatio:
    return SpeedRatio("baseline", ratio, low, high, 6, ratio, 1.0)


def test_verdicts_need_the_whole_interval() -> None:
    assert _ratio(0.5, 0.45, 0.55).verdict() == "faster"
    assert _ratio(0.5, 0.45, 0.55).verdict(min_gain=2.5) == "indistinguishable"
    assert _ratio(0.99, 0.95, 1.03).verdict() == "indistinguishable"
    assert _ratio(1.12, 1.10, 1.14).verdict() == "slower"
    assert _ratio(1.12, 1.10, 1.14).short() == "1.12x slower (1.10-1.14)"
    assert _ratio(0.5, 0.45, 0.55).short() == "2.0x faster (1.82-2.22)"
    reused = SpeedRatio("baseline", 0.99, 0.95, 1.03, 6, 1.0, 1.0, "2026-12-01T00:00:00", True)
    assert reused.short() == "~ (0.97-1.05x), reused"
    assert "session of 2026-12-01T00:00:00, reused" in reused.describe("edge-cpu")


@pytest.fixture()
def two_models(tiny_workspace: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    baseline = tmp_path / "baseline"
    shutil.copytree(tiny_workspace / "variants" / "baseline", baseline)
    derived = tmp_path / "derived"
    shutil.copytree(baseline, derived)
    record = json.loads((derived / "variant.json").read_text())
    record |= {"name": "derived", "technique": "pruned", "source": "baseline"}
    (derived / "variant.json").write_text(json.dumps(record))
    images = tmp_path / "test-images.npz"
    np.savez(images, x=load_split(tiny_workspace / "data", "test").x)
    return baseline, derived, images


def test_two_real_models_timed_interleaved_in_one_process(
    two_models: tuple[Path, Path, Path],
) -> None:
    baseline, derived, images = two_models
    pairs = [
        Pair("derived", str(derived), "baseline", str(baseline)),
        Pair("baseline", str(baseline), "derived", str(derived)),
    ]
    both = compare_in_subprocess(pairs, images, PROFILE, QUICK)  # one process for both
    ratio, back = both[0], both[1]
    assert isinstance(ratio, SpeedRatio) and isinstance(back, SpeedRatio), both
    # each way round, the same two files: the ratios are reciprocal within the noise
    assert 0.5 < ratio.ratio * back.ratio < 2.0
    assert ratio.rounds == 4 and ratio.reference == "baseline" and ratio.measured_at
    assert ratio.low <= ratio.ratio <= ratio.high
    assert ratio.variant_p50_ms > 0 and ratio.reference_p50_ms > 0
    # the same file against itself: neither is several times faster, whatever the machine does
    assert 0.5 < ratio.ratio < 2.0


def test_an_unloadable_model_gives_a_reason_not_a_ratio(
    two_models: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    baseline, derived, images = two_models
    broken = tmp_path / "broken"
    shutil.copytree(derived, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    pairs = [
        Pair("broken", str(broken), "baseline", str(baseline)),
        Pair("derived", str(derived), "baseline", str(baseline)),
    ]
    found = compare_in_subprocess(pairs, images, PROFILE, QUICK)
    assert isinstance(found[0], str) and found[0]  # its own pair fails, with why
    assert isinstance(found[1], SpeedRatio)  # the other pair is still timed


def test_the_harness_times_each_variant_with_its_references_and_reuses_the_pair(
    two_models: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    baseline, derived, images = two_models
    kept = tmp_path / "kept"
    dirs = {"baseline": baseline, "derived": derived}
    rows = {
        r.variant: r for r in benchmark_variants("edge-cpu", PROFILE, QUICK, dirs, images, kept)
    }
    assert rows["baseline"].versus == {}  # nothing to compare the baseline with
    timed = rows["derived"].versus["baseline"]
    assert isinstance(timed, SpeedRatio) and not timed.reused
    assert len(list(kept.glob("pair-*.json"))) == 1
    again = {
        r.variant: r for r in benchmark_variants("edge-cpu", PROFILE, QUICK, dirs, images, kept)
    }
    reused = again["derived"].versus["baseline"]
    assert reused.reused and (reused.ratio, reused.measured_at) == (timed.ratio, timed.measured_at)
    # rows travel as JSON (runners, the store): the ratio comes back typed
    from dataclasses import asdict

    from tasks.benchmark import BenchmarkRow

    back = BenchmarkRow(**json.loads(json.dumps(asdict(again["derived"]))))
    assert back.versus["baseline"] == reused
