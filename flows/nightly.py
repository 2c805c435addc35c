"""The nightly flow: fetch → check data → export → fan out variants → evaluate → benchmark →
validate → review → approve → publish.

Tasks here are thin Prefect wrappers around the plain functions in tasks/; the flow only wires
them. Work directories are named by content hashes of their inputs, and the expensive tasks are
cached on those hashes (INPUTS + TASK_SOURCE), so an unchanged night skips compression and
evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_type_hints

from prefect import flow, get_run_logger
from prefect.utilities.timeout import timeout

from flows.approval import who_may_approve
from flows.benchmark import benchmark_on_runners
from flows.publish import Candidates, Origin, ReviewForm, approve_and_publish
from flows.review import review_task, tag_run
from flows.runners import make_task_runner
from flows.stages import (
    RUNNER,
    evaluate_variants,
    prepare_inputs,
    validate_task,
)
from flows.variants import build_variants
from tasks import publish as publishing
from tasks.benchmark import BenchmarkRow
from tasks.decision import ApprovalDecision, RunOutcome, Status
from tasks.engines import BuiltEngine, MergedEngines, engine_requests, merge_engines
from tasks.evaluate import VariantMetrics
from tasks.params_file import load_params
from tasks.params_model import Params
from tasks.report import format_table
from tasks.results import BaselineSummary, metrics_json
from tasks.store import ArtifactStore
from tasks.timeouts import NightTimedOut, describe_bound, night_bound_s
from tasks.variant_gates import speed_evidence
from tasks.workspace import write_pointer


@dataclass(frozen=True)
class NightlyResult:
    model: str
    version: str | None
    status: Status  # published | unchanged | nothing-approved | nothing-passed | review-timed-out
    published: list[str]
    rejected: dict[str, str]
    approval: ApprovalDecision | None
    registry_uri: str
    run_dir: str
    manifest_uri: str | None = None
    cached_tasks: list[str] = field(default_factory=list)
    decision_uri: str | None = None  # the review's decision record in the registry
    table: str = ""  # the variants table, as `modelpress table` prints it
    unchanged_since: str | None = None  # status unchanged: the version that holds these files
    hints: list[str] = field(default_factory=list)  # what to check (e.g. a mis-fed imported model)
    search: str | None = None  # search.run_in_nightly: how the search ended (found | infeasible)
    builders: dict[str, str] = field(default_factory=dict)  # variant → host:pid that built it
    best_variant: str | None = None  # published: the smallest of them (all passed every gate)


# ---- tasks: thin wrappers over tasks/ ---------------------------------------------------------


@flow(name="nightly", task_runner=RUNNER, log_prints=True)
def nightly(
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    model_rev: str | None = None,
    data_rev: str | None = None,
    approval: Literal["ui", "auto"] | None = None,
    registry_uri: str | None = None,
    version: str | None = None,
    workdir: str = ".modelpress",
    review_poll_s: int = 10,
    publish_unchanged: bool = False,
) -> NightlyResult:
    """Compress, validate, review and publish one model. Parameters override params.yaml."""
    params = load_params(params_file, overrides)
    bound = night_bound_s(params)
    given = _Given(
        params_file, overrides, model_rev, data_rev, approval, registry_uri, version, workdir,
        review_poll_s, publish_unchanged, time.monotonic() + bound,
    )  # fmt: skip
    try:
        with timeout(bound, timeout_exc_type=NightTimedOut):
            return _night(params, given)
    except NightTimedOut:
        raise NightTimedOut(
            f"nightly {params.registry.model_name}: stopped at its time bound "
            f"({describe_bound(params)}); what was built is cached for the next run"
        ) from None


@dataclass(frozen=True)
class _Given:
    """The nightly's own parameters, as given."""

    params_file: str
    overrides: dict[str, Any] | None
    model_rev: str | None
    data_rev: str | None
    approval: Literal["ui", "auto"] | None
    registry_uri: str | None
    version: str | None
    workdir: str
    review_poll_s: int
    publish_unchanged: bool
    deadline: float  # time.monotonic() at the night's bound

    def seconds_left(self) -> float:
        """What bounds a stage besides its own setting: a build running in a worker thread is
        not stopped by the night's bound firing in this one."""
        return max(1.0, self.deadline - time.monotonic())


