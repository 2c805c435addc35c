"""validate: Great Expectations gates on the prepared data and on every variant's metrics.

Two kinds of suite run here, both as real GX validations (ephemeral context → pandas data
source → dataframe asset → whole-dataframe batch → ExpectationSuite → ValidationDefinition →
Checkpoint):

- `check_data`: one row per sample of every split (label, pixel range, NaN count, shape, dtype)
  and one summary row of class counts (samples per class in train, class imbalance, split sizes).
- `gate_variants`: one row per variant (accuracy, upper bound of the paired accuracy drop, worst
  per-class drop, agreement with the baseline, size, p50 latency, and how much it beats what it
  came from) against `gates.for_variant`.

Great Expectations is imported lazily (its import costs seconds). GX_ANALYTICS_ENABLED defaults
to false when a context is built: these machines have no outside network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.benchmark import BenchmarkRow
from tasks.config import DataGates, GatesConfig, VariantGates
from tasks.data import SPLITS, Preprocess, Split
from tasks.errors import DataError, DataValidationError
from tasks.review import GateVerdict
from tasks.speed import SpeedRatio
from tasks.statistics import (
    UNCERTIFIABLE,
    paired_drop_interval,
    smallest_certifying_size,
    worst_class_drop_bound,
)
from tasks.variant import BASELINE

if TYPE_CHECKING:
    import pandas as pd

    from tasks.evaluate import VariantMetrics

DATA_SUITE = "data"
DOCS_SITE = "modelpress"
STATUS_CHECK = "status == ok"
PAIRED_COLUMNS = ("drop_upper", "worst_class_drop_upper")  # bounds of a drop against the baseline

Number = float | int


@dataclass(frozen=True)
class Check:
    """One expectation's outcome; `observed` and `threshold` are None where not numeric."""

    name: str  # e.g. "accuracy >= min_accuracy"
    expectation: str  # the GX expectation type, e.g. "expect_column_min_to_be_between"
    column: str
    success: bool
    observed: float | int | None
    threshold: float | int | None
    detail: str = ""  # what the numbers stand for, e.g. which classes are too small
    explanation: str | None = (
        None  # said instead of observed vs threshold where those are not enough
    )


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    success: bool
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.success]

    def describe(self) -> str:
        """One line: the suite and, for each failing check, observed vs threshold."""
        if self.success:
            return f"{self.suite}: all {len(self.checks)} check(s) passed"
        parts = [_describe_check(check) for check in self.failures]
        return f"{self.suite}: {len(parts)} check(s) failed: " + "; ".join(parts)


def _describe_check(check: Check) -> str:
    if check.explanation:
        return f"{check.name}: {check.explanation}"
    unit = " violating sample(s)" if check.expectation.endswith("_in_set") else ""
    detail = f": {check.detail}" if check.detail else ""
    return (
        f"{check.name} [{check.column}] "
        f"(observed {_fmt(check.observed)}{unit} vs threshold {_fmt(check.threshold)}{detail})"
    )


def _fmt(value: Number | None) -> str:
    if value is None:
        return "none"
    return str(value) if isinstance(value, int) else f"{value:.6g}"


# ---- rules and the GX runner -------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """A check before it runs: the GX expectation class and its keyword arguments."""

    name: str
    expectation: str  # class name in great_expectations.expectations
    column: str
    threshold: Number | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    explanation: str | None = None
    detail: str = ""


def _at_least(name: str, column: str, threshold: Number) -> _Rule:
    return _Rule(name, "ExpectColumnMinToBeBetween", column, threshold, {"min_value": threshold})


def _at_most(name: str, column: str, threshold: Number) -> _Rule:
    return _Rule(name, "ExpectColumnMaxToBeBetween", column, threshold, {"max_value": threshold})


def _in_set(name: str, column: str, values: list[Any]) -> _Rule:
    # Observed is the number of samples outside the set, so the threshold is 0.
    return _Rule(name, "ExpectColumnValuesToBeInSet", column, 0, {"value_set": values})


