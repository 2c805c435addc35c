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
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.task_runners import ThreadPoolTaskRunner

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
    RunnerProfile,
    TrainConfig,
    VariantConfig,
    load_params,
)
from tasks.errors import ConfigError, ModelPressError
from tasks.fetch import FetchedFile, FetchNotFoundError, fetch_file
from tasks.io import read_json, write_json
from tasks.report import format_table
from tasks.review import (
    GateVerdict,
    changes_vs_published,
    pareto_plot,
    review_rows,
    summary_markdown,
)
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
    status: str  # published | nothing-approved | nothing-passed | review-timed-out
    published: list[str]
    rejected: dict[str, str]
    approval: dict[str, Any] | None
    registry_uri: str
    run_dir: str
    manifest_uri: str | None = None
    cached_tasks: list[str] = field(default_factory=list)
    table: str = ""  # the variants table, as `modelpress table` prints it
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
def prepare_task(cfg: DataConfig, seed: int, source_sha256: str, root: str, out_dir: str) -> str:
    """Load, check and split the data (source_sha256 keys the cache on the data's content)."""
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
    model_sha256: str,
    root: str,
    out_dir: str,
) -> dict[str, Any]:
    """Train the default CNN or import the user's model; returns baseline.json."""
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

    from tasks.validate import gate_variants

    with np.load(predictions_file) as saved:
        predictions = {key: saved[key] for key in saved.files}
    p50: dict[str, dict[str, float]] = {}  # variant → runner → p50
    for row in bench:
        if row.status == "ok" and row.p50_ms is not None:
            p50.setdefault(row.variant, {})[row.runner] = row.p50_ms
    results = gate_variants(metrics, predictions, p50, gates, docs_dir=Path(docs_dir))
    return {name: _verdict(result, metrics[name]) for name, result in results.items()}


def _verdict(result: Any, row: dict[str, Any]) -> GateVerdict:
    if row["status"] != "ok":  # skipped/failed variants: their own reason says more than the gate
        return GateVerdict(False, f"{row['status']}: {row.get('reason')}")
    return GateVerdict(result.success, "" if result.success else result.describe())


