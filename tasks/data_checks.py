"""The data suite: Great Expectations checks on the prepared splits before anything trains.

One row per sample of every split (label, pixel range, NaN count, shape, dtype) and one summary
row of class counts (samples per class in train, class imbalance, split sizes, and the test-split
sizes the variant gates need to pass at all).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.arrays import Array
from tasks.config import DataGates, GatesConfig
from tasks.data import SPLITS, Preprocess, Split
from tasks.errors import DataError, DataValidationError
from tasks.expectations import (
    Check,
    GxRunner,
    Number,
    Rule,
    SuiteResult,
    at_least,
    at_most,
    in_set,
    suite_result,
)
from tasks.statistics import (
    UNCERTIFIABLE,
    smallest_certifying_size,
)

if TYPE_CHECKING:
    import pandas as pd


DATA_SUITE = "data"


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
    runner = GxRunner(docs_dir)
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
    return suite_result(DATA_SUITE, checks)


def _size_rule(need: SizeNeed) -> Rule:
    enough = "any number" if need.samples == UNCERTIFIABLE else need.samples
    name = f"{need.column} >= {enough} (what the gates can certify)"
    needed = f"{need.gate}; add test images or loosen that gate"
    return replace(at_least(name, need.column, need.samples), detail=needed)


def assert_data_valid(result: SuiteResult) -> None:
    """Raise DataValidationError naming every failing check when the data suite failed."""
    if not result.success:
        raise DataValidationError(result.describe())


def _name_classes(check: Check, counts: Array, names: list[str] | None) -> Check:
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


def class_counts(labels: Array, num_classes: int) -> Array:
    """Samples per class 0..num_classes-1; labels outside that range are not counted."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels[(labels >= 0) & (labels < num_classes)]
    return np.bincount(valid, minlength=num_classes)


def _sample_rules(preprocess: Preprocess) -> list[Rule]:
    low, high = preprocess.pixel_range
    return [
        in_set("label in range(num_classes)", "label", list(range(preprocess.num_classes))),
        at_least(f"pixel_min >= {low:g}", "pixel_min", low),
        at_most(f"pixel_max <= {high:g}", "pixel_max", high),
        Rule("nan_count == 0", "ExpectColumnSumToBeBetween", "nan_count", 0, _equal(0)),
        in_set("height == image_size", "height", [preprocess.image_size]),
        in_set("width == image_size", "width", [preprocess.image_size]),
        in_set("channels == channels", "channels", [preprocess.channels]),
        in_set("dtype == float32", "dtype", ["float32"]),
    ]


def _class_rules(gates: DataGates, split_names: list[str]) -> list[Rule]:
    rules = [
        at_least(
            "train samples per class >= min_samples_per_class",
            "train_min_class_count",
            gates.min_samples_per_class,
        ),
        at_most(
            "train class imbalance <= max_class_imbalance",
            "train_class_imbalance",
            gates.max_class_imbalance,
        ),
    ]
    return rules + [
        at_least(f"{name} split non-empty", f"{name}_samples", 1) for name in split_names
    ]


def _equal(value: Number) -> dict[str, Number]:
    return {"min_value": value, "max_value": value}


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