class _GxRunner:
    """One ephemeral GX context shared by several suites; Data Docs built once at the end."""

    def __init__(self, docs_dir: Path | None) -> None:
        self.context = _make_context(docs_dir)
        self.source = self.context.data_sources.add_pandas("modelpress")
        self.docs = docs_dir is not None

    def run(self, suite_name: str, frame: pd.DataFrame, rules: list[_Rule]) -> list[Check]:
        """Validate `frame` against `rules` as suite `suite_name` through a Checkpoint."""
        import great_expectations as gx

        batch = self.source.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe(
            "all"
        )
        suite = self.context.suites.add(gx.ExpectationSuite(name=suite_name))
        for rule in rules:
            suite.add_expectation(_expectation(rule))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
        )
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=suite_name, validation_definitions=[definition], result_format="SUMMARY"
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        by_name = {rule.name: rule for rule in rules}
        return [
            _to_check(result, by_name[result.expectation_config.meta["check"]])
            for run in outcome.run_results.values()
            for result in run.results
        ]

    def build_docs(self) -> None:
        """Write the HTML Data Docs site (index.html and one page per validation)."""
        if self.docs:
            self.context.build_data_docs(site_names=[DOCS_SITE])


def _make_context(docs_dir: Path | None) -> Any:
    """An in-memory GX context, quiet, with a local Data Docs site when docs_dir is given."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        # No default temp-dir docs site: the only site is the one we configure below.
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        context.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return context


def _expectation(rule: _Rule) -> Any:
    import great_expectations.expectations as gxe

    expectation_class = getattr(gxe, rule.expectation)
    return expectation_class(column=rule.column, meta={"check": rule.name}, **rule.kwargs)


def _to_check(result: Any, rule: _Rule) -> Check:
    payload = result.result or {}
    raw = payload.get("observed_value", payload.get("unexpected_count"))
    return Check(
        name=rule.name,
        expectation=result.expectation_config.type,
        column=rule.column,
        success=bool(result.success),
        observed=_plain_number(raw),
        threshold=rule.threshold,
        detail=rule.detail,
        explanation=rule.explanation,
    )


def _plain_number(value: Any) -> Number | None:
    """numpy scalars → int/float; NaN, strings and lists → None."""
    if isinstance(value, bool | np.bool_) or value is None:
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value):
        return float(value)
    return None


def _suite_result(suite: str, checks: list[Check]) -> SuiteResult:
    return SuiteResult(suite=suite, success=all(c.success for c in checks), checks=checks)


# ---- data suite --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeNeed:
    """How many test images a variant gate needs before it can pass at all."""

    column: str  # test_samples (the drop gate) or test_min_class_count (the worst-class gate)
    samples: int
    gate: str  # e.g. "max_accuracy_drop 1 point of tflite_int8 at 95 % confidence"


def evidence_needs(gates: GatesConfig, variants: Iterable[str]) -> list[SizeNeed]:
    """The test-split sizes the tightest drop gate and worst-class gate of `variants` need: on
    fewer images, even a variant that agrees with the baseline on every one cannot pass."""
    needs = []
    for column, field_name, what in (
        ("test_samples", "max_accuracy_drop", "test split"),
        ("test_min_class_count", "max_worst_class_drop", "smallest test class"),
    ):
        limits = {name: getattr(gates.for_variant(name), field_name) for name in variants}
        limits = {name: limit for name, limit in limits.items() if limit is not None}
        if not limits:
            continue
        tightest = min(limits, key=lambda name: (limits[name], name))
        samples = smallest_certifying_size(limits[tightest], gates.confidence)
        takes = (
            "cannot be met by any number of images (a drop of exactly 0 is never certain)"
            if samples == UNCERTIFIABLE
            else f"needs at least {samples} images even if the variant agrees with the "
            "baseline on every one"
        )
        gate = (
            f"{what}: {field_name} {limits[tightest]:g} point(s) of {tightest} at "
            f"{gates.confidence:.0%} confidence {takes}"
        )
        needs.append(SizeNeed(column, samples, gate))
    return needs


def check_data(
    splits: dict[str, Split],
    preprocess: Preprocess,
    gates: DataGates,
    docs_dir: Path | None = None,
    needs: Sequence[SizeNeed] = (),
) -> SuiteResult:
    """Run the data suite on every split; failures are reported, not raised (see assert_data_valid).

    `needs` (see evidence_needs) are the test-split sizes the variant gates need: a split too
    small to certify them fails here, before any work, instead of rejecting every variant later.
    With `docs_dir`, GX writes an HTML Data Docs site there (index.html). The folder belongs to
    this one call: GX's index builder removes pages of results it does not hold in memory, so
    give check_data and gate_variants separate folders.
    """
    _check_splits(splits)
    runner = _GxRunner(docs_dir)
    checks = runner.run(f"{DATA_SUITE}.samples", sample_frame(splits), _sample_rules(preprocess))
    size_rules = [_size_rule(need) for need in needs if "test" in splits]
    class_checks = runner.run(
        f"{DATA_SUITE}.classes",
        class_frame(splits, preprocess.num_classes),
        _class_rules(gates, list(splits)) + size_rules,
    )
    counts = class_counts(splits["train"].y, preprocess.num_classes)
    checks += [_name_classes(check, counts, preprocess.class_names) for check in class_checks]
    runner.build_docs()
    return _suite_result(DATA_SUITE, checks)


def _size_rule(need: SizeNeed) -> _Rule:
    enough = "any number" if need.samples == UNCERTIFIABLE else need.samples
    name = f"{need.column} >= {enough} (what the gates can certify)"
    needed = f"{need.gate}; add test images or loosen that gate"
    return replace(_at_least(name, need.column, need.samples), detail=needed)


def assert_data_valid(result: SuiteResult) -> None:
    """Raise DataValidationError naming every failing check when the data suite failed."""
    if not result.success:
        raise DataValidationError(result.describe())


def _name_classes(check: Check, counts: np.ndarray, names: list[str] | None) -> Check:
    """A failed class-count check names the classes behind its number, so the user knows
    which class (for ImageFolder data: which folder) needs more images."""
    if check.success or check.column not in ("train_min_class_count", "train_class_imbalance"):
        return check
    if check.column == "train_min_class_count":
        small = [int(c) for c in np.argsort(counts, kind="stable") if counts[c] < check.threshold]
        listed = ", ".join(f"{_class_name(c, names)} has {counts[c]}" for c in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        detail = f"{listed}{more} in train"
    else:
        largest, smallest = int(np.argmax(counts)), int(np.argmin(counts))
        detail = (
            f"largest {_class_name(largest, names)} has {counts[largest]}, "
            f"smallest {_class_name(smallest, names)} has {counts[smallest]} in train"
        )
    return replace(check, detail=detail)


def _class_name(label: int, names: list[str] | None) -> str:
    """The label, and the class's name where the data has names (ImageFolder: its folder)."""
    if names and label < len(names):
        return f"class {label} {names[label]!r}"
    return f"class {label}"


