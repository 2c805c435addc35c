"""The search's pick offered like a nightly variant: rebuilt from the cache, measured on every runner of
params.benchmark, judged again on the test split, compared with what the registry already holds,
then through the nightly's review and approval; and the search's report as files and artifacts.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger

from flows.approval import who_may_approve
from flows.benchmark import benchmark_on_runners
from flows.publish import Candidates, Origin, ReviewForm, approve_and_publish
from flows.review import artifact_key, review_task, tag_run
from flows.search_trials import Trials
from flows.stages import Prepared, evaluate_variants, validate_task
from flows.variants import build_variants
from tasks import publish as publishing
from tasks.arrays import Array
from tasks.config import GatesConfig, RegistryConfig
from tasks.decision import RunOutcome
from tasks.evaluate import VariantMetrics
from tasks.io import write_json
from tasks.params_model import Params
from tasks.search import (
    plan_variants,
)
from tasks.search_results import (
    TrialOutcome,
    beats_incumbent,
    best_published,
    incumbent_label,
    pareto_plot,
    pareto_trials,
    report_markdown,
)
from tasks.techniques import technique_table


def against_published(
    params: Params,
    registry: RegistryConfig,
    pick_name: str,
    pick_dir: str,
    row: VariantMetrics,
    images: Array,
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
        store.read_manifest(model, versions[-1]), cfg.objective.minimize, runner_of(params)
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
        profile = params.runners[runner_of(params)]
        if profile.work_pool:
            return False, f"runner {runner_of(params)} is a work pool: not timed here"
        published = store.pull(model, incumbent.version, incumbent.variant, run_dir / "incumbent")
        images_file = run_dir / "incumbent-images.npz"
        np.savez(images_file, x=images)
        label = incumbent_label(incumbent)
        pair = Pair(pick_name, pick_dir, label, str(published))
        timed = compare_in_subprocess([pair], images_file, profile, params.benchmark)[0]
    return beats_incumbent(
        cfg.objective.minimize, float(size) if size else None, incumbent, runner_of(params), timed
    )


def runner_of(params: Params) -> str:
    return params.search.objective.runner or params.benchmark.runners[0]


def write_report(
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
        table=[pareto_row(o) for o in pareto_trials(outcomes)],
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


def pareto_row(o: TrialOutcome) -> dict[str, Any]:
    return {
        "trial": o.number,
        "variant": o.variant,
        "accuracy": o.accuracy,
        "drop_upper": o.drop_upper,
        "p50_ms": o.p50_ms,
        "size_bytes": o.size_bytes,
        "feasible": o.feasible,
    }


def offer_pick(
    params: Params,
    prepared: Prepared,
    pick: TrialOutcome,
    registry: RegistryConfig,
    origin: Origin,
    version: str | None,
    trials: Trials,
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
    better, found = against_published(
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