def _night(params: Params, given: _Given) -> NightlyResult:
    logger = get_run_logger()
    params_file, overrides, model_rev, data_rev = (
        given.params_file, given.overrides, given.model_rev, given.data_rev
    )  # fmt: skip
    approval, registry_uri, version, workdir = (
        given.approval, given.registry_uri, given.version, given.workdir
    )  # fmt: skip
    review_poll_s, publish_unchanged = given.review_poll_s, given.publish_unchanged
    registry = params.registry.model_copy(update={"uri": registry_uri or params.registry.uri})
    model = params.registry.model_name
    # before any work: an unreachable registry or a bad version would otherwise fail at the end
    previous = publishing.check_registry(registry, model, version)
    root, work = Path(params_file).resolve().parent, Path(workdir).resolve()
    run_dir = work / "runs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)

    prepared = prepare_inputs(params, model_rev, data_rev, work, root, run_dir)
    params, inputs, baseline = prepared.params, prepared.inputs, prepared.baseline
    data_dir, data_key, base_key = prepared.data_dir, prepared.data_key, prepared.base_key
    baseline_dir = prepared.baseline_dir
    hints = _import_hints(params, baseline, data_dir)
    for hint in hints:
        logger.warning(hint)
    fan_out = build_variants.with_options(task_runner=make_task_runner(params.task_runner))
    variants = fan_out(
        params, baseline.sha256, base_key, baseline_dir, data_dir, work, given.seconds_left()
    )
    records, dirs = variants.records, variants.dirs
    logger.info("variants: %s", ", ".join(f"{n}={r.status}" for n, r in records.items()))
    logger.info("built by: %s", ", ".join(f"{n}={b}" for n, b in variants.builders.items()))

    bound = min(params.timeouts.evaluate_s, int(given.seconds_left()) + 1)
    metrics, eval_dir = evaluate_variants(records, dirs, data_key, data_dir, work, timeout_s=bound)
    write_pointer(run_dir, Path(params_file).resolve(), data_dir, dirs)  # for the study tools
    run = MergedEngines(records, dirs, metrics, eval_dir / "metrics" / "predictions.npz")

    # benchmark on every runner; engines are built on the CUDA runner that will run them
    bench, engines = _benchmark(params, run, data_dir, run_dir, work)
    if engines:
        store = ArtifactStore(
            params.benchmark.store_uri, endpoint_url=params.benchmark.store_endpoint_url
        )
        run = merge_engines(engines, store, run, variants.root, run_dir)
    verdicts = validate_task(
        run.metrics,
        str(run.predictions_file),
        bench,
        params.gates,
        str(run_dir / "data-docs" / "metrics"),
    )

    # review, approval, publish
    summary = inputs | {
        "baseline_sha256": baseline.sha256,
        "run_dir": str(run_dir),
        "last_published_version": previous["version"] if previous else None,
    }
    published = publishing.last_published(registry, model, list(run.metrics))
    who = who_may_approve(params.review.approvers)
    form_text, titles = review_task(
        model, summary, run.metrics, bench, verdicts, published, who, str(run_dir), run.dirs
    )
    candidates = Candidates.of(run.metrics, verdicts, run.dirs, bench)
    if not candidates.passing:
        logger.warning("no variant passed every gate: nothing to review or publish")
        outcome = RunOutcome(status="nothing-passed")
    else:
        origin = Origin(inputs, baseline.sha256, model_rev, data_rev, root, previous)
        form = ReviewForm(form_text, titles, approval or params.review.approval, review_poll_s)
        outcome = approve_and_publish(
            params, registry, candidates, form, origin, version, publish_unchanged
        )
    tag_run(outcome.status)
    searched = None
    if params.search.run_in_nightly:
        from flows.search import search  # below the nightly: it imports flows.stages, not this

        searched = search(
            params_file=params_file,
            overrides=overrides,
            model_rev=model_rev,
            data_rev=data_rev,
            approval=approval,
            registry_uri=registry_uri,
            workdir=workdir,
            review_poll_s=review_poll_s,
        ).status
    return NightlyResult(
        model=model,
        version=outcome.version,
        status=outcome.status,
        published=list(outcome.published),
        rejected=candidates.rejected,
        approval=outcome.approval,
        registry_uri=registry.uri,
        run_dir=str(run_dir),
        manifest_uri=outcome.manifest_uri,
        cached_tasks=variants.cached,
        decision_uri=outcome.decision_uri,
        table=format_table(
            metrics_json(run.metrics),
            p50_ms=speed_evidence(bench)[0],
            gates={n: "pass" if v.passed else f"rejected: {v.reason}" for n, v in verdicts.items()},
        ),
        unchanged_since=outcome.unchanged_since,
        hints=hints,
        search=searched,
        builders=variants.builders,
        best_variant=_best(outcome.published, run.metrics),
    )


# A served deployment (nightly.serve(), a fleet's runs) gets this flow by value (cloudpickle),
# which carries the names its code uses but not those only in its string annotations: Prefect's
# parameter validation then failed on every run ("`NightlyModel` is not fully defined; you
# should define `Literal`"). Resolved here, the annotations travel as objects.
nightly.fn.__annotations__ = get_type_hints(nightly.fn)


# ---- wiring helpers ---------------------------------------------------------------------------


def _best(published: Any, metrics: dict[str, VariantMetrics]) -> str | None:
    """Every published variant passed every gate: the best is the smallest on disk."""
    sized = [(metrics[n].size_bytes or 0, n) for n in published if n in metrics]
    return min(sized)[1] if sized else None


def _import_hints(params: Params, baseline: BaselineSummary, data_dir: str) -> list[str]:
    from tasks.train import import_hints

    return import_hints(params.baseline, params.gates, baseline.test_accuracy, Path(data_dir))


def _benchmark(
    params: Params, run: MergedEngines, data_dir: str, run_dir: Path, work: Path
) -> tuple[list[BenchmarkRow], dict[str, BuiltEngine]]:
    """Benchmark the variants built here on every runner profile of params.benchmark."""
    from tasks.data import load_split

    ok = {name: run.dirs[name] for name, record in run.records.items() if record.status == "ok"}
    profiles = {name: params.runners[name] for name in params.benchmark.runners}
    images = load_split(Path(data_dir), "test").x
    requests = engine_requests(params.variants, run.records)
    kept = work / "benchmarks"  # every later run of the workdir reuses them
    return benchmark_on_runners(params.benchmark, profiles, ok, images, run_dir, requests, kept)
