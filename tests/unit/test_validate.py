"""validate: real Great Expectations runs on small data, and the paired statistics by hand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tasks.benchmark import BenchmarkRow
from tasks.config import DataConfig, DataGates, GatesConfig
from tasks.data import PreparedData, Split, prepare
from tasks.data_checks import DataValidationError, assert_data_valid, check_data, evidence_needs
from tasks.errors import DataError
from tasks.evaluate import VariantMetrics
from tasks.expectations import Check, SuiteResult
from tasks.speed import SpeedRatio
from tasks.statistics import critical_value, paired_drop_interval, worst_class_drop_bound
from tasks.variant_gates import STATUS_CHECK, Ratios, gate_variants, judge_variants

NUM_CLASSES = 10
PER_CLASS = 30  # 300 test samples


@pytest.fixture(scope="module")
def digits() -> PreparedData:
    return prepare(DataConfig(image_size=8), seed=0)


def _replace(prepared: PreparedData, name: str, x: np.ndarray, y: np.ndarray) -> dict[str, Split]:
    return {**prepared.splits, name: Split(x=x, y=y)}


def _failing_names(result: SuiteResult) -> list[str]:
    return [check.name for check in result.failures]


# ---- data suite --------------------------------------------------------------------------------


def test_clean_digits_pass(digits: PreparedData) -> None:
    result = check_data(digits.splits, digits.preprocess, DataGates())
    assert result.success, result.describe()
    assert result.suite == "data"
    checks = {check.name: check for check in result.checks}
    assert checks["nan_count == 0"].observed == 0
    assert checks["train samples per class >= min_samples_per_class"].observed >= 100
    assert checks["test split non-empty"].observed == len(digits.splits["test"])
    assert all(check.expectation.startswith("expect_") for check in result.checks)
    assert_data_valid(result)  # does not raise


def _nan_pixel(prepared: PreparedData) -> dict[str, Split]:
    train = prepared.splits["train"]
    x = train.x.copy()
    x[3, 0, 2, 2] = np.nan
    return _replace(prepared, "train", x, train.y)


def _label_out_of_range(prepared: PreparedData) -> dict[str, Split]:
    test = prepared.splits["test"]
    y = test.y.copy()
    y[0] = NUM_CLASSES + 2
    return _replace(prepared, "test", test.x, y)


def _wrong_height(prepared: PreparedData) -> dict[str, Split]:
    val = prepared.splits["val"]
    x = np.zeros((len(val), 1, 9, 8), dtype=np.float32)
    return _replace(prepared, "val", x, val.y)


def _keep_of_class(prepared: PreparedData, label: int, keep: int) -> dict[str, Split]:
    train = prepared.splits["train"]
    in_class = np.flatnonzero(train.y == label)
    mask = np.ones(len(train), dtype=bool)
    mask[in_class[keep:]] = False
    return _replace(prepared, "train", train.x[mask], train.y[mask])


def _empty_split(prepared: PreparedData) -> dict[str, Split]:
    calib = prepared.splits["calib"]
    return _replace(prepared, "calib", calib.x[:0], calib.y[:0])


@pytest.mark.parametrize(
    ("corrupt", "failing"),
    [
        (_nan_pixel, "nan_count == 0"),
        (_label_out_of_range, "label in range(num_classes)"),
        (_wrong_height, "height == image_size"),
        # 2 samples of class 3 (min 5); the imbalance check fails too.
        (
            lambda p: _keep_of_class(p, 3, 2),
            "train samples per class >= min_samples_per_class",
        ),
        # 6 samples of class 3 against ~108: enough samples, but imbalance ~18 > 10.
        (lambda p: _keep_of_class(p, 3, 6), "train class imbalance <= max_class_imbalance"),
        (_empty_split, "calib split non-empty"),
    ],
    ids=["nan_pixel", "label_out_of_range", "wrong_height", "too_few", "imbalance", "empty"],
)
def test_broken_data_fails_naming_the_check(
    digits: PreparedData, corrupt: Callable[[PreparedData], dict[str, Split]], failing: str
) -> None:
    result = check_data(corrupt(digits), digits.preprocess, DataGates())
    assert not result.success
    assert failing in _failing_names(result)
    assert failing in result.describe()
    with pytest.raises(DataValidationError, match=r"data: \d+ check\(s\) failed"):
        assert_data_valid(result)


def test_imbalance_is_the_only_failure_with_enough_samples(digits: PreparedData) -> None:
    splits = _keep_of_class(digits, 3, 6)
    result = check_data(splits, digits.preprocess, DataGates())
    assert _failing_names(result) == ["train class imbalance <= max_class_imbalance"]
    (check,) = result.failures
    assert check.observed == pytest.approx(np.bincount(splits["train"].y).max() / 6)
    assert check.threshold == 10.0
    assert "vs threshold 10" in result.describe()


def test_wrong_height_reports_violating_samples(digits: PreparedData) -> None:
    result = check_data(_wrong_height(digits), digits.preprocess, DataGates())
    assert _failing_names(result) == ["height == image_size"]
    assert result.failures[0].observed == len(digits.splits["val"])


def test_check_data_without_train_split_is_a_user_error(digits: PreparedData) -> None:
    with pytest.raises(DataError, match="expected at least 'train'"):
        check_data({"test": digits.splits["test"]}, digits.preprocess, DataGates())


# ---- statistics --------------------------------------------------------------------------------


def _labels() -> np.ndarray:
    return np.repeat(np.arange(NUM_CLASSES), PER_CLASS)


def _wrong_at(labels: np.ndarray, indices: list[int] | range | np.ndarray) -> np.ndarray:
    pred = labels.copy()
    pred[list(indices)] = (labels[list(indices)] + 1) % NUM_CLASSES
    return pred


def _pairs(b: int, c: int, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """b samples only the baseline gets right, c only the variant; spread over classes."""
    labels = np.arange(n) % NUM_CLASSES
    base = _wrong_at(labels, range(b, b + c))
    variant = _wrong_at(labels, range(b))
    return labels, base, variant


def test_identical_predictions_still_leave_a_drop_possible() -> None:
    # b = c = 0: Tango's bound has the closed form z^2 / (n + z^2): 300 images that agree
    # everywhere cannot rule out a drop of 1.26 points (the old conditional bound said 0)
    labels = _labels()
    pred = _wrong_at(labels, [0, 5, 40])
    point, lower, upper = paired_drop_interval(labels, pred, pred)
    z2 = critical_value(0.95) ** 2
    assert point == 0.0
    assert upper == pytest.approx(100.0 * z2 / (300 + z2), rel=1e-9)
    assert lower == pytest.approx(-upper, rel=1e-9)


def test_three_losses_no_gains_bound_sits_where_the_score_crosses() -> None:
    point, lower, upper = paired_drop_interval(*_pairs(b=3, c=0))
    assert point == pytest.approx(1.0)
    # above the old conditional bound, (b + c) / n = 1 point, which took b + c as known
    assert lower < point < 1.0 + 0.5 < upper < 3.0
    # at the bound, Tango's score (b - c - n d) / sqrt(n (2 q + d (1 - d))) equals -z, q the
    # constrained estimate of the c-type rate: with c = 0 it is 0 above d = 0
    d = upper / 100.0
    score = (3 - 300 * d) / np.sqrt(300 * d * (1 - d))
    assert score == pytest.approx(-critical_value(0.95), rel=1e-6)


def test_large_real_regression_excludes_zero() -> None:
    point, lower, upper = paired_drop_interval(*_pairs(b=30, c=2))
    assert point == pytest.approx(100.0 * 28 / 300)
    assert 0.0 < lower < point < upper


def test_interval_narrows_with_lower_confidence() -> None:
    _, lower95, upper95 = paired_drop_interval(*_pairs(b=5, c=3), confidence=0.95)
    _, lower80, upper80 = paired_drop_interval(*_pairs(b=5, c=3), confidence=0.80)
    assert lower95 < lower80 < upper80 < upper95


def test_paired_arrays_must_match() -> None:
    with pytest.raises(DataError, match="same non-zero number"):
        paired_drop_interval(np.zeros(3), np.zeros(3), np.zeros(4))


def test_worst_class_drop_picks_the_class() -> None:
    labels = _labels()
    base = _wrong_at(labels, [0])  # class 0: baseline 29/30
    class_7 = np.flatnonzero(labels == 7)[:6]
    class_2 = np.flatnonzero(labels == 2)[:3]
    variant = _wrong_at(labels, [*class_7, *class_2])  # class 0 improves by one sample
    worst, drop, upper = worst_class_drop_bound(labels, base, variant)
    assert worst == 7
    assert drop == pytest.approx(100.0 * 6 / 30)
    assert upper > drop


def test_worst_class_bound_reflects_the_class_size() -> None:
    # one image lost in a class of 30 bounds that class's drop far above 1/30
    labels = _labels()
    variant = _wrong_at(labels, [np.flatnonzero(labels == 4)[0]])
    worst, drop, upper = worst_class_drop_bound(labels, labels, variant)
    assert (worst, drop) == (4, pytest.approx(100.0 / 30))
    assert upper > 15.0


def test_worst_class_drop_is_negative_when_every_class_improves() -> None:
    labels = _labels()
    base = _wrong_at(labels, np.flatnonzero(labels % 2 == 0)[::10])
    worst, drop, _ = worst_class_drop_bound(labels, base, labels)
    assert drop <= 0.0
    assert worst in range(NUM_CLASSES)


def test_a_test_split_too_small_for_the_gates_fails_the_data_suite(digits: PreparedData) -> None:
    gates = GatesConfig.model_validate(
        {
            "defaults": {"max_accuracy_drop": 1.0, "max_worst_class_drop": 6.0},
            "per_variant": {"loose": {"max_accuracy_drop": 3.0}},
        }
    )
    needs = evidence_needs(gates, ["loose", "tight"])
    assert [(n.column, n.samples) for n in needs] == [
        ("test_samples", 381),
        ("test_min_class_count", 61),
    ]
    assert "max_accuracy_drop 1 point(s) of tight" in needs[0].gate
    result = check_data(digits.splits, digits.preprocess, DataGates(), needs=needs)
    test = digits.splits["test"]
    assert len(test) < 381
    assert not result.success
    failed = {check.column: check for check in result.failures}
    assert failed["test_samples"].observed == len(test)
    assert "needs at least 381 images" in result.describe()
    assert "smallest test class" in result.describe()
    # a gate the split can certify passes
    only_loose = evidence_needs(gates, ["loose"])[:1]
    assert only_loose[0].samples < len(test)
    ok = check_data(digits.splits, digits.preprocess, DataGates(), needs=only_loose)
    assert ok.success, ok.describe()


# ---- variant gates -----------------------------------------------------------------------------


def _row(labels: np.ndarray, base: np.ndarray, pred: np.ndarray, size: int = 1000) -> dict:
    return {
        "status": "ok",
        "accuracy": float(np.mean(pred == labels)),
        "accuracy_drop": 100.0 * float(np.mean(base == labels) - np.mean(pred == labels)),
        "agreement": float(np.mean(pred == base)),
        "size_bytes": size,
    }


def _inputs(variants: dict[str, np.ndarray]) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Metrics rows and predictions for a baseline wrong on 10 of 300 samples plus `variants`."""
    labels = _labels()
    base = _wrong_at(labels, range(0, 300, 30))  # one per class, 290/300
    preds = {"baseline": base, **variants}
    metrics = {name: _row(labels, base, pred) for name, pred in preds.items()}
    predictions = {"labels": labels, **{f"pred__{name}": p for name, p in preds.items()}}
    return metrics, predictions


