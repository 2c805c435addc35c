"""The variant gates: one row per variant (accuracy, upper bound of the paired accuracy drop, worst
per-class drop, agreement with the baseline, size, p50 latency, and how much it beats what it came
from) checked against `gates.for_variant` as a Great Expectations suite, and each verdict's words
for the review.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.arrays import Array
from tasks.benchmark import BenchmarkRow
from tasks.config import GatesConfig, VariantGates
from tasks.errors import DataError
from tasks.expectations import (
    Check,
    GxRunner,
    Rule,
    SuiteResult,
    at_least,
    at_most,
    suite_result,
)
from tasks.review import GateVerdict
from tasks.speed import SpeedRatio
from tasks.statistics import (
    paired_drop_interval,
    worst_class_drop_bound,
)
from tasks.variant import BASELINE

if TYPE_CHECKING:
    import pandas as pd

    from tasks.evaluate import VariantMetrics

STATUS_CHECK = "status == ok"
PAIRED_COLUMNS = ("drop_upper", "worst_class_drop_upper")  # bounds of a drop against the baseline


def gate_variants(
    metrics: dict[str, dict[str, Any]],
    predictions: dict[str, Array],
    latency_p50_ms: dict[str, dict[str, float]],
    gates: GatesConfig,
    docs_dir: Path | None = None,
    ratios: Ratios | None = None,
    selection: bool = False,
) -> dict[str, SuiteResult]:
    """One GX suite per evaluated variant (baseline included) against its gates.

    `metrics` are rows of metrics/variants.json; `predictions` holds "labels" and
    "pred__<variant>"; `latency_p50_ms` is variant → runner → p50 of the runners that measured
    it. `max_p50_ms` judges the slowest runner (a budget must hold everywhere it runs).
    `ratios` (speed_evidence) hold each variant's same-session speed against its references:
    a variant timed with none of them can beat what it came from only by size.
    `selection`: the drop gates read point estimates (variant_frame), for ranking a search's
    trials on its selection split; every gate a published variant passes reads the bounds.
    Variants whose status is not "ok" fail a "status == ok" check without running GX.
    With `docs_dir`, the suites' results become an HTML Data Docs site there (index.html);
    the folder belongs to this call (see check_data).
    """
    labels = _prediction(predictions, "labels")
    base_pred = _prediction(predictions, f"pred__{BASELINE}")
    runner: GxRunner | None = None
    results: dict[str, SuiteResult] = {}
    for name, row in metrics.items():
        if row.get("status") != "ok":
            results[name] = _not_ok(name)
            continue
        runner = runner or GxRunner(docs_dir)
        p50s = latency_p50_ms.get(name, {})
        frame = variant_frame(
            row,
            labels,
            base_pred,
            _prediction(predictions, f"pred__{name}"),
            max(p50s.values()) if p50s else None,
            gates.confidence,
            selection,
        )
        limits = gates.for_variant(name)
        rules = _variant_rules(limits, has_latency=bool(p50s))
        if selection:
            rules = [_as_point_estimate(rule) for rule in rules]
        if name == BASELINE:  # compared with itself: no drop to bound
            rules = [rule for rule in rules if rule.column not in PAIRED_COLUMNS]
        for column, gain, rule in _improvement_rules(name, metrics, ratios or {}, limits):
            frame[column] = gain
            rules.append(rule)
        results[name] = suite_result(
            _variant_suite(name), runner.run(_variant_suite(name), frame, rules)
        )
    if runner is not None:
        runner.build_docs()
    return results


def variant_frame(
    row: dict[str, Any],
    labels: Array,
    base_pred: Array,
    pred: Array,
    p50_ms: float | None,
    confidence: float,
    selection: bool = False,
) -> pd.DataFrame:
    """The one-row dataframe a variant suite validates; a missing metric becomes NaN (fails).

    `selection`: the drops are point estimates, not upper bounds. A search ranks its trials on
    the selection split (val) this way and certifies only its pick, on the test split."""
    import pandas as pd

    point, _, drop_upper = paired_drop_interval(labels, base_pred, pred, confidence)
    _, worst_point, worst_upper = worst_class_drop_bound(labels, base_pred, pred, confidence)
    if selection:
        drop_upper, worst_upper = point, worst_point
    values = {
        "accuracy": row.get("accuracy"),
        "drop_upper": drop_upper,
        "worst_class_drop_upper": worst_upper,
        "agreement": row.get("agreement"),
        "size_bytes": row.get("size_bytes"),
        "p50_ms": p50_ms,
    }
    return pd.DataFrame([{k: np.nan if v is None else float(v) for k, v in values.items()}])


def _variant_rules(gates: VariantGates, has_latency: bool) -> list[Rule]:
    candidates = [
        ("accuracy >= min_accuracy", "accuracy", gates.min_accuracy, at_least),
        ("drop_upper <= max_accuracy_drop", "drop_upper", gates.max_accuracy_drop, at_most),
        (
            "worst_class_drop_upper <= max_worst_class_drop",
            "worst_class_drop_upper",
            gates.max_worst_class_drop,
            at_most,
        ),
        ("agreement >= min_agreement", "agreement", gates.min_agreement, at_least),
        ("size_bytes <= max_size_bytes", "size_bytes", gates.max_size_bytes, at_most),
        ("p50_ms <= max_p50_ms", "p50_ms", gates.max_p50_ms if has_latency else None, at_most),
    ]
    return [
        make(name, column, limit) for name, column, limit, make in candidates if limit is not None
    ]


def _as_point_estimate(rule: Rule) -> Rule:
    if rule.column not in PAIRED_COLUMNS:
        return rule
    point = rule.name.replace("_upper", "").replace(" <=", " (point estimate) <=")
    return replace(rule, name=point)


Ratios = dict[str, dict[str, dict[str, SpeedRatio]]]  # variant → runner → reference → ratio


def speed_evidence(bench: list[BenchmarkRow]) -> tuple[dict[str, dict[str, float]], Ratios]:
    """From benchmark rows: variant → runner → p50 (for p50 budgets), and variant → runner →
    reference → its same-session speed ratio (for every faster/slower judgment)."""
    p50: dict[str, dict[str, float]] = {}
    ratios: Ratios = {}
    for row in bench:
        if row.status == "ok" and row.p50_ms is not None:
            p50.setdefault(row.variant, {})[row.runner] = row.p50_ms
        if row.status == "ok" and row.versus:
            ratios.setdefault(row.variant, {})[row.runner] = dict(row.versus)
    return p50, ratios


def _improvement_rules(
    name: str, metrics: dict[str, dict[str, Any]], ratios: Ratios, gates: VariantGates
) -> list[tuple[str, float, Rule]]:
    """(column, value, rule) for each variant `name` must beat: the baseline, and for a
    combination its source as well (pruned_int8 must beat pruned, not only the baseline):
    a gain (min_speedup or min_size_reduction) and not measurably slower than max_slowdown.

    Speed is judged only on the two models timed interleaved in one session (tasks/speed.py):
    "faster" on the slow end of the ratio's interval, "slower" on its fast end. Timings taken
    apart are no evidence either way; such a variant is judged on size, and the reason says so.
    The baseline is exempt, and so is a source that was not built (nothing to compare with).
    """
    if name == BASELINE:
        return []
    source = metrics[name].get("source")
    references = [(BASELINE, "vs_baseline", BASELINE)]
    if source not in (None, BASELINE) and metrics.get(source, {}).get("status") == "ok":
        references.append((source, "vs_source", f"its source {source}"))
    rules = []
    for reference, suffix, label in references:
        timed = {
            runner: by_reference[reference]
            for runner, by_reference in ratios.get(name, {}).items()
            if reference in by_reference
        }
        slowdown = measured_slowdown(timed)
        if gates.max_slowdown is not None and slowdown is not None:
            runner, ratio = slowdown
            text = f"{ratio.describe(runner)}, allowed {gates.max_slowdown:g}x"
            check = f"not measurably slower than {label} (max_slowdown)"
            rule = at_most(check, f"slowdown_{suffix}", gates.max_slowdown)
            rules.append((f"slowdown_{suffix}", ratio.low, replace(rule, explanation=text)))
        if gates.min_speedup is None and gates.min_size_reduction is None:
            continue
        gain, detail = improvement(
            reference,
            timed,
            metrics[name].get("size_bytes"),
            metrics[reference].get("size_bytes"),
            gates,
            metrics[name].get("compressed_size_bytes"),
            metrics[reference].get("compressed_size_bytes"),
        )
        check = f"beats {label} (min_speedup or min_size_reduction)"
        column = f"gain_{suffix}"
        rules.append((column, gain, replace(at_least(check, column, 1.0), explanation=detail)))
    return rules


def measured_slowdown(timed: dict[str, SpeedRatio]) -> tuple[str, SpeedRatio] | None:
    """(runner, ratio) where the variant is most surely slower: the highest fast end of the
    ratio's interval (above 1: measurably slower there); None when timed on no runner."""
    if not timed:
        return None
    runner = max(timed, key=lambda r: (timed[r].low, r))
    return runner, timed[runner]


