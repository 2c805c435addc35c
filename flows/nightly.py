"""The nightly flow: fetch → check data → export → fan out variants → evaluate → validate →
benchmark → review → approve → publish.

Tasks here are thin Prefect wrappers around the plain functions in tasks/; the flow only wires
them. Work directories are named by content hashes of their inputs, and the expensive tasks are
cached on those hashes (INPUTS + TASK_SOURCE), so an unchanged night skips compression and
evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.approval import who_may_approve
from tasks import quiet
from tasks.benchmark import BenchmarkRow
from tasks.config import (
    BaselineConfig,
    BenchmarkConfig,
    DataConfig,
    DataGates,
    FetchConfig,
    GatesConfig,
    Params,
    RegistryConfig,
    ReviewConfig,
    RunnerProfile,
    TrainConfig,
    VariantConfig,
    load_params,
)
from tasks.errors import ConfigError, ModelPressError
from tasks.fetch import FetchedFile, FetchNotFoundError, fetch_file
from tasks.io import read_json, write_json
from tasks.lineage import code_sha256, data_lineage, model_lineage, unchanged_since
from tasks.report import format_table
from tasks.review import (
    GateVerdict,
    changes_vs_published,
    form_markdown,
    key_numbers,
    pareto_plot,
    review_rows,
    summary_markdown,
    toggle_title,
)
from tasks.techniques import technique_of
from tasks.variant import VariantRecord, read_record

CACHED = INPUTS + TASK_SOURCE
LIBRARIES = (
    "torch",
    "torch-pruning",
    "onnx",
    "onnxruntime",
    "onnx2tf",
    "tensorflow",
    "ai-edge-litert",
    "prefect",
    "dvc",
    "great-expectations",
    "boto3",
)


@dataclass(frozen=True)
class NightlyResult:
    model: str
    version: str | None
    status: str  # published | unchanged | nothing-approved | nothing-passed | review-timed-out
    published: list[str]
    rejected: dict[str, str]
    approval: dict[str, Any] | None
    registry_uri: str
    run_dir: str
    manifest_uri: str | None = None
    cached_tasks: list[str] = field(default_factory=list)
    decision_uri: str | None = None  # the review's decision record in the registry
    table: str = ""  # the variants table, as `modelpress table` prints it
    unchanged_since: str | None = None  # status unchanged: the version that holds these files
    hints: list[str] = field(default_factory=list)  # what to check (e.g. a mis-fed imported model)


# ---- tasks: thin wrappers over tasks/ ---------------------------------------------------------


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O trouble, not a rev or path that does not exist (fail fast on those)."""
    try:
        state.result()
    except FetchNotFoundError:
        return False
    except Exception:
        return True
    return True


@task(
    name="fetch",
    retries=3,
    retry_delay_seconds=[2, 5, 15],
    retry_condition_fn=_worth_retrying,
)
def fetch_task(cfg: FetchConfig, path: str, rev: str, field_name: str, dest: str) -> FetchedFile:
    """Read one DVC-tracked file at a git rev."""
    return fetch_file(cfg, path, rev, field_name, Path(dest))


@task(name="prepare", cache_policy=CACHED)
def prepare_task(cfg: DataConfig, seed: int, data_key: str, root: str, out_dir: str) -> str:
    """Load, check and split the data (data_key: hash of the data's content and tasks.data)."""
    from tasks.data import prepare, write_prepared

    write_prepared(prepare(cfg, seed, root=Path(root)), Path(out_dir))
    return out_dir


@task(name="check-data")
def check_data_task(data_dir: str, gates: DataGates, docs_dir: str) -> dict[str, Any]:
    """Great Expectations data suite; raises before any compression when it fails."""
    from tasks.data import SPLITS, load_preprocess, load_split
    from tasks.validate import assert_data_valid, check_data

    splits = {name: load_split(Path(data_dir), name) for name in SPLITS}
    result = check_data(splits, load_preprocess(Path(data_dir)), gates, docs_dir=Path(docs_dir))
    assert_data_valid(result)
    return {"suite": result.suite, "success": result.success, "checks": len(result.checks)}


@task(name="train", cache_policy=CACHED)
def baseline_task(
    cfg: BaselineConfig,
    train_cfg: TrainConfig,
    data_dir: str,
    seed: int,
    baseline_key: str,
    root: str,
    out_dir: str,
) -> dict[str, Any]:
    """Train the default CNN or import the user's model; returns baseline.json (baseline_key:
    hash of the data key, the model files' content, params and training code)."""
    from tasks.train import make_baseline, save_baseline

    result = make_baseline(cfg, train_cfg, Path(data_dir), seed, root=Path(root))
    save_baseline(result, cfg, Path(out_dir), root=Path(root))
    return read_json(Path(out_dir) / "baseline.json")