def _metrics_of(row: dict) -> VariantMetrics:
    """A variants.json row as the evaluator's record (the fields gate_variants reads)."""
    known = {f for f in VariantMetrics.__dataclass_fields__}
    base = dict.fromkeys(known)
    return VariantMetrics(**(base | {k: v for k, v in row.items() if k in known}))


def _baseline_pred() -> np.ndarray:
    return _wrong_at(_labels(), range(0, 300, 30))


# Tests of the accuracy gates: variants as big as the baseline and not benchmarked, so the
# "beats baseline" gate (tested on its own below) is off.
NO_BEAT = {"min_speedup": None, "min_size_reduction": None, "max_slowdown": None}


# 300 test images (30 a class) can certify a 1.5-point drop and a 12-point class drop at best
ROOMY = {"max_accuracy_drop": 1.5, "max_worst_class_drop": 12.0}


def _roomy() -> GatesConfig:
    """The default gates, with the drop bounds 300 images can certify."""
    return GatesConfig.model_validate({"defaults": ROOMY})


def _gates(**defaults: object) -> GatesConfig:
    return GatesConfig.model_validate({"defaults": NO_BEAT | ROOMY | defaults})


def test_variant_equal_to_baseline_passes() -> None:
    metrics, predictions = _inputs({"same": _baseline_pred()})
    results = gate_variants(metrics, predictions, {}, _gates())
    assert set(results) == {"baseline", "same"}
    for result in results.values():
        assert result.success, result.describe()
    names = [check.name for check in results["same"].checks]
    assert names == [
        "accuracy >= min_accuracy",
        "drop_upper <= max_accuracy_drop",
        "worst_class_drop_upper <= max_worst_class_drop",
        "agreement >= min_agreement",
    ]  # size and latency have no threshold by default; p50 unknown
    drop = {c.name: c for c in results["same"].checks}["drop_upper <= max_accuracy_drop"]
    assert drop.observed == pytest.approx(100 * critical_value(0.95) ** 2 / 303.84, rel=1e-3)
    # the baseline is compared with itself: no drop bound is judged
    assert "drop_upper <= max_accuracy_drop" not in _failing_names(results["baseline"])
    assert all(c.column not in ("drop_upper",) for c in results["baseline"].checks)