def _check_splits(splits: dict[str, Split]) -> None:
    if "train" not in splits:
        raise DataError(f"splits: got {sorted(splits)}; expected at least 'train' (of {SPLITS})")
    for name, split in splits.items():
        if split.x.ndim != 4 or split.x.shape[0] != split.y.shape[0]:
            raise DataError(
                f"splits.{name}: x {split.x.shape}, y {split.y.shape}; expected x (N, C, H, W), y (N,)"
            )


def sample_frame(splits: dict[str, Split]) -> pd.DataFrame:
    """One row per sample: split, label, finite pixel min/max, non-finite count, shape, dtype."""
    import pandas as pd

    return pd.concat(
        [_split_frame(name, split) for name, split in splits.items()], ignore_index=True
    )


def _split_frame(name: str, split: Split) -> pd.DataFrame:
    import pandas as pd

    count, channels, height, width = split.x.shape
    flat = split.x.reshape(count, channels * height * width).astype(np.float64)
    finite = np.isfinite(flat)
    # Min/max over finite pixels only, so a NaN shows up in nan_count and nowhere else.
    pixel_min = np.where(finite, flat, np.inf).min(axis=1, initial=np.inf)
    pixel_max = np.where(finite, flat, -np.inf).max(axis=1, initial=-np.inf)
    no_finite = ~finite.any(axis=1)
    pixel_min[no_finite] = np.nan
    pixel_max[no_finite] = np.nan
    return pd.DataFrame(
        {
            "split": name,
            "label": split.y.astype(np.int64),
            "pixel_min": pixel_min,
            "pixel_max": pixel_max,
            "nan_count": (~finite).sum(axis=1).astype(np.int64),  # NaN and ±Inf
            "height": height,
            "width": width,
            "channels": channels,
            "dtype": str(split.x.dtype),
        }
    )


def class_frame(splits: dict[str, Split], num_classes: int) -> pd.DataFrame:
    """One summary row: train's smallest class count and imbalance, and each split's size."""
    import pandas as pd

    counts = class_counts(splits["train"].y, num_classes)
    smallest, largest = int(counts.min()), int(counts.max())
    row: dict[str, Number] = {
        "train_min_class_count": smallest,
        # An empty class would make the ratio infinite; its count check fails on its own.
        "train_class_imbalance": largest / max(smallest, 1),
    }
    row |= {f"{name}_samples": len(split) for name, split in splits.items()}
    if "test" in splits:  # the per-class evidence the worst-class gate rests on
        present = class_counts(splits["test"].y, num_classes)
        row["test_min_class_count"] = int(present[present > 0].min()) if present.any() else 0
    return pd.DataFrame([row])


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Samples per class 0..num_classes-1; labels outside that range are not counted."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels[(labels >= 0) & (labels < num_classes)]
    return np.bincount(valid, minlength=num_classes)