@task(name="export", cache_policy=CACHED)
def export_task(
    baseline_sha256: str, baseline_dir: str, data_dir: str, out_dir: str
) -> VariantRecord:
    """The baseline as ONNX fp32: the reference every variant is compared with."""
    from tasks.data import load_preprocess, load_split
    from tasks.export import write_onnx_variant
    from tasks.train import load_baseline

    preprocess = load_preprocess(Path(data_dir))
    test_x = preprocess.normalize(load_split(Path(data_dir), "test").x)
    return write_onnx_variant(
        load_baseline(Path(baseline_dir)),
        preprocess,
        test_x,
        Path(out_dir),
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256=baseline_sha256,
    )


@task(name="compress", cache_policy=CACHED, task_run_name="compress-{name}")
def compress_task(
    name: str,
    cfg: VariantConfig,
    seed: int,
    source_key: str,
    data_dir: str,
    baseline_dir: str,
    source_dir: str,
    out_dir: str,
) -> VariantRecord:
    """Build one variant (source_key: content hash of everything it starts from)."""
    from tasks.compress import build_variant

    return build_variant(
        name, cfg, seed, Path(data_dir), Path(baseline_dir), Path(source_dir), Path(out_dir)
    )


@task(name="evaluate", cache_policy=CACHED)
def evaluate_task(
    model_hashes: dict[str, str | None], variant_dirs: dict[str, str], data_dir: str, out_dir: str
) -> dict[str, Any]:
    """Every variant in its own runtime on the test split; metrics and per-sample predictions."""
    import shutil

    from tasks.data import load_split
    from tasks.evaluate import evaluate, write_evaluation

    # evaluate() reads <dir>/<name>: lay the variant dirs out side by side under one folder
    staging = Path(out_dir) / "variants"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, directory in variant_dirs.items():
        (staging / name).symlink_to(Path(directory).resolve(), target_is_directory=True)
    names = [n for n in variant_dirs if n != "baseline"]
    evaluation = evaluate(staging, names, load_split(Path(data_dir), "test"))
    write_evaluation(
        evaluation, Path(out_dir) / "metrics", Path(out_dir) / "plots" / "accuracy_vs_size.json"
    )
    return read_json(Path(out_dir) / "metrics" / "variants.json")


@task(name="benchmark", task_run_name="benchmark-on-{runner}")
def local_benchmark_task(
    runner: str,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    variant_dirs: dict[str, str],
    images_file: str,
) -> list[BenchmarkRow]:
    """A runner profile measured on this machine: each variant in a fresh process, one at a time."""
    from flows.benchmark import benchmark_variants

    dirs = {name: Path(directory) for name, directory in variant_dirs.items()}
    return benchmark_variants(runner, profile, cfg, dirs, Path(images_file))


@task(name="validate")
def validate_task(
    metrics: dict[str, Any],
    predictions_file: str,
    bench: list[BenchmarkRow],
    gates: GatesConfig,
    docs_dir: str,
) -> dict[str, GateVerdict]:
    """Great Expectations metrics suite per variant, with the paired statistical drop gate."""
    import numpy as np

    from tasks.validate import gate_variants, paired_drop_interval

    with np.load(predictions_file) as saved:
        predictions = {key: saved[key] for key in saved.files}
    p50: dict[str, dict[str, float]] = {}  # variant → runner → p50
    for row in bench:
        if row.status == "ok" and row.p50_ms is not None:
            p50.setdefault(row.variant, {})[row.runner] = row.p50_ms
    results = gate_variants(metrics, predictions, p50, gates, docs_dir=Path(docs_dir))
    uppers = {  # the bound the drop gate judges, shown to the reviewer
        name: paired_drop_interval(
            predictions["labels"],
            predictions["pred__baseline"],
            predictions[f"pred__{name}"],
            gates.confidence,
        )[2]
        for name in results
        if f"pred__{name}" in predictions and metrics[name]["status"] == "ok"
    }
    return {
        name: _verdict(result, metrics[name], uppers.get(name)) for name, result in results.items()
    }


def _verdict(result: Any, row: dict[str, Any], drop_upper: float | None) -> GateVerdict:
    if row["status"] != "ok":  # skipped/failed variants: their own reason says more than the gate
        return GateVerdict(False, f"{row['status']}: {row.get('reason')}")
    return GateVerdict(result.success, "" if result.success else result.describe(), drop_upper)


