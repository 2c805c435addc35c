"""The run's results between tasks: the baseline's summary, and the evaluation of every variant
directory in its own runtime on the test split, written as metrics/variants.json and per-sample
predictions (tasks.evaluate) under one folder."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.evaluate import VariantMetrics
from tasks.io import read_json
from tasks.variant import EVALUATION_SPLIT


@dataclass(frozen=True)
class BaselineSummary:
    """What later tasks need of baseline.json: its model file's hash and its accuracy."""

    sha256: str
    test_accuracy: float


def read_baseline_summary(baseline_dir: Path) -> BaselineSummary:
    record = read_json(baseline_dir / "baseline.json")
    return BaselineSummary(sha256=record["sha256"], test_accuracy=record["test_accuracy"])


# fields added to the rows since the first metrics files: an older file reads them as None
ADDED_FIELDS = ("compressed_size_bytes",)


def read_metrics(path: Path) -> dict[str, VariantMetrics]:
    """The rows of a metrics/variants.json, typed."""
    return {
        name: VariantMetrics(**(dict.fromkeys(ADDED_FIELDS) | row))
        for name, row in read_json(path).items()
    }


def metrics_json(metrics: Mapping[str, VariantMetrics]) -> dict[str, dict[str, Any]]:
    """Rows as metrics/variants.json holds them (what the table, gates and review read)."""
    return {name: asdict(row) for name, row in metrics.items()}


def evaluate_variant_dirs(
    variant_dirs: dict[str, str],
    data_dir: Path,
    out_dir: Path,
    by_model: Path | None = None,
    split: str = EVALUATION_SPLIT,
) -> dict[str, VariantMetrics]:
    """Evaluate the variants (baseline first) on `split` and return the rows of
    metrics/variants.json; by_model keeps each model's results for later runs (see
    tasks.evaluate.ByModel): one folder per split."""
    from tasks.data import load_split
    from tasks.evaluate import evaluate, write_evaluation

    # evaluate() reads <dir>/<name>: lay the variant dirs out side by side under one folder
    staging = out_dir / "variants"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, directory in variant_dirs.items():
        (staging / name).symlink_to(Path(directory).resolve(), target_is_directory=True)
    names = [n for n in variant_dirs if n != "baseline"]
    evaluation = evaluate(
        staging, names, load_split(data_dir, split), cache_dir=by_model, split=split
    )
    write_evaluation(evaluation, out_dir / "metrics", out_dir / "plots" / "accuracy_vs_size.json")
    return read_metrics(out_dir / "metrics" / "variants.json")  # as every later reader sees them
