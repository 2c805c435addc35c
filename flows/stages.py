"""The stages the nightly and the search both run: fetch and prepare the data, check it, train
or import the baseline, evaluate variants, validate them (thin Prefect tasks over tasks/).

A module of its own so that both flows import it and neither imports the other's module for
its prelude (flows/search.py took them from flows/nightly.py, and the nightly calls the search).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.task_runners import TaskRunner

from flows.fetch import fetch_inputs
from flows.runners import LettingGoThreadPoolTaskRunner
from flows.variants import CACHED, rerun_if_gone
from tasks.benchmark import BenchmarkRow
from tasks.config import BaselineConfig, DataConfig, GatesConfig, TrainConfig
from tasks.evaluate import VariantMetrics
from tasks.lineage import code_sha256
from tasks.params_model import Params
from tasks.plan import content_key
from tasks.results import BaselineSummary
from tasks.review import GateVerdict
from tasks.runtimes import RUNTIME_MODULES
from tasks.timeouts import StageTimedOut
from tasks.variant import EVALUATION_SPLIT, VariantRecord

RUNNER: TaskRunner[Any] = LettingGoThreadPoolTaskRunner(max_workers=2)  # variants two at a time


@task(name="prepare", cache_policy=CACHED)
def prepare_task(cfg: DataConfig, seed: int, data_key: str, root: str, out_dir: str) -> str:
    """Load, check and split the data (data_key: hash of the data's content and tasks.data)."""
    from tasks.data import prepare, write_prepared

    write_prepared(prepare(cfg, seed, root=Path(root)), Path(out_dir))
    return out_dir


@task(name="check-data")
def check_data_task(data_dir: str, gates: GatesConfig, variants: list[str], docs_dir: str) -> bool:
    """Great Expectations data suite, with the test-split sizes the variants' gates need;
    raises before any compression when it fails."""
    from tasks.data_checks import check_prepared_data

    return check_prepared_data(Path(data_dir), gates, variants, Path(docs_dir)).success


@task(name="train", cache_policy=CACHED)
def baseline_task(
    cfg: BaselineConfig,
    train_cfg: TrainConfig,
    data_dir: str,
    seed: int,
    baseline_key: str,
    root: str,
    out_dir: str,
) -> BaselineSummary:
    """Train the default CNN or import the user's model (baseline_key: hash of the data key, the
    model files' content, params and training code)."""
    from tasks.results import read_baseline_summary
    from tasks.train import make_baseline, save_baseline

    result = make_baseline(cfg, train_cfg, Path(data_dir), seed, root=Path(root))
    save_baseline(result, cfg, Path(out_dir), root=Path(root))
    return read_baseline_summary(Path(out_dir))


@task(name="evaluate", cache_policy=CACHED)
def evaluate_task(
    model_hashes: dict[str, str],
    variant_dirs: dict[str, str],
    data_dir: str,
    out_dir: str,
    by_model: str,
    split: str = EVALUATION_SPLIT,
) -> dict[str, VariantMetrics]:
    """Every variant in its own runtime on `split` (test; the search selects on val); metrics
    and per-sample predictions (a model evaluated before on this data by this code is taken
    from `by_model`)."""
    from tasks.results import evaluate_variant_dirs

    return evaluate_variant_dirs(variant_dirs, Path(data_dir), Path(out_dir), Path(by_model), split)


@task(name="validate")
def validate_task(
    metrics: dict[str, VariantMetrics],
    predictions_file: str,
    bench: list[BenchmarkRow],
    gates: GatesConfig,
    docs_dir: str,
) -> dict[str, GateVerdict]:
    """Great Expectations metrics suite per variant, with the paired statistical drop gate."""
    from tasks.variant_gates import judge_variants

    return judge_variants(metrics, Path(predictions_file), bench, gates, Path(docs_dir))


# ---- the flow ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """The fetched inputs, the prepared data and the baseline, with the content keys naming them."""

    params: Params  # with fetched file paths
    inputs: dict[str, Any]
    data_key: str
    data_dir: str
    base_key: str
    baseline_dir: str
    baseline: BaselineSummary


def prepare_inputs(
    params: Params,
    model_rev: str | None,
    data_rev: str | None,
    work: Path,
    root: Path,
    run_dir: Path,
) -> Prepared:
    """Fetch, prepare and check the data, then train or import the baseline (all cached by
    content: the nightly and the search share them)."""
    # fetch: versioned inputs through DVC, or local files; every key below holds their sha256
    params, inputs = fetch_inputs(params, model_rev, data_rev, work / "inputs", root)
    data_key = content_key(
        params.data, params.seed, inputs["data_sha256"], code_sha256("tasks.data", "tasks.idx")
    )
    data_dir = rerun_if_gone(prepare_task, work / "data" / data_key)(
        params.data, params.seed, data_key, str(root), str(work / "data" / data_key)
    )
    docs = str(run_dir / "data-docs" / "data")
    check_data_task(data_dir, params.gates, list(params.variants), docs)

    # a trained baseline is fixed by the data, train params, seed and the training code
    input_hashes = {k: v for k, v in inputs.items() if k.endswith("_sha256")}
    base_code = code_sha256("tasks.train", "tasks.models")
    base_key = content_key(
        data_key, params.baseline, params.train, params.seed, input_hashes, base_code
    )
    baseline_dir = str(work / "baseline" / base_key)
    train = rerun_if_gone(baseline_task, baseline_dir)
    bound = params.timeouts.build_s
    with stage_bound("the baseline's training or import", f"timeouts.build_s = {bound} s"):
        baseline = train.with_options(timeout_seconds=bound)(
            params.baseline, params.train, data_dir, params.seed, base_key, str(root), baseline_dir
        )
    return Prepared(params, inputs, data_key, data_dir, base_key, baseline_dir, baseline)


def evaluate_variants(
    records: dict[str, VariantRecord],
    dirs: dict[str, str],
    data_key: str,
    data_dir: str,
    work: Path,
    split: str = EVALUATION_SPLIT,
    timeout_s: int | None = None,
) -> tuple[dict[str, VariantMetrics], Path]:
    """Every variant on `split` (the test split; the search selects on val), cached by the
    models' hashes, the data, the split and the code; stopped after `timeout_s`
    (timeouts.evaluate_s)."""
    # the same models on other data (or by other evaluation code) give other metrics
    variant_hashes = {n: record.model_sha256 or record.status for n, record in records.items()}
    code = code_sha256("tasks.evaluate", *RUNTIME_MODULES)
    on = () if split == EVALUATION_SPLIT else (split,)  # test's keys as before: caches hold
    eval_dir = work / "evaluations" / content_key(variant_hashes, data_key, code, *on)
    # one model's logits, kept across runs: a run that rebuilt one variant runs only that one
    by_model = work / "evaluations" / "by-model" / content_key(data_key, code, *on)
    evaluate = rerun_if_gone(evaluate_task, eval_dir / "metrics" / "variants.json")
    with stage_bound("evaluation", f"timeouts.evaluate_s = {timeout_s} s"):
        metrics = evaluate.with_options(timeout_seconds=timeout_s)(
            variant_hashes, dirs, data_dir, str(eval_dir), str(by_model), split
        )
    return metrics, eval_dir


@contextlib.contextmanager
def stage_bound(stage: str, bound: str) -> Iterator[None]:
    """A stage's task past its timeout ends the night with a line naming the stage and the
    setting, not Prefect's "Task run exceeded timeout of 1800.0 second(s)"."""
    try:
        yield
    except TimeoutError as exc:
        if isinstance(exc, StageTimedOut):
            raise
        raise StageTimedOut(f"{stage}: stopped at its time bound ({bound})") from None