@task(name="review")
def review_task(
    model: str,
    inputs: dict[str, Any],
    metrics: dict[str, Any],
    bench: list[BenchmarkRow],
    verdicts: dict[str, GateVerdict],
    published: dict[str, dict[str, Any]],
    who: str,
    run_dir: str,
) -> tuple[str, dict[str, str]]:
    """Prefect artifacts for the reviewer: table, summary markdown, Pareto plot.

    Returns the approval form's text (narrow: it renders in a small scroll box) and each
    passing variant's toggle label with its key numbers.
    """
    import base64

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = review_rows(metrics, bench, verdicts)
    write_json(Path(run_dir) / "review.json", rows)
    changes = changes_vs_published(metrics, published, bench)
    summary = summary_markdown(model, inputs, rows, changes)
    plot = pareto_plot(metrics, bench, verdicts, Path(run_dir) / "pareto.png")
    key = _artifact_key(model)
    create_table_artifact(
        table=rows, key=f"{key}-variants", description="Variants: metrics, latency, gates"
    )
    create_markdown_artifact(markdown=summary, key=f"{key}-summary", description="Run summary")
    encoded = base64.b64encode(plot.read_bytes()).decode()
    create_markdown_artifact(
        markdown=f"![Pareto plot](data:image/png;base64,{encoded})\n\nFile: `{plot.resolve()}`",
        key=f"{key}-pareto",
        description="Accuracy vs latency (marker area ∝ size)",
    )
    passing = [name for name in metrics if verdicts.get(name, GateVerdict(False, "")).passed]
    numbers = {name: key_numbers(name, metrics[name], verdicts[name], bench) for name in passing}
    rejected = [name for name in metrics if name not in numbers]
    form = form_markdown(model, numbers, rejected, changes, who)
    return form, {name: toggle_title(name, n) for name, n in numbers.items()}


@task(name="record-decision", retries=3, retry_delay_seconds=[2, 5, 15])
def record_decision_task(
    cfg: RegistryConfig, model: str, run_id: str, record: dict[str, Any]
) -> str:
    """Keep the review's decision with the model (registry `decisions/`); shown on the run too."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.registry import open_registry

    uri = open_registry(cfg).record_decision(model, run_id, record)
    create_markdown_artifact(
        markdown=_decision_markdown(record, uri),
        key=f"{_artifact_key(model)}-decision",
        description=f"Review decision: {record['outcome']}",
    )
    return uri


@task(name="publish")
def publish_task(
    cfg: RegistryConfig, model: str, version: str, entries: dict[str, Any], lineage: dict[str, Any]
) -> str:
    """Upload the approved variants, then the manifest; returns the manifest's URI."""
    from tasks.registry import open_registry

    return open_registry(cfg).publish(model, version, entries, lineage).uri


# ---- the flow ------------------------------------------------------------------------------


