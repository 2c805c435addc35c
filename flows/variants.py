"""Export the baseline, then fan out: every variant built in parallel, a combination after the
variant it starts from. Each variant's directory and cache key are content hashes of everything
it starts from, so an unchanged night finds every variant cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner

from flows.runners import (
    LettingGoThreadPoolTaskRunner,
    builder,
    gpu_annotation,
    missing_gpu_reason,
    pin_worker_threads,
)
from tasks.config import TaskRunnerConfig
from tasks.errors import ModelPressError, brief
from tasks.io import atomic_dir
from tasks.lineage import code_sha256
from tasks.params_model import Params
from tasks.plan import content_key, in_dependency_order
from tasks.technique import VariantConfig
from tasks.techniques import technique_of
from tasks.variant import VariantRecord, write_record

# The expensive tasks: keyed by their inputs and their code. Not by `root`, the params file's
# folder: it only resolves relative paths, and what they name is in the keys by content (the data
# and weights' sha256); the same params in another folder would fine-tune the baseline again.
CACHED_INPUTS = INPUTS - "root"
CACHED = CACHED_INPUTS + TASK_SOURCE

CachedTask = TypeVar("CachedTask", bound=Task)


def result_storage(cfg: TaskRunnerConfig, work: Path) -> Path | str:
    """Where the cached tasks keep their results (and so their cache records): not Prefect's
    default ~/.prefect/storage, which is each machine's own; there a Dask worker that took over
    from a lost one found no record of the variants the lost one had finished, and built them
    again."""
    if cfg.result_storage is None:
        return work / "results"
    if cfg.result_storage.startswith("block:"):
        return cfg.result_storage.removeprefix("block:")
    return Path(cfg.result_storage).resolve()


def rerun_if_gone(cached: CachedTask, output: str | Path) -> CachedTask:
    """`cached`, told to run again and refresh its cache record when what it writes is gone.
    Prefect's cache records live in its own storage and outlive a deleted --workdir: a hit would
    hand back a result that names files no longer there. Each output named here is written
    atomically (a directory by tasks.io.atomic_dir, or the last file a task writes), so one that
    exists is whole."""
    if Path(output).exists():
        return cached
    return cast(CachedTask, cached.with_options(refresh_cache=True))


@dataclass(frozen=True)
class BuiltVariants:
    """The baseline's ONNX export and every variant: records, directories, which were cached."""

    root: Path  # the variants' folder, named by the export's key
    records: dict[str, VariantRecord]
    dirs: dict[str, str]
    cached: list[str]
    builders: dict[
        str, str
    ]  # variant → host:pid of the process that built it (cached: first build)


@dataclass(frozen=True)
class Built:
    """A compress task's result: the record, and which process built it (kept out of variant.json
    and of every cache key: the same inputs give the same variant wherever they are built)."""

    record: VariantRecord
    builder: str


@task(name="export", cache_policy=CACHED)
def export_task(
    baseline_sha256: str, baseline_dir: str, data_dir: str, out_dir: str
) -> VariantRecord:
    """The baseline as ONNX fp32: the reference every variant is compared with."""
    from tasks.export import export_baseline

    pin_worker_threads()
    return export_baseline(Path(baseline_dir), baseline_sha256, Path(data_dir), Path(out_dir))


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
) -> Built:
    """Build one variant (source_key: content hash of everything it starts from)."""
    from tasks.compress import build_variant

    dirs = (Path(data_dir), Path(baseline_dir), Path(source_dir), Path(out_dir))
    record = build_variant(name, cfg, seed, *dirs)
    get_run_logger().info("variant %s: %s, built by %s", name, record.status, builder())
    return Built(record, builder())


# unbounded, as Prefect's default: a search builds its whole batch at once; the nightly gives
# params.task_runner's instead (with_options)
BUILD_THREADS: TaskRunner[Any] = LettingGoThreadPoolTaskRunner()