def test_variant_below_accuracy_floor_is_rejected() -> None:
    poor = _wrong_at(_labels(), range(0, 300, 7))  # 43 wrong → 0.857
    metrics, predictions = _inputs({"poor": poor})
    result = gate_variants(metrics, predictions, {}, _gates())["poor"]
    assert not result.success
    assert "accuracy >= min_accuracy" in _failing_names(result)
    assert "min_accuracy" in result.describe()
    accuracy = {c.name: c for c in result.checks}["accuracy >= min_accuracy"]
    assert accuracy.observed == pytest.approx(metrics["poor"]["accuracy"])
    assert accuracy.threshold == 0.9


def test_drop_upper_rejects_when_point_estimate_is_under_the_max() -> None:
    labels, base = _labels(), _baseline_pred()
    # b=5 losses (classes 1..5), c=3 gains (baseline's misses in classes 6..8): point drop
    # 0.67 points, under the 1.0 limit, but the 95% upper bound is about 2.5 points.
    variant = base.copy()
    variant[[31, 61, 91, 121, 151]] = (labels[[31, 61, 91, 121, 151]] + 1) % NUM_CLASSES
    variant[[180, 210, 240]] = labels[[180, 210, 240]]
    metrics, predictions = _inputs({"lucky": variant})
    assert metrics["lucky"]["accuracy_drop"] == pytest.approx(200 / 300)
    point, _, upper = paired_drop_interval(labels, base, variant)
    assert point < 1.5 < upper
    # one image lost in a class of 30: the class gate is not the subject here
    result = gate_variants(metrics, predictions, {}, _gates(max_worst_class_drop=None))["lucky"]
    assert _failing_names(result) == ["drop_upper <= max_accuracy_drop"]
    assert result.failures[0].observed == pytest.approx(upper)
    assert "max_accuracy_drop" in result.describe()


