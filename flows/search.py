"""The accuracy-constrained search: the fastest (or smallest) variant that passes the gates.

An Optuna study (kept in a database, so a stopped search resumes) proposes trials in batches
(ask/tell); each batch is built, evaluated, benchmarked and judged through the nightly's own
tasks: its content-keyed compress cache means a repeated or resumed search rebuilds nothing it
has. The best feasible trial is then offered for approval like any nightly variant (measured
again on every runner of params.benchmark); nothing is published without approval. When no
trial meets the gates, the result is the best attempt and a report of how far each fell short.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from prefect import flow, get_run_logger, task

from flows.approval import who_may_approve
from flows.benchmark import benchmark_on_runners
from flows.publish import Candidates, Origin, ReviewForm, approve_and_publish
from flows.review import artifact_key, review_task, tag_run
from flows.stages import RUNNER, Prepared, evaluate_variants, prepare_inputs, validate_task
from flows.variants import build_variants
from tasks import publish as publishing
from tasks.benchmark import BenchmarkRow
from tasks.config import GatesConfig, RegistryConfig, VariantGates
from tasks.decision import RunOutcome
from tasks.errors import ModelPressError
from tasks.evaluate import VariantMetrics
from tasks.expectations import SuiteResult
from tasks.io import write_json
from tasks.params_file import load_params
from tasks.params_model import Params
from tasks.search import (
    CONSTRAINT,
    OUTCOME,
    TrialPlan,
    chain_label,
    distinct_trials,
    finished_trials,
    known_good,
    open_study,
    plan_variants,
    space_size,
    storage_url,
    study_key,
    suggest_plan,
)
from tasks.search_config import SearchConfig
from tasks.search_results import (
    TrialOutcome,
    beats_incumbent,
    best_attempt,
    best_feasible,
    best_published,
    incumbent_label,
    outcome_of,
    pareto_plot,
    pareto_trials,
    refused_outcome,
    report_markdown,
    study_values,
)
from tasks.techniques import technique_table
from tasks.variant import SELECTION_SPLIT

SearchStatus = Literal["found", "infeasible"]
# a sampler that proposes only measured configurations this many times in a row has nothing new
# to offer (a small discrete space it will not leave): the search ends
MAX_REPEATS = 30


@dataclass(frozen=True)
class SearchResult:
    status: SearchStatus  # found: a trial met the gates; infeasible: none did
    study: str
    storage: str
    trials: list[TrialOutcome]  # every finished trial of the study, earlier runs' included
    pareto: list[int]  # trial numbers on the Pareto set
    pick: TrialOutcome | None  # the best feasible trial, or (infeasible) the best attempt
    built: list[str]  # variants this run built
    cached: list[str]  # variants this run found in the cache
    ran: int  # trials this run finished (repeats answered from the study included)
    report: str  # the report's markdown file
    message: str
    stopped: str = ""  # why the search ended: its budget, its space measured whole, ...
    outcome: RunOutcome | None = None  # the pick's review: published, nothing-approved, ...
    rejected: dict[str, str] = field(default_factory=dict)  # the pick, if the re-measure failed it


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

    with np.load(predictions_file) as saved:
        predictions = {key: saved[key] for key in saved.files}
    return judge_trials(metrics, predictions, bench, gates, Path(docs_dir))


@flow(name="search", task_runner=RUNNER, log_prints=True)
def search(
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    model_rev: str | None = None,
    data_rev: str | None = None,
    approval: Literal["ui", "auto"] | None = None,
    registry_uri: str | None = None,
    version: str | None = None,
    workdir: str = ".modelpress",
    review_poll_s: int = 10,
) -> SearchResult:
    """Search params.yaml's `search.space` for the best variant within the gates, then offer it
    for approval. Parameters override params.yaml."""
    logger = get_run_logger()
    params = load_params(params_file, overrides)
    cfg = params.search
    registry = params.registry.model_copy(update={"uri": registry_uri or params.registry.uri})
    previous = publishing.check_registry(registry, params.registry.model_name, version)
    root, work = Path(params_file).resolve().parent, Path(workdir).resolve()
    run_dir = work / "runs" / f"search-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_inputs(params, model_rev, data_rev, work, root, run_dir)
    params = prepared.params
    table = technique_table(tuple(params.techniques))
    runner = cfg.objective.runner or params.benchmark.runners[0]
    limits = VariantGates.model_validate(params.gates.defaults.model_dump() | cfg.constraints)
    gates = params.gates.model_copy(update={"defaults": limits, "per_variant": {}})
    name, storage, study = _study(params, prepared, limits, runner, work)
    logger.info("search study %s in %s: %d trial(s) so far", name, storage, finished_trials(study))

    trials = _Trials(params, prepared, gates, runner, run_dir, work)
    started, ran, repeats, size = time.monotonic(), 0, 0, space_size(cfg)
    last_batch_s = 0.0
    while True:
        distinct = distinct_trials(study)
        stopped = _stop_reason(cfg, distinct, size, started, repeats, last_batch_s)
        if stopped is not None:
            break
        batch_started = time.monotonic()
        room = cfg.budget.trials - distinct if cfg.budget.trials else cfg.batch
        asked = [study.ask() for _ in range(min(cfg.batch, room))]
        plans = [suggest_plan(trial, cfg, table, params.variants) for trial in asked]
        for trial, measured in zip(asked, _measure(plans, study, trials, ran), strict=True):
            trial.set_user_attr(OUTCOME, measured.as_json())
            trial.set_constraint(CONSTRAINT, measured.violation if measured.status == "ok" else 1.0)
            values = study_values(measured)
            study.tell(trial, values, state=None if values else _failed())
            logger.info("trial %d %s: %s", measured.number, measured.variant, _line(measured))
        ran += len(asked)
        repeats = 0 if distinct_trials(study) > distinct else repeats + len(asked)
        last_batch_s = time.monotonic() - batch_started
    logger.info("search stopped: %s", stopped)

    outcomes = _outcomes(study)
    pick = best_feasible(outcomes)
    shown = pick or best_attempt(outcomes)
    report = _report(
        outcomes, pick, shown, cfg.objective.minimize, runner, name, params, run_dir, stopped
    )
    result = SearchResult(
        status="infeasible",
        study=name,
        storage=storage,
        trials=outcomes,
        pareto=[o.number for o in pareto_trials(outcomes)],
        pick=shown,
        built=trials.built,
        cached=trials.cached,
        ran=ran,
        report=str(report),
        message="",
        stopped=stopped,
    )
    if pick is None:
        tag_run("search-infeasible")
        message = (
            f"no trial of {len(outcomes)} met the gates; best attempt "
            + (f"trial {shown.number} ({shown.variant})" if shown else "none measured")
            + f"; report: {report}"
        )
        logger.warning(message)
        return replace(result, message=message)

    origin = Origin(prepared.inputs, prepared.baseline.sha256, model_rev, data_rev, root, previous)
    form = (approval or params.review.approval, review_poll_s)
    review, rejected = _offer(
        params, prepared, pick, registry, origin, version, trials, run_dir, form, gates
    )
    message = f"trial {pick.number} ({pick.variant}) is the pick: {review.status}; report: {report}"
    return replace(
        result,
        status="found",
        message=message,
        outcome=review,
        rejected=rejected,
        built=trials.built,
        cached=trials.cached,
    )


def _outcomes(study: Any) -> list[TrialOutcome]:
    """Every finished trial of the study, earlier runs' included."""
    return [
        TrialOutcome.from_json(t.user_attrs[OUTCOME])
        for t in study.get_trials(deepcopy=False)
        if OUTCOME in t.user_attrs
    ]


