"""A benchmark row is reused only while everything it was measured from is unchanged: the second
run of an unchanged nightly measures nothing again, and any change to the variant's files, the
images, the runner profile or the timing settings measures afresh."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from flows.benchmark import benchmark_variants
from tasks.benchmark import BenchmarkRow
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.data import load_split

QUICK = BenchmarkConfig(
    warmup=1, iterations=20, max_seconds=0.5, trials=2, throughput_batch=4, throughput_seconds=0.05
)
PROFILE = RunnerProfile(threads=1)


@pytest.fixture()
def bench_inputs(tiny_workspace: Path, tmp_path: Path) -> tuple[Path, Path]:
    variant = tmp_path / "baseline"
    shutil.copytree(tiny_workspace / "variants" / "baseline", variant)
    images = tmp_path / "test-images.npz"
    np.savez(images, x=load_split(tiny_workspace / "data", "test").x)
    return variant, images


def test_an_unchanged_measurement_is_reused_under_the_new_name(
    bench_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    variant, images = bench_inputs
    kept = tmp_path / "kept"
    (first,) = benchmark_variants("edge-cpu", PROFILE, QUICK, {"baseline": variant}, images, kept)
    assert first.status == "ok" and not first.reused and first.measured_at
    assert len(list(kept.glob("*.json"))) == 1
    (again,) = benchmark_variants("edge-cpu", PROFILE, QUICK, {"fp32": variant}, images, kept)
    assert again.reused and again.variant == "fp32"
    assert (again.p50_ms, again.p50_trials_ms, again.measured_at) == (
        first.p50_ms,
        first.p50_trials_ms,
        first.measured_at,
    )
    # without a place to keep them, rows are always measured
    (fresh,) = benchmark_variants("edge-cpu", PROFILE, QUICK, {"baseline": variant}, images)
    assert not fresh.reused


def test_any_changed_input_measures_again(bench_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    variant, images = bench_inputs
    kept = tmp_path / "kept"
    benchmark_variants("edge-cpu", PROFILE, QUICK, {"baseline": variant}, images, kept)

    edited = tmp_path / "edited"
    shutil.copytree(variant, edited)
    record = json.loads((edited / "variant.json").read_text())
    record["settings"] = {"note": "rebuilt"}
    (edited / "variant.json").write_text(json.dumps(record))
    other_images = tmp_path / "other.npz"
    with np.load(images) as archive:
        np.savez(other_images, x=archive["x"][::-1].copy())

    changes = {
        "variant files": ("edge-cpu", PROFILE, QUICK, edited, images),
        "images": ("edge-cpu", PROFILE, QUICK, variant, other_images),
        "runner profile": ("edge-cpu", RunnerProfile(threads=2), QUICK, variant, images),
        "runner name": ("cloud-cpu", PROFILE, QUICK, variant, images),
        "timing settings": (
            "edge-cpu",
            PROFILE,
            QUICK.model_copy(update={"trials": 3}),
            variant,
            images,
        ),
    }
    for what, (runner, profile, cfg, directory, image_file) in changes.items():
        (row,) = benchmark_variants(runner, profile, cfg, {"v": directory}, image_file, kept)
        assert row.status == "ok" and not row.reused, what
    assert len(list(kept.glob("*.json"))) == 1 + len(changes)
    # where the store lives is not an input to a measurement
    moved = QUICK.model_copy(update={"store_uri": "s3://elsewhere/x"})
    (row,) = benchmark_variants("edge-cpu", PROFILE, moved, {"v": variant}, images, kept)
    assert row.reused


def test_a_reference_is_measured_again_after_the_others_and_keeps_its_faster_row(
    bench_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every speed-up is relative to the baseline (and a chained variant's to its source): a
    baseline slowed by a busy second made every variant look faster, so references are measured
    once more, last, and the faster row is the one reported and kept."""
    from tasks.measuring_process import measure_in_subprocess

    variant, images = bench_inputs
    derived = tmp_path / "derived"
    shutil.copytree(variant, derived)
    record = json.loads((derived / "variant.json").read_text())
    record |= {"name": "derived", "technique": "pruned", "source": "baseline"}
    (derived / "variant.json").write_text(json.dumps(record))
    measured: list[BenchmarkRow] = []

    def measure_and_note(*args: object, **kwargs: object) -> BenchmarkRow:  # the real measurement
        row = measure_in_subprocess(*args, **kwargs)  # type: ignore[arg-type]
        measured.append(row)
        return row

    kept = tmp_path / "kept"
    dirs = {"baseline": variant, "derived": derived}
    # derived is the baseline's own file: on a loaded machine one measurement of it came out
    # 1.25x faster than the other's, and it was not measured again. With a bar no measurement
    # of the same file clears, whether it is measured again does not depend on the machine.
    strict = QUICK.model_copy(update={"measure_again_below_speedup": 1000.0})
    rows = benchmark_variants("edge-cpu", PROFILE, strict, dirs, images, kept, measure_and_note)

    # derived, no 1000x faster than the baseline, is measured again as well
    assert [r.variant for r in measured] == ["baseline", "derived", "baseline", "derived"]
    by_name = {r.variant: r for r in rows}
    assert [r.variant for r in rows] == ["baseline", "derived"]
    for name in dirs:
        faster = min((r for r in measured if r.variant == name), key=lambda r: r.p50_ms or 0)
        assert by_name[name].p50_ms == faster.p50_ms
        assert by_name[name].p50_trials_ms == faster.p50_trials_ms
    # the kept row is the reported one: a second run reuses it, measuring nothing
    measured.clear()
    again = benchmark_variants("edge-cpu", PROFILE, strict, dirs, images, kept, measure_and_note)
    assert measured == [] and [r.p50_ms for r in again] == [r.p50_ms for r in rows]


def _row(name: str, p50_ms: float) -> BenchmarkRow:
    return BenchmarkRow(variant=name, runner="edge-cpu", status="ok", p50_ms=p50_ms)


def test_a_variant_measured_slow_is_measured_again_and_a_fast_one_is_not() -> None:
    """Which rows are measured twice (the decision alone; the measurements above are real):
    references after the others, then any variant under `below_speedup` times faster than the
    baseline or its source. A second measurement keeps the faster row."""
    from tasks.benchmark import measure_again

    sources = {"baseline": None, "fast": "baseline", "slow": "baseline", "chained": "fast"}
    sources |= {"last": "baseline"}
    first = {"baseline": 1.0, "fast": 0.5, "slow": 0.9, "chained": 0.45, "last": 0.3}
    second = {"baseline": 0.8, "fast": 0.6, "slow": 0.5, "chained": 0.40}
    rows = {name: _row(name, p50) for name, p50 in first.items()}
    asked: list[str] = []

    def measure(name: str) -> BenchmarkRow:
        asked.append(name)
        return _row(name, second[name])

    measure_again(rows, list(first), sources, measure, below_speedup=1.25)
    # fast: a reference (chained's source); slow: 1.11x vs baseline; chained: 1.11x vs its
    # source though 2.2x vs the baseline; last: 3.3x, measured once
    assert asked == ["baseline", "fast", "slow", "chained"]
    assert {n: r.p50_ms for n, r in rows.items()} == {
        "baseline": 0.8,
        "fast": 0.5,
        "slow": 0.5,
        "chained": 0.40,
        "last": 0.3,
    }

    asked.clear()
    rows = {name: _row(name, p50) for name, p50 in first.items()}
    measure_again(rows, list(first), sources, measure, below_speedup=None)
    assert asked == ["baseline", "fast"]