def _sample_rules(preprocess: Preprocess) -> list[_Rule]:
    low, high = preprocess.pixel_range
    return [
        _in_set("label in range(num_classes)", "label", list(range(preprocess.num_classes))),
        _at_least(f"pixel_min >= {low:g}", "pixel_min", low),
        _at_most(f"pixel_max <= {high:g}", "pixel_max", high),
        _Rule("nan_count == 0", "ExpectColumnSumToBeBetween", "nan_count", 0, _equal(0)),
        _in_set("height == image_size", "height", [preprocess.image_size]),
        _in_set("width == image_size", "width", [preprocess.image_size]),
        _in_set("channels == channels", "channels", [preprocess.channels]),
        _in_set("dtype == float32", "dtype", ["float32"]),
    ]


def _class_rules(gates: DataGates, split_names: list[str]) -> list[_Rule]:
    rules = [
        _at_least(
            "train samples per class >= min_samples_per_class",
            "train_min_class_count",
            gates.min_samples_per_class,
        ),
        _at_most(
            "train class imbalance <= max_class_imbalance",
            "train_class_imbalance",
            gates.max_class_imbalance,
        ),
    ]
    return rules + [
        _at_least(f"{name} split non-empty", f"{name}_samples", 1) for name in split_names
    ]


def _equal(value: Number) -> dict[str, Number]:
    return {"min_value": value, "max_value": value}


# ---- variant gates -----------------------------------------------------------------------------


def gate_variants(
    metrics: dict[str, dict],
    predictions: dict[str, np.ndarray],
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
    runner: _GxRunner | None = None
    results: dict[str, SuiteResult] = {}
    for name, row in metrics.items():
        if row.get("status") != "ok":
            results[name] = _not_ok(name)
            continue
        runner = runner or _GxRunner(docs_dir)
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
        results[name] = _suite_result(
            _variant_suite(name), runner.run(_variant_suite(name), frame, rules)
        )
    if runner is not None:
        runner.build_docs()
    return results


def variant_frame(
    row: dict[str, Any],
    labels: np.ndarray,
    base_pred: np.ndarray,
    pred: np.ndarray,
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


def _variant_rules(gates: VariantGates, has_latency: bool) -> list[_Rule]:
    candidates = [
        ("accuracy >= min_accuracy", "accuracy", gates.min_accuracy, _at_least),
        ("drop_upper <= max_accuracy_drop", "drop_upper", gates.max_accuracy_drop, _at_most),
        (
            "worst_class_drop_upper <= max_worst_class_drop",
            "worst_class_drop_upper",
            gates.max_worst_class_drop,
            _at_most,
        ),
        ("agreement >= min_agreement", "agreement", gates.min_agreement, _at_least),
        ("size_bytes <= max_size_bytes", "size_bytes", gates.max_size_bytes, _at_most),
        ("p50_ms <= max_p50_ms", "p50_ms", gates.max_p50_ms if has_latency else None, _at_most),
    ]
    return [
        make(name, column, limit) for name, column, limit, make in candidates if limit is not None
    ]


def _as_point_estimate(rule: _Rule) -> _Rule:
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
    name: str, metrics: dict[str, dict], ratios: Ratios, gates: VariantGates
) -> list[tuple[str, float, _Rule]]:
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
            rule = _at_most(check, f"slowdown_{suffix}", gates.max_slowdown)
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
        rules.append((column, gain, replace(_at_least(check, column, 1.0), explanation=detail)))
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


def _prediction(predictions: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in predictions:
        raise DataError(
            f"predictions: no {key!r} (found {sorted(predictions)}); run the 'evaluate' stage first"
        )
    return np.asarray(predictions[key])


def check_prepared_data(
    data_dir: Path, gates: GatesConfig, variants: Iterable[str], docs_dir: Path
) -> SuiteResult:
    """The data suite on a prepared data directory, with the test-split sizes the gates of
    `variants` need; raises DataValidationError when it fails."""
    from tasks.data import load_preprocess, load_split

    splits = {name: load_split(data_dir, name) for name in SPLITS}
    needs = evidence_needs(gates, variants)
    result = check_data(splits, load_preprocess(data_dir), gates.data, docs_dir, needs)
    assert_data_valid(result)
    return result


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
    with np.load(predictions_file) as saved:
        predictions = {key: saved[key] for key in saved.files}
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