def _measure(plans: list[TrialPlan], study: Any, trials: _Trials, batch: int) -> list[TrialOutcome]:
    """The batch's outcomes. A sampler may propose a variant the study has measured already (a
    small discrete space): that trial takes the earlier numbers instead of a second measurement
    that would differ only by timing noise."""
    measured = {o.variant: o for o in _outcomes(study) if o.status == "ok"}
    fresh = [plan for plan in plans if plan.variant not in measured and plan.invalid is None]
    outcomes = dict(
        zip([p.number for p in fresh], trials.run(fresh, batch) if fresh else [], strict=True)
    )
    outcomes |= {plan.number: refused_outcome(plan) for plan in plans if plan.invalid is not None}
    return [
        outcomes.get(plan.number) or replace(measured[plan.variant], number=plan.number)
        for plan in plans
    ]


def _study(
    params: Params, prepared: Prepared, limits: VariantGates, runner: str, work: Path
) -> tuple[str, str, Any]:
    """The study's name (by content, unless search.study names it), storage and the study,
    created with its known-good first trials or loaded to resume."""
    cfg = params.search
    seed = params.seed if cfg.seed is None else cfg.seed
    bench = params.benchmark.model_copy(update={"runners": [runner]})
    key = study_key(cfg, limits, prepared.base_key, params.runners[runner], bench)
    name = cfg.study or f"{params.registry.model_name}-{key}"
    storage = storage_url(cfg, work)
    study = open_study(cfg, name, storage, seed)
    if cfg.enqueue_variants and not study.trials:
        table = technique_table(tuple(params.techniques))
        for known in known_good(cfg, params.variants, table):
            study.enqueue_trial(known, skip_if_exists=True)
    return name, storage, study