def improvement(
    reference: str,
    timed: dict[str, SpeedRatio],
    size: int | None,
    reference_size: int | None,
    gates: VariantGates,
    compressed: int | None = None,
    reference_compressed: int | None = None,
) -> tuple[float, str]:
    """How far a variant beats `reference`: (gain, what was found), gain >= 1 meaning it does.

    gain is the better of (the slow end of the speedup's interval on the runner where it is
    highest / min_speedup) and (size reduction / min_size_reduction); a threshold set to null, a
    size not known or no same-session timing leave that side out (0 when neither side can be
    judged). The size reduction is the better of the files' and their zstd-compressed sizes':
    weight sharing (clustering, Deep Compression) keeps the file as large and shrinks what a
    device downloads.
    """
    gains, parts = [0.0], []
    if gates.min_speedup is not None:
        if timed:
            runner = max(timed, key=lambda r: (timed[r].speedup[1], r))
            surely = timed[runner].speedup[1]
            gains.append(surely / gates.min_speedup)
            needs = "" if surely >= gates.min_speedup else f", needs {gates.min_speedup:g}x"
            parts.append(timed[runner].describe(runner) + needs)
        else:
            parts.append(f"not timed together with {reference} on any runner (judged on size only)")
    if gates.min_size_reduction is not None:
        if size and reference_size:
            reduction, over_the_air = reference_size / size, ""
            if (
                compressed
                and reference_compressed
                and reference_compressed / compressed > reduction
            ):
                reduction, over_the_air = reference_compressed / compressed, "compressed (zstd) "
            gains.append(reduction / gates.min_size_reduction)
            parts.append(over_the_air + _size_text(reduction, gates.min_size_reduction))
        else:
            parts.append("size unknown")
    return max(gains), " and ".join(parts)


