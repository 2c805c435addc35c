"""search: the accuracy-constrained search's plain parts (no Prefect): the study, the search
space turned into a trial's variants, a measured trial turned into an objective and a
feasibility verdict, the Pareto front, and the report.

A trial is a chain of techniques (e.g. pruned → tflite_int8) with knobs sampled from
`search.space`. Each step of the chain is an ordinary variant config, named by its content
(`pruned_tflite_int8_<hash>`): the nightly's content-keyed compress cache then serves any trial
whose variants were built before, in this search, a resumed one, or a nightly.

The study keeps two objectives to minimise (the objective metric and the upper bound of the
paired accuracy drop) and one constraint value, the summed relative shortfall against the gates
(0 when every gate passed): Optuna's samplers (TPE, NSGA-II) favour feasible trials with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tasks.config import GatesConfig, VariantGates
from tasks.params_file import validation_message
from tasks.pareto import pareto_front
from tasks.plan import content_key
from tasks.search_config import KnobRange, SearchConfig
from tasks.speed import SpeedRatio
from tasks.techniques import Technique, TechniqueConfig

if TYPE_CHECKING:
    import numpy as np
    import optuna

    from tasks.benchmark import BenchmarkRow
    from tasks.evaluate import VariantMetrics
    from tasks.expectations import Check, SuiteResult

CHAIN = "chain"  # the study parameter that picks the chain of techniques
OUTCOME = "outcome"  # the user attribute holding a trial's TrialOutcome
CONSTRAINT = "gates"  # the trial's constraint (Trial.set_constraint): > 0 when it missed a gate


# ---- the study -------------------------------------------------------------------------------


def study_key(search: SearchConfig, gates: VariantGates, base_key: str, *extra: Any) -> str:
    """What decides a trial's result: the model and data (base_key), the gates, the space and the
    objective. The budget, batch size and storage are not in it: a bigger budget resumes."""
    decides = search.model_dump(
        mode="json", exclude={"budget", "batch", "storage", "study", "run_in_nightly"}
    )
    return content_key(base_key, decides, gates, *extra)


def storage_url(search: SearchConfig, workdir: Path) -> str:
    """The study's database: search.storage, else an SQLite file under the workdir."""
    if search.storage:
        return search.storage
    path = (workdir / "search" / "studies.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(search: SearchConfig, name: str, storage: str, seed: int) -> optuna.Study:
    """Create the study, or load it to resume; trials an interrupted run left RUNNING are failed
    and their parameters queued again (their variants are cached: re-running them is cheap)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler: optuna.samplers.BaseSampler
    if search.sampler == "nsga2":
        population = max(2, search.batch)
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=["minimize", "minimize"],
        sampler=sampler,
        load_if_exists=True,
    )
    # not enqueue_trial(skip_if_exists=True): that also matches the abandoned trial itself, so
    # nothing was ever queued again
    waiting = optuna.trial.TrialState.WAITING
    known = [
        t.system_attrs.get("fixed_params", t.params)
        for t in study.get_trials(deepcopy=False)
        if OUTCOME in t.user_attrs or t.state == waiting
    ]
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        if trial.params and dict(trial.params) not in known:  # a finished twin answers it
            study.enqueue_trial(dict(trial.params))
            known.append(dict(trial.params))
    return study


def finished_trials(study: optuna.Study) -> int:
    """Trials a search finished (measured, failed or answered from the study), not those an
    interrupted run left behind (they are queued again)."""
    return sum(OUTCOME in trial.user_attrs for trial in study.get_trials(deepcopy=False))


def distinct_trials(study: optuna.Study) -> int:
    """Trials that count against `budget.trials`: the distinct variants the study finished. A
    sampler's repeat of one (small discrete spaces) is answered from the study and is free."""
    trials = study.get_trials(deepcopy=False)
    return len({t.user_attrs[OUTCOME]["variant"] for t in trials if OUTCOME in t.user_attrs})


def space_size(search: SearchConfig) -> int | None:
    """How many distinct trials the space holds (each chain times its knobs' choices), or None
    where a knob is a continuous range: the search stops when a finite space is measured whole."""
    total = 0
    for chain in search.chains:
        combinations = 1
        for path, knob in search.space.items():
            if path.partition(".")[0] not in chain:
                continue
            count = _choices(knob)
            if count is None:
                return None
            combinations *= count
        total += combinations
    return total


def _choices(knob: KnobRange | list[Any]) -> int | None:
    if not isinstance(knob, KnobRange):
        return len({json.dumps(value) for value in knob})
    if knob.integer:
        # a log-scaled integer knob is sampled on every integer (Optuna allows no step with log)
        step = 1 if knob.log else int(knob.step or 1)
        return (int(knob.high) - int(knob.low)) // step + 1
    if knob.step is None:
        return None
    return math.floor((float(knob.high) - float(knob.low)) / float(knob.step) + 1e-9) + 1


# ---- the space ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialPlan:
    """One trial: its chain, the knobs sampled for it, and the variants that build it (in
    dependency order, the last one the trial's result)."""

    number: int
    chain: tuple[str, ...]
    knobs: dict[str, Any]
    variants: dict[str, TechniqueConfig]
    # why no technique accepts these knobs together (a rule between two sampled knobs, e.g.
    # qat_int8's freeze_bn_after <= epochs): nothing is built, the trial fails with it
    invalid: str | None = None

    @property
    def variant(self) -> str:
        if self.invalid is not None:
            return f"{'_'.join(self.chain)}_invalid_{content_key(self.knobs)[:8]}"
        return list(self.variants)[-1]

    def refused(self) -> TrialOutcome:
        """The outcome of a trial whose knobs no technique accepts together."""
        chain = chain_label(self.chain)
        return TrialOutcome(
            self.number, self.variant, chain, self.knobs, "invalid", False, reason=self.invalid
        )


def chain_label(chain: list[str] | tuple[str, ...]) -> str:
    return "+".join(chain)


def suggest_plan(
    trial: optuna.Trial,
    search: SearchConfig,
    table: dict[str, Technique],
    listed: dict[str, TechniqueConfig] | None = None,
) -> TrialPlan:
    """The trial's chain and knobs, sampled define-by-run: only the knobs of the chain's
    techniques are asked for."""
    labels = [chain_label(chain) for chain in search.chains]
    label = trial.suggest_categorical(CHAIN, labels)
    chain = search.chains[labels.index(str(label))]
    knobs: dict[str, Any] = {}
    for path, knob in search.space.items():
        if path.partition(".")[0] not in chain:
            continue
        if isinstance(knob, KnobRange):
            if knob.integer:
                step = int(knob.step or 1)
                knobs[path] = trial.suggest_int(
                    path, int(knob.low), int(knob.high), step=step, log=knob.log
                )
            else:
                knobs[path] = trial.suggest_float(
                    path, float(knob.low), float(knob.high), step=knob.step, log=knob.log
                )
        else:
            knobs[path] = trial.suggest_categorical(path, knob)
    try:
        variants = plan_variants(chain, knobs, search, table, listed)
    except ValidationError as exc:
        return TrialPlan(trial.number, tuple(chain), knobs, {}, invalid=validation_message(exc))
    return TrialPlan(trial.number, tuple(chain), knobs, variants)


def plan_variants(
    chain: list[str] | tuple[str, ...],
    knobs: dict[str, Any],
    search: SearchConfig,
    table: dict[str, Technique],
    listed: dict[str, TechniqueConfig] | None = None,
) -> dict[str, TechniqueConfig]:
    """The chain's variant configs: each technique's defaults, search.fixed, then the knobs.
    Names carry a hash of the chain's configs so equal configs share a name (and a cache entry);
    a step equal to a `listed` (params.yaml) variant, from the same source, takes its name, so
    that what the nightly built serves the trial."""
    variants: dict[str, TechniqueConfig] = {}
    source, made = "baseline", []
    same = {
        json.dumps(c.model_dump(mode="json"), sort_keys=True): n for n, c in (listed or {}).items()
    }
    for step, technique in enumerate(chain):
        settings = {
            path.partition(".")[2]: value
            for path, value in {**search.fixed, **knobs}.items()
            if path.partition(".")[0] == technique
        }
        config = table[technique].config.model_validate(
            {"technique": technique, "source": source, **settings}
        )
        made.append(config.model_dump(mode="json", exclude={"source"}))
        name = same.get(json.dumps(config.model_dump(mode="json"), sort_keys=True)) or (
            f"{'_'.join(chain[: step + 1])}_{content_key(made)[:8]}"
        )
        variants[name] = config
        source = name
    return variants


def known_good(
    search: SearchConfig,
    listed: dict[str, TechniqueConfig],
    table: dict[str, Technique],
) -> list[dict[str, Any]]:
    """Trials to run before sampling, cheapest first, chain by chain in the order listed (e.g.
    PTQ, then mixed precision, then QAT): the params.yaml variants the chain describes, else the
    techniques' defaults. Values a knob's range or choices do not hold are left to the sampler."""
    trials: list[dict[str, Any]] = []
    for chain in search.chains:
        written = [
            _listed_knobs(name, listed, search)
            for name in listed
            if _chain_of(name, listed) == tuple(chain)
        ]
        defaults = {
            path: table[path.partition(".")[0]].config.model_fields[path.partition(".")[2]].default
            for path in search.space
            if path.partition(".")[0] in chain
        }
        trials += [_expressible(chain, knobs, search) for knobs in written or [defaults]]
    unique = {json.dumps(t, sort_keys=True): t for t in trials}
    return list(unique.values())


def _listed_knobs(
    name: str, listed: dict[str, TechniqueConfig], search: SearchConfig
) -> dict[str, Any]:
    """The space's knobs as a params.yaml variant (and the variants it starts from) sets them."""
    knobs: dict[str, Any] = {}
    cursor = name
    while cursor in listed:
        config = listed[cursor]
        for path in search.space:
            technique, _, knob = path.partition(".")
            if technique == config.technique:
                knobs[path] = getattr(config, knob)
        cursor = config.source
    return knobs


def _chain_of(name: str, listed: dict[str, TechniqueConfig]) -> tuple[str, ...] | None:
    chain: list[str] = []
    cursor = name
    while cursor != "baseline":
        if cursor not in listed or len(chain) > len(listed):
            return None
        chain.insert(0, listed[cursor].technique)
        cursor = listed[cursor].source
    return tuple(chain)


def _expressible(chain: Any, knobs: dict[str, Any], search: SearchConfig) -> dict[str, Any]:
    """The knobs whose values the space holds, with the chain's parameter."""
    held: dict[str, Any] = {CHAIN: chain_label(chain)}
    for path, value in knobs.items():
        knob = search.space[path]
        if isinstance(knob, KnobRange):
            inside = isinstance(value, int | float) and knob.low <= value <= knob.high
            if inside and (not knob.integer or float(value).is_integer()):
                held[path] = value
        elif value in knob:
            held[path] = value
    return held


# ---- a measured trial --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialOutcome:
    """A trial as the report and the study see it. `shortfalls` says, for each gate it missed,
    by how much (empty when feasible)."""

    number: int
    variant: str
    chain: str
    knobs: dict[str, Any]
    status: str  # ok | failed | skipped | invalid (knobs no technique accepts together)
    feasible: bool
    objective: float | None = None  # the objective metric (ms or bytes)
    accuracy: float | None = None
    drop: float | None = None  # points, point estimate
    drop_upper: float | None = None  # points, the bound the drop gate judges
    agreement: float | None = None
    p50_ms: float | None = None
    size_bytes: int | None = None
    violation: float = 0.0  # summed relative shortfall: 0 when feasible
    shortfalls: list[str] = field(default_factory=list)
    reason: str | None = None
    # the split its accuracy was measured on: val, where trials are ranked (studies from before
    # the search selected on val ranked on test)
    split: str = "test"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialOutcome:
        return cls(**data)


def judge_trials(
    metrics: dict[str, VariantMetrics],
    predictions: dict[str, np.ndarray],
    bench: list[BenchmarkRow],
    gates: GatesConfig,
    docs_dir: Path | None,
) -> dict[str, SuiteResult]:
    """The nightly's metrics suites (tasks.variant_gates.gate_variants) on the selection split, the
    drops as point estimates (only the pick is certified, on test), kept whole: the search needs
    each check's observed value and threshold, not only pass or fail."""
    from tasks.variant_gates import gate_variants, speed_evidence

    rows = {name: asdict(row) for name, row in metrics.items()}
    p50, ratios = speed_evidence(bench)
    return gate_variants(rows, predictions, p50, gates, docs_dir, ratios, selection=True)


def outcome_of(
    plan: TrialPlan,
    metrics: dict[str, VariantMetrics],
    predictions: dict[str, np.ndarray],
    bench: list[BenchmarkRow],
    suites: dict[str, SuiteResult],
    minimize: str,
    runner: str,
    confidence: float,
) -> TrialOutcome:
    """The trial's numbers, its objective and how far it fell short of each gate."""
    from tasks.statistics import paired_drop_interval

    name = plan.variant
    row = metrics[name]
    failed = TrialOutcome(
        plan.number, name, chain_label(plan.chain), plan.knobs, row.status, feasible=False
    )
    if row.status != "ok":
        return replace(failed, reason=row.reason)
    drop, _, upper = paired_drop_interval(
        predictions["labels"],
        predictions["pred__baseline"],
        predictions[f"pred__{name}"],
        confidence,
    )
    p50 = next(
        (b.p50_ms for b in bench if b.variant == name and b.runner == runner and b.status == "ok"),
        None,
    )
    compressed = row.compressed_size_bytes
    objective = {
        "p50": p50,
        "size": row.size_bytes,
        "compressed_size": compressed or row.size_bytes,
    }[minimize]
    failures = suites[name].failures
    return replace(
        failed,
        feasible=not failures and objective is not None,
        objective=None if objective is None else float(objective),
        accuracy=row.accuracy,
        drop=round(drop, 4),
        drop_upper=round(upper, 4),
        agreement=row.agreement,
        p50_ms=p50,
        size_bytes=row.size_bytes,
        violation=round(sum(_relative_shortfall(check) for check in failures), 6),
        shortfalls=[_shortfall_text(check) for check in failures],
        reason=None if objective is not None else f"no p50 measured on {runner}",
        split=row.split,
    )


def _shortfall(check: Check) -> float | None:
    """How far the observed value is on the wrong side of the threshold, in its own units."""
    if check.observed is None or check.threshold is None:
        return None
    if check.expectation == "expect_column_min_to_be_between":
        return float(check.threshold) - float(check.observed)
    return float(check.observed) - float(check.threshold)


def _relative_shortfall(check: Check) -> float:
    missing = _shortfall(check)
    if missing is None:
        return 1.0
    scale = abs(float(check.threshold or 0.0)) or 1.0
    return max(missing, 0.0) / scale


def _shortfall_text(check: Check) -> str:
    missing = _shortfall(check)
    if check.explanation:
        return f"{check.name}: {check.explanation}"
    if missing is None:
        return f"{check.name}: not measured"
    return f"{check.name}: {check.observed:.4g} vs {check.threshold:.4g} (short by {missing:.3g})"


def study_values(outcome: TrialOutcome) -> list[float] | None:
    """What the study minimises (objective, drop upper bound); None: the trial failed."""
    if outcome.status != "ok" or outcome.objective is None or outcome.drop_upper is None:
        return None
    return [outcome.objective, outcome.drop_upper]


# ---- the result --------------------------------------------------------------------------------


def pareto_trials(outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """The measured trials on the front of (higher accuracy, lower p50, smaller size), one per
    variant, feasible or not (the report marks which)."""
    measured = {
        o.variant: o
        for o in outcomes
        if o.status == "ok" and o.accuracy is not None and o.size_bytes is not None
    }
    trials = list(measured.values())
    points = [
        (-(o.accuracy or 0.0), o.p50_ms or math.inf, float(o.size_bytes or 0)) for o in trials
    ]
    return sorted((trials[i] for i in pareto_front(points)), key=lambda o: o.p50_ms or math.inf)


def best_feasible(outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """The feasible trial with the lowest objective (ties: the lower drop bound, then earlier)."""
    feasible = [o for o in outcomes if o.feasible and o.objective is not None]
    return min(feasible, key=lambda o: (o.objective, o.drop_upper or 0.0, o.number), default=None)


def best_attempt(outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """When nothing is feasible: the measured trial that missed the gates by the least."""
    measured = [o for o in outcomes if o.status == "ok"]
    return min(
        measured, key=lambda o: (o.violation, o.objective or math.inf, o.number), default=None
    )


def _fmt(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"


def _knobs(knobs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v, 3) if isinstance(v, float) else v}" for k, v in knobs.items())


def outcomes_table(outcomes: list[TrialOutcome], unit: str = "") -> str:
    """Markdown: one row per trial with its numbers and, when infeasible, what it missed."""
    lines = [
        f"| trial | chain | knobs | accuracy (split) | drop (upper) pts | p50 ms | size bytes | objective{unit} | feasible | short of |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in sorted(outcomes, key=lambda o: o.number):
        missed = "; ".join(o.shortfalls) or (o.reason or "") if not o.feasible else ""
        drop = f"{_fmt(o.drop, 3)} ({_fmt(o.drop_upper, 3)})" if o.drop is not None else "-"
        lines.append(
            f"| {o.number} | {o.chain} | {_knobs(o.knobs)} | {_fmt(o.accuracy)} ({o.split}) | {drop} | "
            f"{_fmt(o.p50_ms)} | {_fmt(o.size_bytes)} | {_fmt(o.objective)} | "
            f"{'yes' if o.feasible else 'no'} | {missed.replace('|', '/')} |"
        )
    return "\n".join(lines)


def report_markdown(
    outcomes: list[TrialOutcome],
    pick: TrialOutcome | None,
    attempt: TrialOutcome | None,
    minimize: str,
    runner: str,
    study: str,
    stopped: str = "",
) -> str:
    """The search's report: why it stopped, the pick (or the best attempt and why nothing met
    the goal), the Pareto set, then every trial."""
    unit = " (ms)" if minimize == "p50" else " (bytes)"
    head = [f"## Search `{study}`: minimise {minimize} (runner {runner})", ""]
    ok = sum(o.status == "ok" for o in outcomes)
    feasible = sum(o.feasible for o in outcomes)
    distinct = len({o.variant for o in outcomes})
    repeats = f", {len(outcomes) - distinct} repeat(s) answered from the study" * (
        len(outcomes) > distinct
    )
    head.append(
        f"{len(outcomes)} trial(s), {distinct} distinct: {ok} measured, {feasible} feasible"
        f"{repeats}." + (f" Stopped: {stopped}." if stopped else "")
    )
    if pick is not None:
        first = min(o.number for o in outcomes if o.feasible)
        head.append(
            f"**Pick:** trial {pick.number}, `{pick.variant}` ({pick.chain}; {_knobs(pick.knobs)}): "
            f"{minimize} {_fmt(pick.objective)}{unit}, accuracy {_fmt(pick.accuracy)} on "
            f"{pick.split}, where trials are ranked (drops as point estimates there; the pick "
            f"alone is then judged by every gate on test, the bound included). "
            f"First feasible trial: {first}."
        )
    else:
        head.append("**No trial met the goal.**")
        if attempt is not None:
            head.append(
                f"Best attempt: trial {attempt.number}, `{attempt.variant}` ({attempt.chain}; "
                f"{_knobs(attempt.knobs)}): short of " + "; ".join(attempt.shortfalls)
            )
    pareto = pareto_trials(outcomes)
    body = [
        "",
        "### Pareto set (accuracy vs p50 vs size)",
        "",
        outcomes_table(pareto, unit),
        "",
        "### Every trial",
        "",
        outcomes_table(outcomes, unit),
    ]
    return "\n".join(head + body) + "\n"


def pareto_plot(outcomes: list[TrialOutcome], path: Path) -> Path:
    """Accuracy vs p50, marker area ∝ size, feasible green, infeasible red, front outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [o for o in outcomes if o.status == "ok" and o.p50_ms is not None]
    measured = [o for o in measured if o.p50_ms is not None]
    front = {o.number for o in pareto_trials(outcomes)}
    biggest = max((o.size_bytes or 1 for o in measured), default=1)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for o in measured:
        ax.scatter(
            o.p50_ms or 0.0,
            100 * (o.accuracy or 0.0),
            s=40 + 600 * (o.size_bytes or 0) / biggest,
            alpha=0.6,
            color="tab:green" if o.feasible else "tab:red",
            edgecolors="black" if o.number in front else "none",
            linewidths=2 if o.number in front else 0,
            zorder=3,
        )
        ax.annotate(str(o.number), (o.p50_ms or 0.0, 100 * (o.accuracy or 0.0)), fontsize=7)
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Search trials: green feasible, red not; outlined: Pareto set; area ∝ size")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- the pick against what is already published -------------------------------------------------


@dataclass(frozen=True)
class Incumbent:
    """The best variant of the model's latest published version by the search's objective."""

    version: str
    variant: str
    objective: float  # ms p50 on the runner as recorded then, or bytes


def best_published(manifest: dict[str, Any], minimize: str, runner: str) -> Incumbent | None:
    """The latest version's best non-baseline variant by `minimize` (p50 on `runner` as its
    manifest recorded it; size; compressed size), or None when it holds no such variant."""
    found: list[Incumbent] = []
    for name, entry in manifest.get("variants", {}).items():
        if name == "baseline":
            continue
        metrics = entry.get("metrics", {})
        if minimize == "p50":
            value = next(
                (
                    b.get("p50_ms")
                    for b in metrics.get("benchmarks", [])
                    if b.get("runner") == runner and b.get("status") == "ok"
                ),
                None,
            )
        elif minimize == "size":
            value = metrics.get("size_bytes")
        else:
            value = metrics.get("compressed_size_bytes") or metrics.get("size_bytes")
        if isinstance(value, int | float):
            found.append(Incumbent(str(manifest.get("version")), name, float(value)))
    return min(found, key=lambda i: (i.objective, i.variant), default=None)


def beats_incumbent(
    minimize: str,
    pick_value: float | None,
    incumbent: Incumbent,
    runner: str,
    timed: SpeedRatio | str | None = None,
) -> tuple[bool, str]:
    """Whether the pick is distinguishably better than the incumbent, and what was found.

    Sizes are exact: smaller is better. p50 is judged only on the two timed interleaved in
    this session (`timed`, its reference named as incumbent_label; a string: why they were
    not): faster only when the ratio's whole interval is.
    """
    if minimize != "p50":
        if pick_value is None:
            return False, f"its {minimize} is unknown"
        better = pick_value < incumbent.objective
        word = "smaller than" if better else "not smaller than"
        return better, (
            f"{int(pick_value):,} bytes, {word} {incumbent_label(incumbent)} "
            f"({int(incumbent.objective):,})"
        )
    if not isinstance(timed, SpeedRatio):
        why = f": {timed}" if timed else ""
        return False, f"not timed together with {incumbent_label(incumbent)}{why}"
    return timed.verdict() == "faster", timed.describe(runner)


def incumbent_label(incumbent: Incumbent) -> str:
    return f"the published {incumbent.variant} (version {incumbent.version})"