class _Trials:
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
        with np.load(predictions_file) as saved:
            predictions = {key: saved[key] for key in saved.files}
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


def _against_published(
    params: Params,
    registry: RegistryConfig,
    pick_name: str,
    pick_dir: str,
    row: VariantMetrics,
    images: np.ndarray,
    run_dir: Path,
) -> tuple[bool, str]:
    """Whether the pick is distinguishably better, by the search's objective, than the best
    variant of the model's latest published version (True when nothing is published yet):
    p50 by timing the two interleaved in this session on the objective's runner."""
    from tasks.paired_timing import Pair, compare_in_subprocess
    from tasks.registry import open_registry

    cfg = params.search
    store = open_registry(registry)
    model = params.registry.model_name
    versions = store.list_versions(model)
    if not versions:
        return True, "nothing published yet"
    incumbent = best_published(
        store.read_manifest(model, versions[-1]), cfg.objective.minimize, _runner_of(params)
    )
    if incumbent is None:
        return True, f"version {versions[-1]} holds no variant to compare with"
    if incumbent.variant == pick_name:
        # the same configuration (search variants are named by their knobs): the publish step
        # says whether its files changed
        return True, f"the pick is {incumbent_label(incumbent)} itself"
    size = row.size_bytes
    if cfg.objective.minimize == "compressed_size":
        size = row.compressed_size_bytes or row.size_bytes
    timed = None
    if cfg.objective.minimize == "p50":
        profile = params.runners[_runner_of(params)]
        if profile.work_pool:
            return False, f"runner {_runner_of(params)} is a work pool: not timed here"
        published = store.pull(model, incumbent.version, incumbent.variant, run_dir / "incumbent")
        images_file = run_dir / "incumbent-images.npz"
        np.savez(images_file, x=images)
        label = incumbent_label(incumbent)
        pair = Pair(pick_name, pick_dir, label, str(published))
        timed = compare_in_subprocess([pair], images_file, profile, params.benchmark)[0]
    return beats_incumbent(
        cfg.objective.minimize, float(size) if size else None, incumbent, _runner_of(params), timed
    )


def _runner_of(params: Params) -> str:
    return params.search.objective.runner or params.benchmark.runners[0]


def _stop_reason(
    cfg: SearchConfig,
    distinct: int,
    size: int | None,
    started: float,
    repeats: int,
    last_batch_s: float = 0.0,
) -> str | None:
    """Why the search ends now (None: it goes on) with `distinct` trials measured: its budget
    spent (or a batch as long as the last would end past it), its space of `size`
    configurations (None: not finite) measured whole, or a sampler that keeps proposing what
    the study holds (repeats are free)."""
    if cfg.budget.trials is not None and distinct >= cfg.budget.trials:
        return f"budget of {cfg.budget.trials} distinct trial(s) spent"
    elapsed = time.monotonic() - started
    if cfg.budget.seconds is not None and elapsed >= cfg.budget.seconds:
        return f"budget of {cfg.budget.seconds:g} s spent"
    if cfg.budget.seconds is not None and elapsed + last_batch_s > cfg.budget.seconds:
        return (
            f"budget of {cfg.budget.seconds:g} s: {elapsed:.0f} s used, and the next batch "
            f"would end past it (the last took {last_batch_s:.0f} s)"
        )
    if size is not None and distinct >= size:
        return f"every one of the space's {size} configuration(s) measured"
    if repeats >= MAX_REPEATS:
        return f"the sampler proposed only measured configurations {repeats} times in a row"
    return None


def _failed() -> Any:
    import optuna

    return optuna.trial.TrialState.FAIL


def _line(o: TrialOutcome) -> str:
    if o.status != "ok":
        return f"{o.status}: {o.reason}"
    verdict = "feasible" if o.feasible else "short of " + "; ".join(o.shortfalls)
    return f"objective {o.objective:.4g}, drop upper {o.drop_upper:.3g} pts, {verdict}"