@task(name="review")
def review_task(
    model: str,
    inputs: dict[str, Any],
    metrics: dict[str, Any],
    bench: list[BenchmarkRow],
    verdicts: dict[str, GateVerdict],
    previous: dict[str, Any] | None,
    run_dir: str,
) -> str:
    """Prefect artifacts for the reviewer: table, summary markdown, Pareto plot. Returns the summary."""
    import base64

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = review_rows(metrics, bench, verdicts)
    write_json(Path(run_dir) / "review.json", rows)
    summary = summary_markdown(model, inputs, rows, changes_vs_published(metrics, previous))
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
    return summary


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

    # fetch: versioned inputs through DVC (or the embedded default)
    params, lineage_inputs = _fetch_inputs(params, model_rev, data_rev, work / "inputs")
    data_key = _key(params.data, params.seed, lineage_inputs.get("data_sha256"))
    data_dir = prepare_task(
        params.data,
        params.seed,
        lineage_inputs.get("data_sha256") or "embedded",
        str(root),
        str(work / "data" / data_key),
    )
    check_data_task(data_dir, params.gates.data, str(run_dir / "data-docs" / "data"))

    base_key = _key(
        data_key, params.baseline, params.train, params.seed, lineage_inputs.get("model_sha256")
    )
    baseline = baseline_task(
        params.baseline,
        params.train,
        data_dir,
        params.seed,
        lineage_inputs.get("model_sha256") or "trained",
        str(root),
        str(work / "baseline" / base_key),
    )
    baseline_dir = str(work / "baseline" / base_key)
    hints = _import_hints(params, baseline, data_dir)
    for hint in hints:
        logger.warning(hint)
    variants_root = work / "variants" / base_key
    export_future = export_task.submit(
        baseline["sha256"], baseline_dir, data_dir, str(variants_root / "baseline")
    )

    # fan out: every variant in parallel, combinations after their source
    futures: dict[str, Any] = {"baseline": export_future}
    dirs = {"baseline": str(variants_root / "baseline")}
    keys = {"baseline": base_key}
    for name, cfg in _in_dependency_order(params.variants):
        keys[name] = _key(keys[cfg.source], name, cfg)
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

    model_hashes = {name: record.model_sha256 or record.status for name, record in records.items()}
    eval_dir = work / "evaluations" / _key(model_hashes)
    metrics = evaluate_task(model_hashes, dirs, data_dir, str(eval_dir))

    ok = [name for name, record in records.items() if record.status == "ok"]
    engine_requests = {  # engines are built on the CUDA runner that will run them
        name: {"source_key": cfg.source, "config": cfg.model_dump()}
        for name, cfg in params.variants.items()
        if cfg.technique == "tensorrt_fp16"
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
    }
    summary = review_task(
        model_name, inputs_summary, metrics, bench, verdicts, previous, str(run_dir)
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
        return NightlyResult(
            version=None, status="nothing-passed", published=[], approval=None, **result
        )

    # approval: a person in the Prefect UI, or the explicit auto policy
    decision = _ask_for_approval(passing, summary, approval, params.review.timeout_s, review_poll_s)
    if decision is None:
        logger.warning("review timed out after %ss: nothing published", params.review.timeout_s)
        return NightlyResult(
            version=None, status="review-timed-out", published=[], approval=None, **result
        )
    approved = [name for name in passing if name in decision["approved"]]
    if not approved:
        return NightlyResult(
            version=None, status="nothing-approved", published=[], approval=decision, **result
        )

    # a new version number is claimed with a conditional write: two runs never get the same one
    version = version or _allocate_version(registry_cfg, model_name)
    entries = _publish_entries(approved, records, dirs, metrics, verdicts, bench, decision)
    lineage = _lineage(params, lineage_inputs, baseline, model_rev, data_rev, root)
    manifest_uri = publish_task(registry_cfg, model_name, version, entries, lineage)
    logger.info(
        "published %s version %s: %s → %s", model_name, version, ", ".join(approved), manifest_uri
    )
    return NightlyResult(
        version=version,
        status="published",
        published=approved,
        approval=decision,
        manifest_uri=manifest_uri,
        **result,
    )


# ---- helpers (plain, no Prefect state) ------------------------------------------------------


def _fetch_inputs(
    params: Params, model_rev: str | None, data_rev: str | None, dest: Path
) -> tuple[Params, dict[str, Any]]:
    """Fetch the model and data at their revs; point params at the fetched files."""
    cfg = params.fetch
    model_rev, data_rev = model_rev or cfg.model_rev, data_rev or cfg.data_rev
    if cfg.repo is None:
        if model_rev or data_rev:
            raise ConfigError("fetch.repo: model_rev/data_rev given but no DVC repo is configured")
        return params, {"data": params.data.source, "model": params.baseline.source}
    lineage: dict[str, Any] = {"repo": cfg.repo}
    updates: dict[str, Any] = {}
    if cfg.data_path:
        fetched = fetch_task(cfg, cfg.data_path, data_rev or "HEAD", "data_rev", str(dest))
        lineage |= _fetched_lineage("data", fetched)
        updates["data"] = params.data.model_copy(
            update={"source": "npz", "path": str(fetched.local_path)}
        )
    if cfg.model_path:
        fetched = fetch_task(cfg, cfg.model_path, model_rev or "HEAD", "model_rev", str(dest))
        lineage |= _fetched_lineage("model", fetched)
        updates["baseline"] = BaselineConfig(source="pt2", path=str(fetched.local_path))
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
                engine_requests if profile.kind == "cuda" else None,
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
    passing: list[str], summary: str, approval: str, timeout_s: int, poll_s: int
) -> dict[str, Any] | None:
    """Auto policy, or pause for the reviewer's typed form; None when the review timed out."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if approval == "auto":
        return {
            "approved": passing,
            "approved_by": "auto-approved by policy",
            "approved_at": now,
            "comment": "",
        }
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    from flows.approval import approval_form, decision_from_form

    form = approval_form(passing, summary)
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=timeout_s, poll_interval=poll_s, key="review"
        )
    except FlowPauseTimeout:
        return None
    return decision_from_form(answer, passing)


def _allocate_version(cfg: RegistryConfig, model: str) -> str:
    from tasks.registry import open_registry

    return open_registry(cfg).allocate_version(model)


def _check_registry(cfg: RegistryConfig, model: str, version: str | None) -> dict[str, Any] | None:
    """Check `version`'s name and that the registry answers; returns the last manifest."""
    from tasks.registry import check_name, open_registry

    if version is not None:
        check_name("version", version)  # the registry's own naming rule
    registry = open_registry(cfg)
    versions = registry.list_versions(model)
    return registry.read_manifest(model, versions[-1]) if versions else None


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
    approval_record = {k: decision[k] for k in ("approved_by", "approved_at", "comment")}
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
    args = parser.parse_args(argv)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_UserErrorWithoutTraceback())

    def run() -> None:
        try:
            result = nightly(
                params_file=args.params,
                model_rev=args.model_rev,
                data_rev=args.data_rev,
                approval=args.approval,
                registry_uri=args.registry_uri,
                version=args.version,
                workdir=args.workdir,
            )
        finally:
            _deliver_prefect_queues()
        print(_result_text(result))

    run_main(run)


class _UserErrorWithoutTraceback(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; for a user mistake
    (ModelPressError) the CLI's one `error:` line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ModelPressError):
            record.exc_info, record.exc_text = None, None
        return True


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
    lines += [f"  rejected:  {name}: {reason}" for name, reason in result.rejected.items()]
    lines += [f"  check:     {hint}" for hint in result.hints]
    if result.manifest_uri:
        lines.append(f"  manifest:  {result.manifest_uri}")
    lines.append(f"  registry:  {result.registry_uri}")
    lines.append(f"  run files: {result.run_dir} (Pareto plot, Data Docs)")
    if result.cached_tasks:
        lines.append(f"  cached:    {', '.join(result.cached_tasks)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
