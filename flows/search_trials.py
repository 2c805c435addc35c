"""The search's batches: each plan built, evaluated on the selection split, measured on the
objective's runner and judged with the nightly's own tasks (their content-keyed caches serve any
variant built before), and the study's finished trials read back.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from flows.benchmark import benchmark_on_runners
from flows.stages import Prepared, evaluate_variants
from flows.variants import build_variants
from tasks.benchmark import BenchmarkRow
from tasks.config import GatesConfig
from tasks.errors import ModelPressError
from tasks.evaluate import VariantMetrics, read_predictions
from tasks.expectations import SuiteResult
from tasks.params_model import Params
from tasks.search import (
    OUTCOME,
    TrialPlan,
    chain_label,
)
from tasks.search_results import (
    TrialOutcome,
    outcome_of,
    refused_outcome,
)
from tasks.variant import SELECTION_SPLIT


@task(name="judge-trials")
def judge_task(
    metrics: dict[str, VariantMetrics],
    predictions_file: str,
    bench: list[BenchmarkRow],
    gates: GatesConfig,
    docs_dir: str,
) -> dict[str, SuiteResult]:
    """The nightly's metrics suites on a batch, each check with its observed value."""
    from tasks.search_results import judge_trials

    predictions = read_predictions(predictions_file)
    return judge_trials(metrics, predictions, bench, gates, Path(docs_dir))


def study_outcomes(study: Any) -> list[TrialOutcome]:
    """Every finished trial of the study, earlier runs' included."""
    return [
        TrialOutcome.from_json(t.user_attrs[OUTCOME])
        for t in study.get_trials(deepcopy=False)
        if OUTCOME in t.user_attrs
    ]


def measure_batch(
    plans: list[TrialPlan], study: Any, trials: Trials, batch: int
) -> list[TrialOutcome]:
    """The batch's outcomes. A sampler may propose a variant the study has measured already (a
    small discrete space): that trial takes the earlier numbers instead of a second measurement
    that would differ only by timing noise."""
    measured = {o.variant: o for o in study_outcomes(study) if o.status == "ok"}
    fresh = [plan for plan in plans if plan.variant not in measured and plan.invalid is None]
    outcomes = dict(
        zip([p.number for p in fresh], trials.run(fresh, batch) if fresh else [], strict=True)
    )
    outcomes |= {plan.number: refused_outcome(plan) for plan in plans if plan.invalid is not None}
    return [
        outcomes.get(plan.number) or replace(measured[plan.variant], number=plan.number)
        for plan in plans
    ]


class Trials:
    """Builds, evaluates, measures and judges batches of trials with the nightly's tasks."""

    def __init__(
        self,
        params: Params,
        prepared: Prepared,
        gates: GatesConfig,
        runner: str,
        run_dir: Path,
        work: Path,
    ) -> None:
        self.params, self.prepared, self.gates = params, prepared, gates
        self.runner, self.run_dir, self.work = runner, run_dir, work
        self.built: list[str] = []
        self.cached: list[str] = []
        self.started = time.monotonic()
        self._baseline_rows: list[BenchmarkRow] | None = None

    def seconds_left(self) -> float | None:
        """What the seconds budget leaves for the batch about to run (a build past it is
        stopped, its trial failed with why); None without a seconds budget."""
        budget = self.params.search.budget.seconds
        if budget is None:
            return None
        return max(1.0, budget - (time.monotonic() - self.started))

    def count(self, variants: dict[str, Any], cached: list[str]) -> None:
        """Which of these variants were built, and which came from the cache (once each)."""
        self.cached += [n for n in variants if n in cached and n not in self.cached]
        self.built += [n for n in variants if n not in cached and n not in self.built]

    def run(self, plans: list[TrialPlan], batch: int) -> list[TrialOutcome]:
        """The batch's outcomes; a batch a build error stops is failed whole, with the reason
        (what it built is cached, and the search goes on)."""
        try:
            return self._run(plans, batch)
        except ModelPressError as exc:
            get_run_logger().warning("batch %d failed: %s", batch, exc)
            return [
                TrialOutcome(
                    p.number,
                    p.variant,
                    chain_label(p.chain),
                    p.knobs,
                    "failed",
                    False,
                    reason=str(exc),
                )
                for p in plans
            ]

    def _run(self, plans: list[TrialPlan], batch: int) -> list[TrialOutcome]:
        from tasks.data import load_split

        p = self.prepared
        variants = {name: config for plan in plans for name, config in plan.variants.items()}
        batch_params = self.params.model_copy(update={"variants": variants})
        work = self.work
        built = build_variants(
            batch_params,
            p.baseline.sha256,
            p.base_key,
            p.baseline_dir,
            p.data_dir,
            work,
            self.seconds_left(),
        )
        self.count(variants, built.cached)
        # trials are ranked on the selection split; only the pick is evaluated on test (_offer),
        # so the accuracy the review and the registry show was not what chose it
        metrics, eval_dir = evaluate_variants(
            built.records,
            built.dirs,
            p.data_key,
            p.data_dir,
            work,
            SELECTION_SPLIT,
            timeout_s=self.params.timeouts.evaluate_s,
        )
        predictions_file = eval_dir / "metrics" / "predictions.npz"
        images = load_split(Path(p.data_dir), "test").x
        ok = {
            n: built.dirs[n]
            for n, record in built.records.items()
            if record.status == "ok" and (n != "baseline" or self._baseline_rows is None)
        }
        run_dir = self.run_dir / f"batch-{batch}"
        run_dir.mkdir(parents=True, exist_ok=True)
        profiles = {self.runner: self.params.runners[self.runner]}
        rows, _ = benchmark_on_runners(
            self.params.benchmark, profiles, ok, images, run_dir, {}, self.work / "benchmarks"
        )
        if self._baseline_rows is None:
            self._baseline_rows = [r for r in rows if r.variant == "baseline"]
        rows = [r for r in rows if r.variant != "baseline"] + self._baseline_rows
        suites = judge_task(
            metrics, str(predictions_file), rows, self.gates, str(run_dir / "data-docs")
        )
        predictions = read_predictions(predictions_file)
        cfg = self.params.search
        return [
            outcome_of(
                plan,
                metrics,
                predictions,
                rows,
                suites,
                cfg.objective.minimize,
                self.runner,
                self.gates.confidence,
            )
            for plan in plans
        ]