@flow(name="nightly", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
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
    logger = get_run_logger()
    params = load_params(params_file, overrides)
    approval = approval or params.review.approval
    registry_cfg = (
        params.registry.model_copy(update={"uri": registry_uri})
        if registry_uri
        else params.registry
    )
    model_name = params.registry.model_name
    # before any work: an unreachable registry or a bad version would otherwise fail at the end
    previous = _check_registry(registry_cfg, model_name, version)
    root = Path(params_file).resolve().parent
    work = Path(workdir).resolve()
    run_dir = work / "runs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)

    # fetch: versioned inputs through DVC, or local files; every key below holds their sha256
    params, lineage_inputs = _fetch_inputs(params, model_rev, data_rev, work / "inputs", root)
    data_key = _key(
        params.data, params.seed, lineage_inputs["data_sha256"], code_sha256("tasks.data")
    )
    data_dir = prepare_task(
        params.data, params.seed, data_key, str(root), str(work / "data" / data_key)
    )
    check_data_task(data_dir, params.gates.data, str(run_dir / "data-docs" / "data"))

    # a trained baseline is fixed by the data, train params, seed and the training code
    input_hashes = {k: v for k, v in lineage_inputs.items() if k.endswith("_sha256")}
    base_key = _key(
        data_key,
        params.baseline,
        params.train,
        params.seed,
        input_hashes,
        code_sha256("tasks.train", "tasks.models"),
    )
    baseline = baseline_task(
        params.baseline,
        params.train,
        data_dir,
        params.seed,
        base_key,
        str(root),
        str(work / "baseline" / base_key),
    )
    baseline_dir = str(work / "baseline" / base_key)
    hints = _import_hints(params, baseline, data_dir)
    for hint in hints:
        logger.warning(hint)
    export_key = _key(base_key, code_sha256("tasks.export"))
    variants_root = work / "variants" / export_key
    export_future = export_task.submit(
        baseline["sha256"], baseline_dir, data_dir, str(variants_root / "baseline")
    )

    # fan out: every variant in parallel, combinations after their source
    futures: dict[str, Any] = {"baseline": export_future}
    dirs = {"baseline": str(variants_root / "baseline")}
    keys = {"baseline": export_key}
    for name, cfg in _in_dependency_order(params.variants):
        technique_code = code_sha256("tasks.compress", *technique_of(cfg).modules)
        keys[name] = _key(keys[cfg.source], name, cfg, technique_code)
        dirs[name] = str(variants_root / f"{name}-{keys[name]}")
        futures[name] = compress_task.submit(
            name,
            cfg,
            params.seed,
            keys[cfg.source],
            data_dir,
            baseline_dir,
            dirs[cfg.source],
            dirs[name],
            wait_for=[futures[cfg.source]],
        )
    records: dict[str, VariantRecord] = {name: future.result() for name, future in futures.items()}
    cached = [name for name, future in futures.items() if future.state.name == "Cached"]
    logger.info("variants: %s", ", ".join(f"{n}={r.status}" for n, r in records.items()))

    variant_hashes = {n: record.model_sha256 or record.status for n, record in records.items()}
    # the same models on other data (or by other evaluation code) give other metrics
    eval_key = _key(variant_hashes, data_key, code_sha256("tasks.evaluate", "tasks.runtime"))
    eval_dir = work / "evaluations" / eval_key
    metrics = evaluate_task(variant_hashes, dirs, data_dir, str(eval_dir))

    ok = [name for name, record in records.items() if record.status == "ok"]
    engine_requests = {  # built on a runner of the kind that will run them (TensorRT: cuda)
        name: {
            "source_key": cfg.source,
            "config": cfg.model_dump(),
            "build_on": technique_of(cfg).build_on,
        }
        for name, cfg in params.variants.items()
        if technique_of(cfg).build_on is not None
        and records[name].status == "skipped"
        and cfg.source in ok
    }
    bench, engines = _run_benchmarks(
        params, {name: dirs[name] for name in ok}, data_dir, run_dir, engine_requests
    )
    predictions_file = eval_dir / "metrics" / "predictions.npz"
    if engines:
        predictions_file = _merge_engines(
            engines, params, metrics, records, dirs, predictions_file, variants_root, run_dir
        )

    verdicts = validate_task(
        metrics,
        str(predictions_file),
        bench,
        params.gates,
        str(run_dir / "data-docs" / "metrics"),
    )
    inputs_summary = {
        **lineage_inputs,
        "baseline_sha256": baseline["sha256"],
        "run_dir": str(run_dir),
        "last_published_version": previous["version"] if previous else None,
    }

    form_text, titles = review_task(
        model_name,
        inputs_summary,
        metrics,
        bench,
        verdicts,
        _last_published(registry_cfg, model_name, list(metrics)),
        who_may_approve(params.review.approvers),
        str(run_dir),
    )
    rejected = {name: verdict.reason for name, verdict in verdicts.items() if not verdict.passed}
    passing = [name for name in metrics if verdicts.get(name, GateVerdict(False, "")).passed]
    result = dict(
        model=model_name,
        rejected=rejected,
        registry_uri=registry_cfg.uri,
        run_dir=str(run_dir),
        cached_tasks=cached,
        table=format_table(metrics),
        hints=hints,
    )
    if not passing:
        logger.warning("no variant passed every gate: nothing to review or publish")
        _tag_run("nothing-passed")
        return NightlyResult(
            version=None, status="nothing-passed", published=[], approval=None, **result
        )

    # approval: a person in the Prefect UI, or the explicit auto policy. Every decision (and
    # every refused submission) is recorded in the registry beside the versions.
    run = _run_link()

    def record(outcome: str, decision: dict[str, Any] | None) -> str:
        entry = _decision_record(model_name, outcome, decision, passing, rejected, run)
        return record_decision_task(registry_cfg, model_name, run["flow_run_id"], entry)

    decision = _ask_for_approval(
        passing, form_text, titles, approval, params.review, review_poll_s, record
    )
    if decision is None:
        uri = record("timed-out", None)
        logger.warning(
            "review timed out after %ss: nothing published (decision recorded: %s)",
            params.review.timeout_s,
            uri,
        )
        _tag_run("review-timed-out")
        return NightlyResult(
            version=None,
            status="review-timed-out",
            published=[],
            approval=None,
            decision_uri=uri,
            **result,
        )
    approved = [name for name in passing if name in decision["approved"]]
    if not approved:
        uri = record("nothing-approved", decision)
        logger.warning(
            "nothing approved by %s (not approved: %s; comment: %r): nothing published "
            "(decision recorded: %s)",
            decision["approved_by"],
            ", ".join(passing),
            decision["comment"],
            uri,
        )
        _tag_run("nothing-approved")
        return NightlyResult(
            version=None,
            status="nothing-approved",
            published=[],
            approval=decision,
            decision_uri=uri,
            **result,
        )
    same_as = (
        None if publish_unchanged else _unchanged_since(previous, lineage_inputs, approved, dirs)
    )
    if same_as is not None:
        reason = f"the approved files and inputs equal version {same_as}'s"
        uri = record("unchanged", decision | {"reason": reason})
        logger.info(
            "unchanged since version %s: nothing published (decision recorded: %s)", same_as, uri
        )
        _tag_run("unchanged")
        return NightlyResult(
            version=None,
            status="unchanged",
            published=[],
            approval=decision,
            decision_uri=uri,
            unchanged_since=same_as,
            **result,
        )
    decision = decision | run | {"decision": record("approved", decision)}

    # a new version number is claimed with a conditional write, only now that the decision is
    # valid and the publish can go through: two runs never get the same one
    version = version or _allocate_version(registry_cfg, model_name)
    entries = _publish_entries(approved, records, dirs, metrics, verdicts, bench, decision)
    lineage = _lineage(params, lineage_inputs, baseline, model_rev, data_rev, root)
    manifest_uri = publish_task(registry_cfg, model_name, version, entries, lineage)
    logger.info(
        "published %s version %s: %s approved by %s → %s",
        model_name,
        version,
        ", ".join(approved),
        decision["approved_by"],
        manifest_uri,
    )
    _tag_run("published")
    return NightlyResult(
        version=version,
        status="published",
        published=approved,
        approval=decision,
        manifest_uri=manifest_uri,
        decision_uri=decision["decision"],
        **result,
    )


# ---- helpers (plain, no Prefect state) ------------------------------------------------------


def _fetch_inputs(
    params: Params, model_rev: str | None, data_rev: str | None, dest: Path, root: Path
) -> tuple[Params, dict[str, Any]]:
    """Fetch the model and data at their revs and point params at the fetched files; hash the
    local ones. The lineage names the sha256 of every input file either way."""
    cfg = params.fetch
    model_rev, data_rev = model_rev or cfg.model_rev, data_rev or cfg.data_rev
    if cfg.repo is None and (model_rev or data_rev):
        raise ConfigError("fetch.repo: model_rev/data_rev given but no DVC repo is configured")
    lineage: dict[str, Any] = {"repo": cfg.repo} if cfg.repo else {}
    updates: dict[str, Any] = {}
    if cfg.repo and cfg.data_path:
        fetched = fetch_task(cfg, cfg.data_path, data_rev or "HEAD", "data_rev", str(dest))
        lineage |= {"data": "npz"} | _fetched_lineage("data", fetched)
        updates["data"] = params.data.model_copy(
            update={"source": "npz", "path": str(fetched.local_path)}
        )
    else:
        lineage |= data_lineage(params.data, root)
    if cfg.repo and cfg.model_path:
        fetched = fetch_task(cfg, cfg.model_path, model_rev or "HEAD", "model_rev", str(dest))
        lineage |= {"model": "pt2"} | _fetched_lineage("model", fetched)
        updates["baseline"] = BaselineConfig(source="pt2", path=str(fetched.local_path))
    else:
        lineage |= model_lineage(params.baseline, root)
    return params.model_copy(update=updates), lineage


def _import_hints(params: Params, baseline: dict[str, Any], data_dir: str) -> list[str]:
    """What to check when an imported baseline scores far below its accuracy gate."""
    from tasks.data import load_preprocess
    from tasks.train import import_hint

    hint = import_hint(
        params.baseline.source,
        baseline["test_accuracy"],
        params.gates.for_variant("baseline").min_accuracy,
        load_preprocess(Path(data_dir)),
    )
    return [hint] if hint else []


def _run_benchmarks(
    params: Params,
    variant_dirs: dict[str, str],
    data_dir: str,
    run_dir: Path,
    engine_requests: dict[str, dict[str, Any]],
) -> tuple[list[BenchmarkRow], dict[str, dict[str, Any]]]:
    """Runners with a work pool get the variants through the artifact store and run in parallel;
    profiles without one are measured here, one variant at a time."""
    import numpy as np

    from flows.benchmark import dispatch_task, upload_inputs
    from tasks.data import load_split
    from tasks.store import ArtifactStore

    cfg = params.benchmark
    profiles = {name: params.runners[name] for name in cfg.runners}
    images = load_split(Path(data_dir), "test").x
    futures = []
    remote = {name: p for name, p in profiles.items() if p.work_pool}
    if remote:
        store = ArtifactStore(cfg.store_uri, endpoint_url=cfg.store_endpoint_url)
        keys, images_key = upload_inputs(store, run_dir.name, variant_dirs, images)
        engine_requests = {  # source names → their store keys
            name: spec | {"source_key": keys[spec["source_key"]]}
            for name, spec in engine_requests.items()
        }
        futures = [
            dispatch_task.submit(
                name,
                profile,
                cfg,
                store.uri,
                cfg.store_endpoint_url,
                keys,
                images_key,
                f"runs/{run_dir.name}/{name}.json",
                {n: r for n, r in engine_requests.items() if r["build_on"] == profile.kind} or None,
            )
            for name, profile in remote.items()
        ]
    images_file = run_dir / "test-images.npz"
    np.savez(images_file, x=images)
    rows: list[BenchmarkRow] = []
    for name, profile in profiles.items():
        if not profile.work_pool:
            rows += local_benchmark_task(name, profile, cfg, variant_dirs, str(images_file))
    engines: dict[str, dict[str, Any]] = {}
    for future in futures:
        runner_rows, built = future.result()
        rows += runner_rows
        engines |= built
    return rows, engines


def _merge_engines(
    engines: dict[str, dict[str, Any]],
    params: Params,
    metrics: dict[str, Any],
    records: dict[str, VariantRecord],
    dirs: dict[str, str],
    predictions_file: Path,
    variants_root: Path,
    run_dir: Path,
) -> Path:
    """Engines built on a CUDA runner join the run: their files, their metrics (from the logits the
    runner computed on the test images) and their per-sample predictions for the gates."""
    import io

    import numpy as np

    from tasks.evaluate import metrics_row, model_size
    from tasks.store import ArtifactStore

    store = ArtifactStore(
        params.benchmark.store_uri, endpoint_url=params.benchmark.store_endpoint_url
    )
    with np.load(predictions_file) as saved:
        predictions = {key: saved[key] for key in saved.files}
    base_dir = Path(dirs["baseline"])
    for name, built in engines.items():
        directory = store.get_dir(built["key"], variants_root / f"{name}-engine-{_key(built)}")
        logits = np.load(io.BytesIO(store.get_bytes(built["logits_key"])))
        records[name], dirs[name] = read_record(directory), str(directory)
        row = metrics_row(
            records[name],
            logits,
            predictions["logits__baseline"],
            predictions["labels"],
            model_size(directory),
            model_size(base_dir),
        )
        metrics[name] = asdict(row)
        predictions[f"logits__{name}"], predictions[f"pred__{name}"] = logits, logits.argmax(1)
    merged = run_dir / "predictions.npz"
    np.savez(merged, **predictions)
    return merged


def _fetched_lineage(kind: str, fetched: FetchedFile) -> dict[str, str]:
    return {
        f"{kind}_path": fetched.path,
        f"{kind}_rev": fetched.rev,
        f"{kind}_commit": fetched.commit,
        f"{kind}_sha256": fetched.sha256,
    }


def _in_dependency_order(variants: dict[str, VariantConfig]) -> list[tuple[str, VariantConfig]]:
    ordered: list[tuple[str, VariantConfig]] = []
    placed = {"baseline"}
    pending = dict(variants)
    while pending:
        ready = [name for name, cfg in pending.items() if cfg.source in placed]
        for name in ready:
            ordered.append((name, pending.pop(name)))
            placed.add(name)
    return ordered


def _key(*parts: Any) -> str:
    """A short content hash of JSON-able parts (pydantic models by their values)."""

    def plain(value: Any) -> Any:
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _artifact_key(model: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in model.lower()).strip("-") or "model"


def _ask_for_approval(
    passing: list[str],
    form_text: str,
    titles: dict[str, str],
    approval: str,
    review: ReviewConfig,
    poll_s: int,
    record: Callable[[str, dict[str, Any]], str],
) -> dict[str, Any] | None:
    """Auto policy, or pause for the reviewer's form; None when the review timed out.

    A blank name is refused by the form's schema before the run resumes. A reviewer not on
    review.approvers is refused here (so that the refusal can be recorded, with `record`):
    the run pauses again with the reason above the form, within the same overall timeout.
    """
    import time

    now = datetime.now(UTC).isoformat(timespec="seconds")
    if approval == "auto":
        return {
            "approved": passing,
            "not_approved": [],
            "approved_by": "auto-approved by policy",
            "approved_at": now,
            "comment": "",
            "identity": "auto-approval policy",
        }
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    from flows.approval import (
        approval_form,
        approver_name,
        decision_from_form,
        identity,
        refusal,
    )

    logger = get_run_logger()
    how = identity(review.approvers, _behind_auth())
    deadline = time.monotonic() + review.timeout_s
    notice, attempt = "", 1
    while (remaining := round(deadline - time.monotonic())) > 0:
        form = approval_form(passing, notice + form_text, titles)
        try:
            answer = pause_flow_run(
                wait_for_input=form,
                timeout=remaining,
                poll_interval=poll_s,
                key="review" if attempt == 1 else f"review-{attempt}",
            )
        except FlowPauseTimeout:
            return None
        decision = decision_from_form(answer, passing) | {"identity": how}
        why = refusal(decision["approved_by"], review.approvers)
        if why is None:
            return decision | {
                "approved_by": approver_name(decision["approved_by"], review.approvers)
            }
        uri = record("refused", decision | {"reason": why})
        logger.warning("review refused: %s (recorded: %s); the run waits for an approver", why, uri)
        notice, attempt = f"**Refused:** {why}.\n\n", attempt + 1
    return None


def _behind_auth() -> bool:
    """Whether this process talks to a Prefect API with HTTP basic auth (the stack's server)."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.auth_string is not None


def _run_link() -> dict[str, str]:
    """This flow run's id and its page in the Prefect UI (PREFECT_UI_URL, or from the API URL)."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    run_id = flow_run.get_id() or "local"
    return {"flow_run_id": run_id, "flow_run_url": url_for("flow-run", obj_id=run_id) or ""}


def _tag_run(tag: str) -> None:
    """Tag this flow run with its outcome, so a run list shows e.g. "nothing-approved"."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            tags = client.read_flow_run(UUID(run_id)).tags
            client.update_flow_run(UUID(run_id), tags=sorted({*tags, tag}))
    except Exception as exc:  # a label: never fail a run (after a publish, say) for want of it
        get_run_logger().warning("could not tag the run %r: %s", tag, exc)


def _decision_record(
    model: str,
    outcome: str,
    decision: dict[str, Any] | None,
    offered: list[str],
    rejected: dict[str, str],
    run: dict[str, str],
) -> dict[str, Any]:
    """What the registry keeps of a review decision: approved | unchanged (approved, but equal to
    the last version: nothing published) | nothing-approved | refused | timed-out, what was offered, who decided (and how we know), when and why."""
    decision = decision or {}
    approved = decision.get("approved", []) if outcome in ("approved", "unchanged") else []
    return {
        "schema": 1,
        "model": model,
        "outcome": outcome,
        "offered": offered,
        "approved": approved,
        "not_approved": [name for name in offered if name not in approved],
        "requested": decision.get("approved", []) if outcome == "refused" else None,
        "rejected_by_gates": rejected,
        "reviewer": decision.get("approved_by"),
        "identity": decision.get("identity"),
        "comment": decision.get("comment", ""),
        "reason": decision.get("reason"),
        "decided_at": decision.get("approved_at")
        or datetime.now(UTC).isoformat(timespec="seconds"),
        **run,
    }


def _decision_markdown(record: dict[str, Any], uri: str) -> str:
    """The decision artifact: one small table a reviewer reads at a glance."""
    rows = [
        ("outcome", f"**{record['outcome']}**"),
        ("approved", ", ".join(record["approved"]) or "none"),
        ("not approved", ", ".join(record["not_approved"]) or "none"),
        ("rejected by the gates", ", ".join(record["rejected_by_gates"]) or "none"),
        ("by", f"{record['reviewer'] or '-'} ({record['identity'] or 'no reviewer'})"),
        ("when", record["decided_at"]),
        ("comment", record["comment"] or "-"),
        ("record", f"`{uri}`"),
    ]
    if record["reason"]:
        rows.insert(1, ("reason", record["reason"]))
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows]
    return f"### Review decision: {record['outcome']}\n\n" + "\n".join(lines)


def _allocate_version(cfg: RegistryConfig, model: str) -> str:
    from tasks.registry import open_registry

    return open_registry(cfg).allocate_version(model)


def _last_published(cfg: RegistryConfig, model: str, variants: list[str]) -> dict[str, Any]:
    """Each variant's own last published entry (with its version): the review compares with it."""
    from tasks.registry import open_registry

    return open_registry(cfg).last_published(model, variants)


def _check_registry(cfg: RegistryConfig, model: str, version: str | None) -> dict[str, Any] | None:
    """Check `version`'s name, that it is not published yet and that the registry answers;
    returns the last manifest."""
    from tasks.registry import RegistryError, check_name, open_registry

    if version is not None:
        check_name("version", version)  # the registry's own naming rule
    registry = open_registry(cfg)
    versions = registry.list_versions(model)
    if version in versions:  # versions are immutable: publishing would fail after all the work
        raise RegistryError(
            f"version {version!r}: {model} {version} is already published in {registry.uri}; "
            f"versions are immutable: choose another, or leave --version out for the next number"
        )
    return registry.read_manifest(model, versions[-1]) if versions else None


def _unchanged_since(
    previous: dict[str, Any] | None,
    inputs: dict[str, Any],
    approved: list[str],
    dirs: dict[str, str],
) -> str | None:
    """The last published version if it holds exactly these approved files from the same
    inputs: publishing again would only add a byte-identical copy."""
    return unchanged_since(previous, inputs, {name: Path(dirs[name]) for name in approved})


def _publish_entries(
    approved: list[str],
    records: dict[str, VariantRecord],
    dirs: dict[str, str],
    metrics: dict[str, Any],
    verdicts: dict[str, GateVerdict],
    bench: list[BenchmarkRow],
    decision: dict[str, Any],
) -> dict[str, Any]:
    from tasks.registry import PublishEntry

    formats = {"onnxruntime": "onnx", "litert": "tflite", "tensorrt": "tensorrt"}
    # who approved, how that identity was established, and the review it came from
    approval_record = {
        k: decision.get(k)
        for k in (
            "approved_by",
            "approved_at",
            "comment",
            "identity",
            "flow_run_id",
            "flow_run_url",
            "decision",
        )
    }
    entries = {}
    for name in approved:
        record = read_record(Path(dirs[name]))
        entries[name] = PublishEntry(
            directory=Path(dirs[name]),
            format=formats[str(record.runtime)],
            input=asdict(record.input) | {"preprocess": record.preprocess} if record.input else {},
            metrics=metrics[name] | {"benchmarks": [asdict(b) for b in bench if b.variant == name]},
            gates={"passed": verdicts[name].passed, "reason": verdicts[name].reason},
            approval=approval_record,
            output=asdict(record.output) if record.output else {},
            data=record.data or {},
        )
    return entries


def _lineage(
    params: Params,
    inputs: dict[str, Any],
    baseline: dict[str, Any],
    model_rev: str | None,
    data_rev: str | None,
    root: Path,
) -> dict[str, Any]:
    return {
        "git_commit": _git_commit(root),
        "model_rev": inputs.get("model_rev", model_rev),
        "data_rev": inputs.get("data_rev", data_rev),
        "inputs": inputs,
        "baseline_sha256": baseline["sha256"],
        "params": params.model_dump(mode="json"),
        "libraries": _library_versions(),
    }


def _git_commit(root: Path) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def main(argv: list[str] | None = None) -> None:
    """`modelpress nightly`: run the flow once, here, and print where everything went."""
    import argparse

    from tasks.cli_support import run_main

    parser = argparse.ArgumentParser(prog="modelpress nightly", description=nightly.description)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model-rev")
    parser.add_argument("--data-rev")
    parser.add_argument("--approval", choices=["ui", "auto"])
    parser.add_argument("--registry-uri")
    parser.add_argument("--version")
    parser.add_argument("--workdir", default=".modelpress")
    parser.add_argument(
        "--verbose", action="store_true", help="show the converters' output (TensorFlow's)"
    )
    parser.add_argument(
        "--publish-unchanged",
        action="store_true",
        help="publish a new version even when its files equal the last published version's",
    )
    args = parser.parse_args(argv)
    if args.verbose:
        from tasks.quiet import show_converter_output

        show_converter_output()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_UserErrorWithoutTraceback())
    _say_user_errors_once(logging.getLogger())

    def run() -> None:
        from prefect.exceptions import PrefectHTTPStatusError

        try:
            result = nightly(
                params_file=args.params,
                model_rev=args.model_rev,
                data_rev=args.data_rev,
                approval=args.approval,
                registry_uri=args.registry_uri,
                version=args.version,
                workdir=args.workdir,
                publish_unchanged=args.publish_unchanged,
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 401:
                raise ServerAuthError.from_settings() from None
            raise
        finally:
            _deliver_prefect_queues()
        print(_result_text(result))

    run_main(run)


class ServerAuthError(ModelPressError):
    """The Prefect server wants a credential (the stack's auth string) this client lacks."""

    @classmethod
    def from_settings(cls) -> ServerAuthError:
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        url = PREFECT_API_URL.value()
        hint = 'for the local stack: eval "$(infra/stack.sh env)"'
        if PREFECT_API_AUTH_STRING.value():  # never echoed: it is the secret
            return cls(
                f"the Prefect server at {url} refused PREFECT_API_AUTH_STRING (401; "
                f"rotated? {hint})"
            )
        return cls(
            f"the Prefect server at {url} wants a credential (401): set "
            f"PREFECT_API_AUTH_STRING ({hint})"
        )


class _UserErrorWithoutTraceback(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; for a user mistake
    (ModelPressError) the CLI's one `error:` line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ModelPressError):
            record.modelpress_error = str(record.exc_info[1])  # for _UserErrorOnce
            record.exc_info, record.exc_text = None, None
        return True


class _UserErrorOnce(logging.Filter):
    """On the console a user mistake is said once, by the CLI's `error:` line: Prefect's "Task
    run failed with exception", "Encountered exception" and "Finished in state Failed(...)"
    lines would repeat it three or four times. Only the console's copy is changed: the run's
    log in the UI keeps Prefect's lines whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "modelpress_error", None) is not None:
            return False  # "failed with exception: <the error>": the error line says it
        message = record.getMessage()
        # "Finished in state Failed('... an exception DataError: <the error>')"
        names = "|".join(sorted(_names(ModelPressError)))
        match = re.search(rf"\b(?:{names}): (.+?)(['\"]\))?$", message)
        if match:
            record.msg = f"{message[: match.start(1)]}see the error line{match.group(2) or ''}"
            record.args = ()
        return True


def _names(cls: type) -> set[str]:
    return {cls.__name__}.union(*(_names(sub) for sub in cls.__subclasses__()))


def _say_user_errors_once(root: logging.Logger) -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    once = _UserErrorOnce()
    for handler in root.handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(once)


def _deliver_prefect_queues() -> None:
    """Send Prefect's queued logs and events now: drained at exit, they would print after the
    CLI's last line."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5, at_exit=False)
    EventsWorker.drain_all(timeout=5, at_exit=False)


def _result_text(result: NightlyResult) -> str:
    lines = [result.table, ""] if result.table else []
    lines += [
        f"nightly: {result.status} — model {result.model}"
        + (f" version {result.version}" if result.version else "")
    ]
    lines += [f"  published: {', '.join(result.published) or 'nothing'}"]
    if result.unchanged_since:
        lines.append(
            f"  unchanged since version {result.unchanged_since}: the approved files and inputs "
            "are those it holds (--publish-unchanged publishes anyway)"
        )
    lines += [f"  rejected:  {name}: {reason}" for name, reason in result.rejected.items()]
    lines += [f"  check:     {hint}" for hint in result.hints]
    if result.manifest_uri:
        lines.append(f"  manifest:  {result.manifest_uri}")
    if result.decision_uri:
        lines.append(f"  decision:  {result.decision_uri}")
    lines.append(f"  registry:  {result.registry_uri}")
    lines.append(f"  run files: {result.run_dir} (Pareto plot, Data Docs)")
    if quiet.native_log is not None:
        lines.append(f"  converter output: {quiet.native_log} (--verbose prints it here)")
    if result.cached_tasks:
        lines.append(f"  cached:    {', '.join(result.cached_tasks)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