@flow(name="variants", validate_parameters=False, task_runner=BUILD_THREADS)
def build_variants(
    params: Params,
    baseline_sha256: str,
    base_key: str,
    baseline_dir: str,
    data_dir: str,
    work: Path,
    build_timeout_s: float | None = None,
) -> BuiltVariants:
    """Export the baseline, then build every variant (in dependency order, in parallel on the
    task runner the caller gives this subflow: `with_options(task_runner=...)`). A build running
    longer than timeouts.build_s, or than `build_timeout_s` when that is shorter (a search's
    seconds budget bounds the batch in flight), is stopped and its variant fails, saying so."""
    bound: float = params.timeouts.build_s
    if build_timeout_s is not None and build_timeout_s < bound:
        bound, why = build_timeout_s, f"the time left in this run, {build_timeout_s:.0f} s"
    else:
        why = f"timeouts.build_s = {bound} s"
    export_key = content_key(base_key, code_sha256("tasks.export"))
    variants_root = work / "variants" / export_key
    dirs = {"baseline": str(variants_root / "baseline")}
    storage = result_storage(params.task_runner, work)
    export_bounded = rerun_if_gone(export_task, dirs["baseline"]).with_options(
        timeout_seconds=bound, result_storage=storage
    )
    export = export_bounded.submit(baseline_sha256, baseline_dir, data_dir, dirs["baseline"])
    futures: dict[str, PrefectFuture[Any]] = {"baseline": export}
    keys = {"baseline": export_key}
    no_gpu = missing_gpu_reason(params.task_runner)
    never_started: dict[str, str] = {}  # variant → why it was not submitted
    for name, cfg in in_dependency_order(params.variants):
        technique_code = code_sha256("tasks.compress", *technique_of(cfg).modules)
        keys[name] = content_key(keys[cfg.source], name, cfg, technique_code)
        dirs[name] = str(variants_root / f"{name}-{keys[name]}")
        if no_gpu is not None and technique_of(cfg).build_on == "cuda":
            never_started[name] = no_gpu
        elif cfg.source in never_started:
            never_started[name] = f"source '{cfg.source}' is skipped"
        if name in never_started:
            continue
        compress = rerun_if_gone(compress_task, dirs[name]).with_options(
            timeout_seconds=bound, result_storage=storage
        )
        with gpu_annotation(params.task_runner, technique_of(cfg).build_on):
            futures[name] = compress.submit(
                name,
                cfg,
                params.seed,
                keys[cfg.source],
                data_dir,
                baseline_dir,
                dirs[cfg.source],
                dirs[name],
                wait_for=[futures[cfg.source]],
                return_state=False,
            )
    # the baseline's export failing stops the night: there is nothing to compare variants with
    records: dict[str, VariantRecord] = {"baseline": export.result()}
    builders: dict[str, str] = {}
    for name, future in futures.items():
        if name == "baseline":
            continue
        future.wait()
        if future.state.is_completed():
            built = future.result()
            records[name], builders[name] = built.record, built.builder
            if params.task_runner.kind == "dask":  # the worker's own log line reaches the UI only
                get_run_logger().info(
                    "variant %s: %s, built by %s", name, built.record.status, built.builder
                )
            continue
        cfg = params.variants[name]
        records[name] = _did_not_finish(name, cfg, future, records, why)
        # kept apart from the variant's own directory (its cache): the next run builds it again
        dirs[name] = str(variants_root / f"{name}-{keys[name]}.unfinished")
        with atomic_dir(Path(dirs[name])) as staging:
            write_record(staging, records[name])
    for name, reason in never_started.items():
        cfg = params.variants[name]
        get_run_logger().warning("variant %s: skipped: %s", name, reason)
        records[name] = VariantRecord(
            name=name, technique=cfg.technique, status="skipped", source=cfg.source, reason=reason
        )
        # not its cache directory: with a GPU worker the next run builds it
        dirs[name] = str(variants_root / f"{name}-{keys[name]}.skipped")
        with atomic_dir(Path(dirs[name])) as staging:
            write_record(staging, records[name])
    cached = [name for name, future in futures.items() if future.state.name == "Cached"]
    return BuiltVariants(variants_root, records, dirs, cached, builders)


def _did_not_finish(
    name: str,
    cfg: VariantConfig,
    future: PrefectFuture[Any],
    records: dict[str, VariantRecord],
    bound: str,
) -> VariantRecord:
    """The record of a variant whose build raised or crashed (or whose source did): failed, with
    why. One variant's crash (a bug in a technique, a worker process the out-of-memory killer
    ended) fails that variant, not the night. Bad input (a ModelPressError other than the
    variant-level ones, which the build records itself) still stops the night with its line."""
    state = future.state
    if state.is_failed() or state.is_crashed():
        error = future.result(raise_on_failure=False)
        if isinstance(error, ModelPressError):
            raise error
        if isinstance(error, TimeoutError):
            reason = f"{name}: build stopped at its time bound ({bound})"
        elif isinstance(error, BaseException):
            reason = f"{name}: build crashed ({type(error).__name__}): {brief(error)}"
        else:
            reason = f"{name}: build ended {state.name}: {state.message}"
        get_run_logger().error("%s (not cached: the next run builds it again)", reason)
    else:  # NotReady: the source it waited for did not finish
        source = records.get(cfg.source)
        reason = f"source '{cfg.source}' is {source.status if source else 'failed'}"
    return VariantRecord(
        name=name, technique=cfg.technique, status="failed", source=cfg.source, reason=reason
    )
