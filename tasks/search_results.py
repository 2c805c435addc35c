"""search_results: a measured trial turned into an objective and a feasibility verdict, the Pareto
front, the report, and the pick against what the registry already holds.

The study keeps two objectives to minimise (the objective metric and the upper bound of the
paired accuracy drop) and one constraint value, the summed relative shortfall against the gates
(0 when every gate passed): Optuna's samplers (TPE, NSGA-II) favour feasible trials with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import GatesConfig
from tasks.pareto import pareto_front
from tasks.speed import SpeedRatio

if TYPE_CHECKING:
    from tasks.benchmark import BenchmarkRow
    from tasks.evaluate import VariantMetrics
    from tasks.expectations import Check, SuiteResult

from tasks.arrays import Array
from tasks.search import TrialPlan, chain_label

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


def refused_outcome(plan: TrialPlan) -> TrialOutcome:
    """The outcome of a trial whose knobs no technique accepts together."""
    chain = chain_label(plan.chain)
    return TrialOutcome(
        plan.number, plan.variant, chain, plan.knobs, "invalid", False, reason=plan.invalid
    )


def judge_trials(
    metrics: dict[str, VariantMetrics],
    predictions: dict[str, Array],
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
    predictions: dict[str, Array],
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