def test_per_variant_override_applies() -> None:
    same = _baseline_pred()
    metrics, predictions = _inputs({"big": same, "roomy": same, "loose": same})
    gates = GatesConfig.model_validate(
        {
            "defaults": NO_BEAT | ROOMY | {"max_size_bytes": 500},
            "per_variant": {"roomy": {"max_size_bytes": 5000}, "loose": {"min_accuracy": None}},
        }
    )
    results = gate_variants(metrics, predictions, {}, gates)
    assert _failing_names(results["big"]) == ["size_bytes <= max_size_bytes"]
    assert results["roomy"].success
    size = {c.name: c for c in results["roomy"].checks}["size_bytes <= max_size_bytes"]
    assert (size.observed, size.threshold) == (1000, 5000)
    assert "accuracy >= min_accuracy" not in [c.name for c in results["loose"].checks]


def test_latency_checked_only_when_known() -> None:
    same = _baseline_pred()
    metrics, predictions = _inputs({"slow": same, "unmeasured": same})
    gates = _gates(max_p50_ms=2.0)
    p50 = {"baseline": {"cpu": 1.5}, "slow": {"cpu": 1.0, "edge": 3.5}}  # the slowest runner counts
    results = gate_variants(metrics, predictions, p50, gates)
    assert results["baseline"].success
    assert _failing_names(results["slow"]) == ["p50_ms <= max_p50_ms"]
    assert "observed 3.5 vs threshold 2" in results["slow"].describe()
    assert results["unmeasured"].success
    assert "p50_ms <= max_p50_ms" not in [c.name for c in results["unmeasured"].checks]