def _report(
    outcomes: list[TrialOutcome],
    pick: TrialOutcome | None,
    shown: TrialOutcome | None,
    minimize: str,
    runner: str,
    study: str,
    params: Params,
    run_dir: Path,
    stopped: str,
) -> Path:
    """The report and Pareto plot as files under the run folder and as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    text = report_markdown(outcomes, pick, shown, minimize, runner, study, stopped)
    report = run_dir / "search-report.md"
    report.write_text(text)
    write_json(run_dir / "search-trials.json", [o.as_json() for o in outcomes])
    plot = pareto_plot(outcomes, run_dir / "search-pareto.png")
    key = artifact_key(params.registry.model_name)
    create_markdown_artifact(markdown=text, key=f"{key}-search", description="Search report")
    create_table_artifact(
        table=[_row(o) for o in pareto_trials(outcomes)],
        key=f"{key}-search-pareto",
        description="Search: Pareto set (accuracy vs p50 vs size)",
    )
    encoded = base64.b64encode(plot.read_bytes()).decode()
    create_markdown_artifact(
        markdown=f"![Search trials](data:image/png;base64,{encoded})\n\nFile: `{plot}`",
        key=f"{key}-search-plot",
        description="Search: accuracy vs p50 (area ∝ size)",
    )
    return report


def _row(o: TrialOutcome) -> dict[str, Any]:
    return {
        "trial": o.number,
        "variant": o.variant,
        "accuracy": o.accuracy,
        "drop_upper": o.drop_upper,
        "p50_ms": o.p50_ms,
        "size_bytes": o.size_bytes,
        "feasible": o.feasible,
    }


def _offer(
    params: Params,
    prepared: Prepared,
    pick: TrialOutcome,
    registry: RegistryConfig,
    origin: Origin,
    version: str | None,
    trials: _Trials,
    run_dir: Path,
    form: tuple[str, int],
    gates: GatesConfig,
) -> tuple[RunOutcome, dict[str, str]]:
    """The pick through the nightly's review: rebuilt from the cache, measured on every runner
    of params.benchmark, judged by the gates again, then offered for approval (alone)."""
    from tasks.data import load_split

    table = technique_table(tuple(params.techniques))
    variants = plan_variants(
        pick.chain.split("+"), pick.knobs, params.search, table, params.variants
    )
    p, previous, work = prepared, origin.previous, trials.work
    built = build_variants(
        params.model_copy(update={"variants": variants}),
        p.baseline.sha256,
        p.base_key,
        p.baseline_dir,
        p.data_dir,
        work,
    )
    trials.count(variants, built.cached)
    bound = params.timeouts.evaluate_s
    metrics, eval_dir = evaluate_variants(
        built.records, built.dirs, p.data_key, p.data_dir, work, timeout_s=bound
    )
    ok = {n: built.dirs[n] for n, r in built.records.items() if r.status == "ok"}
    profiles = {name: params.runners[name] for name in params.benchmark.runners}
    images = load_split(Path(p.data_dir), "test").x
    bench, _ = benchmark_on_runners(
        params.benchmark, profiles, ok, images, run_dir, {}, work / "benchmarks"
    )
    predictions = eval_dir / "metrics" / "predictions.npz"
    verdicts = validate_task(
        metrics, str(predictions), bench, gates, str(run_dir / "data-docs" / "metrics")
    )
    model = params.registry.model_name
    summary = p.inputs | {
        "baseline_sha256": p.baseline.sha256,
        "run_dir": str(run_dir),
        "last_published_version": previous["version"] if previous else None,
        "search_trial": pick.number,
    }
    published = publishing.last_published(registry, model, list(metrics))
    who = who_may_approve(params.review.approvers)
    offered = {n: m for n, m in metrics.items() if n in ("baseline", pick.variant)}
    text, titles = review_task(
        model, summary, offered, bench, verdicts, published, who, str(run_dir)
    )
    everyone = Candidates.of(metrics, verdicts, built.dirs, bench)
    passing = [n for n in everyone.passing if n == pick.variant]
    rejected = {n: r for n, r in everyone.rejected.items() if n == pick.variant}
    confirmed = metrics[pick.variant]
    get_run_logger().info(
        "the pick %s, selected on %s (accuracy %s), on %s: accuracy %s, drop bound %s pts, %s",
        pick.variant,
        pick.split,
        pick.accuracy,
        confirmed.split,
        confirmed.accuracy,
        verdicts[pick.variant].drop_upper,
        "passed every gate" if passing else "rejected",
    )
    if not passing:
        get_run_logger().warning(
            "the pick %s failed the gates on the test split: %s", pick.variant, rejected
        )
        tag_run("nothing-passed")
        return RunOutcome(status="nothing-passed"), rejected
    better, found = _against_published(
        params,
        registry,
        pick.variant,
        built.dirs[pick.variant],
        metrics[pick.variant],
        images,
        run_dir,
    )
    if not better:
        get_run_logger().warning("the pick %s is not offered: %s", pick.variant, found)
        tag_run("not-better-than-published")
        return RunOutcome(status="not-better-than-published"), {pick.variant: found}
    candidates = Candidates(
        passing, rejected, everyone.dirs, everyone.metrics, everyone.verdicts, everyone.bench
    )
    review = ReviewForm(text, titles, form[0], form[1])
    outcome = approve_and_publish(
        params,
        registry,
        candidates,
        review,
        origin,
        version,
        publish_unchanged=False,
        each_held=True,
    )
    tag_run(outcome.status)
    return outcome, rejected
