"""The accuracy-constrained search: the fastest (or smallest) variant that passes the gates.

An Optuna study (kept in a database, so a stopped search resumes) proposes trials in batches
(ask/tell); each batch is built, evaluated, benchmarked and judged through the nightly's own
tasks: its content-keyed compress cache means a repeated or resumed search rebuilds nothing it
has. The best feasible trial is then offered for approval like any nightly variant (measured
again on every runner of params.benchmark); nothing is published without approval. When no
trial meets the gates, the result is the best attempt and a report of how far each fell short.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.publish import Origin
from flows.review import tag_run
from flows.search_offer import offer_pick, write_report
from flows.search_trials import Trials, measure_batch, study_outcomes
from flows.stages import RUNNER, Prepared, prepare_inputs
from tasks import publish as publishing
from tasks.config import VariantGates
from tasks.decision import RunOutcome
from tasks.params_file import load_params
from tasks.params_model import Params
from tasks.search import (
    CONSTRAINT,
    OUTCOME,
    distinct_trials,
    finished_trials,
    known_good,
    open_study,
    space_size,
    storage_url,
    study_key,
    suggest_plan,
)
from tasks.search_config import SearchConfig
from tasks.search_results import (
    TrialOutcome,
    best_attempt,
    best_feasible,
    pareto_trials,
    study_values,
)
from tasks.techniques import technique_table

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

    trials = Trials(params, prepared, gates, runner, run_dir, work)
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
        for trial, measured in zip(asked, measure_batch(plans, study, trials, ran), strict=True):
            trial.set_user_attr(OUTCOME, measured.as_json())
            trial.set_constraint(CONSTRAINT, measured.violation if measured.status == "ok" else 1.0)
            values = study_values(measured)
            study.tell(trial, values, state=None if values else _failed())
            logger.info("trial %d %s: %s", measured.number, measured.variant, _line(measured))
        ran += len(asked)
        repeats = 0 if distinct_trials(study) > distinct else repeats + len(asked)
        last_batch_s = time.monotonic() - batch_started
    logger.info("search stopped: %s", stopped)

    outcomes = study_outcomes(study)
    pick = best_feasible(outcomes)
    shown = pick or best_attempt(outcomes)
    report = write_report(
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
    review, rejected = offer_pick(
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