def test_skipped_or_failed_variant_is_rejected() -> None:
    metrics, predictions = _inputs({})
    metrics["tensorrt_fp16"] = {"status": "skipped", "reason": "no CUDA device"}
    metrics["pruned"] = {"status": "failed", "reason": "unsupported layer"}
    results = gate_variants(metrics, predictions, {}, GatesConfig())
    assert results["baseline"].success
    for name in ("tensorrt_fp16", "pruned"):
        result = results[name]
        assert not result.success
        assert result.checks == [Check(STATUS_CHECK, "not_run", "status", False, None, None)]
        assert STATUS_CHECK in result.describe()


def test_missing_predictions_is_a_user_error() -> None:
    metrics, predictions = _inputs({"same": _baseline_pred()})
    del predictions["pred__same"]
    with pytest.raises(DataError, match="pred__same"):
        gate_variants(metrics, predictions, {}, _gates())


# ---- beats what it came from -------------------------------------------------------------------

BASE_P50 = {"edge-cpu": 0.48, "cloud-cpu": 0.30}
Evidence = tuple[dict[str, dict], dict[str, np.ndarray], dict[str, dict[str, float]], Ratios]


def _timed(
    p50: float, reference_p50: float, reference: str = "baseline", spread: float = 0.03
) -> SpeedRatio:
    """A same-session ratio p50 / reference_p50 whose interval is +-spread around it."""
    ratio = p50 / reference_p50
    return SpeedRatio(
        reference, ratio, ratio * (1 - spread), ratio * (1 + spread), 6, p50, reference_p50
    )


def _beat_inputs(
    sizes: dict[str, int], p50: dict[str, dict[str, float]], spread: float = 0.03
) -> Evidence:
    """Variants as accurate as the baseline (1000 bytes), with the given sizes and latencies,
    each timed against the baseline in one session (interval +-spread)."""
    metrics, predictions = _inputs(dict.fromkeys(sizes, _baseline_pred()))
    for name, size in sizes.items():
        metrics[name]["size_bytes"] = size
    ratios: Ratios = {
        name: {
            runner: {"baseline": _timed(ms, BASE_P50[runner], spread=spread)}
            for runner, ms in by_runner.items()
        }
        for name, by_runner in p50.items()
    }
    return metrics, predictions, {"baseline": BASE_P50} | p50, ratios