def _size_text(reduction: float, needed: float) -> str:
    if reduction < 1:
        return f"{_times(1 / reduction)} larger"
    if reduction < needed:
        return f"only {_times(reduction)} smaller, needs {needed:g}x"
    return f"{_times(reduction)} smaller"


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 2 else f"{ratio:.1f}x"


def _variant_suite(name: str) -> str:
    return f"variant.{name}"


def _not_ok(name: str) -> SuiteResult:
    check = Check(
        name=STATUS_CHECK,
        expectation="not_run",
        column="status",
        success=False,
        observed=None,
        threshold=None,
    )
    return SuiteResult(suite=_variant_suite(name), success=False, checks=[check])


def _prediction(predictions: dict[str, Array], key: str) -> Array:
    if key not in predictions:
        raise DataError(
            f"predictions: no {key!r} (found {sorted(predictions)}); run the 'evaluate' stage first"
        )
    return np.asarray(predictions[key])


def judge_variants(
    table: dict[str, VariantMetrics],
    predictions_file: Path,
    bench: list[BenchmarkRow],
    gates: GatesConfig,
    docs_dir: Path,
) -> dict[str, GateVerdict]:
    """Each variant's verdict for the review: its metrics suite (with the paired statistical
    drop gate) and the bound the drop gate judged."""
    metrics = {name: asdict(row) for name, row in table.items()}  # rows as variants.json has them
    from tasks.evaluate import read_predictions  # the runtimes: only when judging a run

    predictions = read_predictions(predictions_file)
    p50, ratios = speed_evidence(bench)
    results = gate_variants(metrics, predictions, p50, gates, docs_dir, ratios)
    uppers = {  # the bound the drop gate judges, shown to the reviewer
        name: paired_drop_interval(
            predictions["labels"],
            predictions["pred__baseline"],
            predictions[f"pred__{name}"],
            gates.confidence,
        )[2]
        for name in results
        if name != BASELINE and f"pred__{name}" in predictions and metrics[name]["status"] == "ok"
    }
    return {
        name: _verdict(result, metrics[name], uppers.get(name), speed_words(ratios.get(name, {})))
        for name, result in results.items()
    }


def speed_words(by_runner: dict[str, dict[str, SpeedRatio]]) -> str:
    """Every same-session speed claim of a variant, one clause per runner and reference."""
    return "; ".join(
        ratio.describe(runner)
        for runner, by_reference in sorted(by_runner.items())
        for ratio in by_reference.values()
    )


def _verdict(
    result: SuiteResult, row: dict[str, Any], drop_upper: float | None, speed: str
) -> GateVerdict:
    if row["status"] != "ok":  # skipped/failed variants: their own reason says more than the gate
        return GateVerdict(False, f"{row['status']}: {row.get('reason')}")
    reason = "" if result.success else result.describe()
    return GateVerdict(result.success, reason, drop_upper, speed)
