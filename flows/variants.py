"""Export the baseline, then fan out: every variant built in parallel, a combination after the
variant it starts from. Each variant's directory and cache key are content hashes of everything
it starts from, so an unchanged night finds every variant cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from prefect import Task, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.futures import PrefectFuture

from tasks.config import Params, VariantConfig
from tasks.lineage import code_sha256
from tasks.plan import content_key, in_dependency_order
from tasks.techniques import technique_of
from tasks.variant import VariantRecord

CACHED = INPUTS + TASK_SOURCE  # the expensive tasks: keyed by their inputs and their code

CachedTask = TypeVar("CachedTask", bound=Task)


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


@task(name="export", cache_policy=CACHED)
def export_task(
    baseline_sha256: str, baseline_dir: str, data_dir: str, out_dir: str
) -> VariantRecord:
    """The baseline as ONNX fp32: the reference every variant is compared with."""
    from tasks.export import export_baseline

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
) -> VariantRecord:
    """Build one variant (source_key: content hash of everything it starts from)."""
    from tasks.compress import build_variant

    dirs = (Path(data_dir), Path(baseline_dir), Path(source_dir), Path(out_dir))
    return build_variant(name, cfg, seed, *dirs)


def build_variants(
    params: Params,
    baseline_sha256: str,
    base_key: str,
    baseline_dir: str,
    data_dir: str,
    work: Path,
) -> BuiltVariants:
    """Export the baseline, then build every variant (in dependency order, in parallel)."""
    export_key = content_key(base_key, code_sha256("tasks.export"))
    variants_root = work / "variants" / export_key
    dirs = {"baseline": str(variants_root / "baseline")}
    futures: dict[str, PrefectFuture[VariantRecord]] = {
        "baseline": rerun_if_gone(export_task, dirs["baseline"]).submit(
            baseline_sha256, baseline_dir, data_dir, dirs["baseline"]
        )
    }
    keys = {"baseline": export_key}
    for name, cfg in in_dependency_order(params.variants):
        technique_code = code_sha256("tasks.compress", *technique_of(cfg).modules)
        keys[name] = content_key(keys[cfg.source], name, cfg, technique_code)
        dirs[name] = str(variants_root / f"{name}-{keys[name]}")
        futures[name] = rerun_if_gone(compress_task, dirs[name]).submit(
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
    records = {name: future.result() for name, future in futures.items()}
    cached = [name for name, future in futures.items() if future.state.name == "Cached"]
    return BuiltVariants(variants_root, records, dirs, cached)