def _beat_check(result: SuiteResult, reference: str = "baseline") -> Check:
    label = "beats baseline" if reference == "baseline" else f"beats its source {reference}"
    return {c.name.split(" (")[0]: c for c in result.checks}[label]


SLOWER = "not measurably slower than baseline (max_slowdown)"


def test_slower_everywhere_and_barely_smaller_is_rejected_with_the_reason() -> None:
    metrics, predictions, p50, ratios = _beat_inputs(
        {"int8": 935}, {"int8": {"edge-cpu": 1.07, "cloud-cpu": 0.90}}
    )
    results = gate_variants(metrics, predictions, p50, _roomy(), None, ratios)
    result = results["int8"]
    assert _failing_names(result) == [
        SLOWER,
        "beats baseline (min_speedup or min_size_reduction)",
    ]
    # the slowdown judged is the fast end of the interval where it is highest (cloud-cpu)
    slower = {c.name: c for c in result.checks}[SLOWER]
    assert slower.observed == pytest.approx(3.0 * 0.97)
    assert "on cloud-cpu 3.0x slower than baseline (2.91-3.09x, 0.9 vs 0.3 ms p50" in (
        result.describe()
    )
    assert "allowed 1.05x" in result.describe()
    # edge-cpu is where its speedup is highest (it is slower there too) and it is barely smaller
    assert "on edge-cpu 2.2x slower than baseline" in _beat_check(result).explanation
    assert "only 1.07x smaller, needs 1.5x" in result.describe()
    assert _beat_check(result).observed == pytest.approx((1000 / 935) / 1.5)
    assert results["baseline"].success  # the baseline is exempt
    assert "beats baseline" not in str([c.name for c in results["baseline"].checks])


def test_faster_is_judged_on_the_slow_end_of_the_interval() -> None:
    metrics, predictions, p50, ratios = _beat_inputs(
        {"fast": 1000}, {"fast": {"edge-cpu": 0.40, "cloud-cpu": 0.30}}
    )
    result = gate_variants(metrics, predictions, p50, _roomy(), None, ratios)["fast"]
    assert result.success, result.describe()
    # 1.2x faster on edge-cpu, but only 1.2 / 1.03 of it is certain
    assert _beat_check(result).observed == pytest.approx((0.48 / 0.40) / 1.03 / 1.1)
    assert _beat_check(result).explanation.startswith("on edge-cpu 1.20x faster than baseline")


def test_a_gain_the_interval_cannot_tell_from_noise_is_not_claimed() -> None:
    # the issue's search pick: 1 % faster (0.0313 vs 0.0316 ms) on a +-3 % interval
    metrics, predictions = _inputs({"pick": _baseline_pred()})
    ratios: Ratios = {"pick": {"edge-cpu": {"baseline": _timed(0.0313, 0.0316)}}}
    p50 = {"baseline": {"edge-cpu": 0.0316}, "pick": {"edge-cpu": 0.0313}}
    gates = GatesConfig.model_validate({"defaults": ROOMY | {"min_speedup": 1.0}})
    result = gate_variants(metrics, predictions, p50, gates, None, ratios)["pick"]
    assert not result.success
    assert _beat_check(result).observed < 1.0
    assert "not distinguishable in speed from baseline" in _beat_check(result).explanation
    # and p50 rows taken apart, with no same-session timing, claim nothing at all
    apart = gate_variants(metrics, predictions, p50, gates)["pick"]
    assert "not timed together with baseline on any runner" in apart.describe()


def test_measurably_slower_but_smaller_is_rejected_unless_max_slowdown_allows_it() -> None:
    """The issue's DenseNet-style onnx_int8: 1.12x slower on both runners, with intervals that
    do not overlap, was approved under a fixed 1.25x margin with no mention of it."""
    metrics, predictions, p50, ratios = _beat_inputs(
        {"small": 250}, {"small": {"edge-cpu": 0.48 * 1.12, "cloud-cpu": 0.30 * 1.12}}
    )
    result = gate_variants(metrics, predictions, p50, _roomy(), None, ratios)["small"]
    assert _failing_names(result) == [SLOWER]
    assert "1.12x slower than baseline" in result.describe()
    assert _beat_check(result).success and "and 4.0x smaller" in _beat_check(result).explanation
    roomier = GatesConfig.model_validate({"defaults": ROOMY | {"max_slowdown": 1.25}})
    result = gate_variants(metrics, predictions, p50, roomier, None, ratios)["small"]
    assert result.success, result.describe()
    slow_ok = GatesConfig.model_validate({"defaults": ROOMY | {"max_slowdown": None}})
    assert gate_variants(metrics, predictions, p50, slow_ok, None, ratios)["small"].success


def test_a_measurably_slower_variant_that_passes_says_so_in_its_verdict(tmp_path: Path) -> None:
    metrics, predictions, _, ratios = _beat_inputs(
        {"small": 250}, {"small": {"edge-cpu": 0.48 * 1.12}}
    )
    predictions_file = tmp_path / "predictions.npz"
    np.savez(predictions_file, **predictions)
    bench = [
        BenchmarkRow("baseline", "edge-cpu", "ok", p50_ms=0.48),
        BenchmarkRow(
            "small", "edge-cpu", "ok", p50_ms=0.48 * 1.12, versus=ratios["small"]["edge-cpu"]
        ),
    ]
    table = {name: _metrics_of(row) for name, row in metrics.items()}
    gates = GatesConfig.model_validate({"defaults": ROOMY | {"max_slowdown": 1.25}})
    verdicts = judge_variants(table, predictions_file, bench, gates, tmp_path / "docs")
    assert verdicts["small"].passed, verdicts["small"].reason
    assert verdicts["small"].speed.startswith("on edge-cpu 1.12x slower than baseline (1.09-1.15x")


def test_unbenchmarked_variant_is_judged_on_size_and_says_so() -> None:
    metrics, predictions, p50, ratios = _beat_inputs({"small": 250, "same": 1000}, {})
    results = gate_variants(metrics, predictions, p50, _roomy(), None, ratios)
    assert results["small"].success, results["small"].describe()
    assert not results["same"].success
    assert (
        "not timed together with baseline on any runner (judged on size only) "
        "and only 1.00x smaller, needs 1.5x" in results["same"].describe()
    )


def test_beat_thresholds_per_variant_and_null_disables() -> None:
    slow = {"edge-cpu": 1.07, "cloud-cpu": 0.90}
    metrics, predictions, p50, ratios = _beat_inputs(
        {"int8": 935, "lenient": 935, "off": 935}, {"int8": slow, "lenient": slow, "off": slow}
    )
    gates = GatesConfig.model_validate(
        {
            "defaults": ROOMY,
            "per_variant": {
                "lenient": {"min_speedup": None, "min_size_reduction": 1.05, "max_slowdown": None},
                "off": NO_BEAT,
            },
        }
    )
    results = gate_variants(metrics, predictions, p50, gates, None, ratios)
    assert not results["int8"].success
    assert results["lenient"].success, results["lenient"].describe()
    assert _beat_check(results["lenient"]).explanation == "1.07x smaller"  # speed not gated
    assert results["off"].success
    assert not any(c.name.startswith(("beats", "not measurably")) for c in results["off"].checks)


def test_combination_must_also_beat_its_source() -> None:
    metrics, predictions, p50, ratios = _beat_inputs(
        {"pruned": 600, "pruned_int8": 560},
        {"pruned": {"edge-cpu": 0.20}, "pruned_int8": {"edge-cpu": 0.42}},
    )
    ratios["pruned_int8"]["edge-cpu"]["pruned"] = _timed(0.42, 0.20, "pruned")
    metrics["pruned"]["source"] = "baseline"
    metrics["pruned_int8"]["source"] = "pruned"
    results = gate_variants(metrics, predictions, p50, _roomy(), None, ratios)
    assert results["pruned"].success, results["pruned"].describe()
    result = results["pruned_int8"]
    assert _beat_check(result).success  # 1.79x smaller than the baseline
    assert _failing_names(result) == [
        "not measurably slower than its source pruned (max_slowdown)",
        "beats its source pruned (min_speedup or min_size_reduction)",
    ]
    assert "on edge-cpu 2.1x slower than pruned" in result.describe()
    assert "and only 1.07x smaller" in result.describe()


# ---- Data Docs ---------------------------------------------------------------------------------


def test_gate_variants_writes_data_docs(tmp_path: Path) -> None:
    metrics, predictions = _inputs({"same": _baseline_pred()})
    docs = tmp_path / "docs" / "variants"
    gate_variants(metrics, predictions, {}, _gates(), docs_dir=docs)
    index = docs / "index.html"
    assert index.is_file()
    html = index.read_text()
    assert "variant.same" in html and "variant.baseline" in html
    pages = list((docs / "validations" / "variant").rglob("*.html"))
    assert {page.relative_to(docs / "validations" / "variant").parts[0] for page in pages} == {
        "baseline",
        "same",
    }


def test_check_data_writes_data_docs(tmp_path: Path, digits: PreparedData) -> None:
    docs = tmp_path / "docs" / "data"
    result = check_data(_nan_pixel(digits), digits.preprocess, DataGates(), docs_dir=docs)
    assert not result.success
    assert (docs / "index.html").is_file()
    assert list((docs / "validations" / "data" / "samples").rglob("*.html"))
    assert list((docs / "validations" / "data" / "classes").rglob("*.html"))


def test_weight_sharing_beats_its_source_on_what_a_device_downloads() -> None:
    """A clustered model's file is as large as its source's (float32 values, shared), its
    zstd-compressed file several times smaller: judged on the file alone it was refused."""
    from tasks.config import VariantGates
    from tasks.variant_gates import improvement

    gates = VariantGates(min_speedup=1.1, min_size_reduction=2.0)
    same_speed = {"edge-cpu": _timed(1.0, 1.0)}
    gain, detail = improvement("baseline", same_speed, 1000, 1000, gates, 220, 1000)
    assert gain == pytest.approx(1000 / 220 / 2.0)
    assert "compressed (zstd) 4.5x smaller" in detail
    # the file's own reduction counts where it is the better one, and no compressed size is a
    # judgement on the files alone
    gain, detail = improvement("baseline", same_speed, 250, 1000, gates, 300, 1000)
    assert gain == pytest.approx(2.0) and "compressed" not in detail
    gain, _ = improvement("baseline", same_speed, 1000, 1000, gates)
    assert gain == pytest.approx(1 / 1.03 / 1.1)  # the slow end of the same speed


def test_a_drop_gate_of_zero_points_is_refused_before_any_work(digits: PreparedData) -> None:
    gates = GatesConfig.model_validate(
        {"defaults": {"max_accuracy_drop": 0.0, "max_worst_class_drop": None}}
    )
    needs = evidence_needs(gates, ["int8"])
    result = check_data(digits.splits, digits.preprocess, DataGates(), needs=needs)
    assert not result.success
    assert "cannot be met by any number of images" in result.describe()


def test_two_percent_slower_is_the_same_speed_and_says_so() -> None:
    """dc_clustered ran 1.02x (1.01-1.02) slower than dc_pruned, the same architecture: under
    max_slowdown 1.0 such a variant would flip between nights on cache layout."""
    metrics, predictions, p50, ratios = _beat_inputs(
        {"small": 250}, {"small": {"edge-cpu": 0.48 * 1.02}}, spread=0.01
    )
    result = gate_variants(metrics, predictions, p50, _roomy(), None, ratios)["small"]
    assert result.success, result.describe()
    assert ratios["small"]["edge-cpu"]["baseline"].verdict() == "slower"  # and it is said
