"""Benchmarks on runners: the `benchmark` flow that runs on a runner's work pool, and the nightly
side that dispatches it (one deployment per pool: `benchmark/<runner>`) and collects its rows.

Variant files and results travel through the artifact store (tasks/store.py). A runner that has no
worker, fails or times out yields failed rows with the reason; it never hangs the nightly flow and
never disappears from the review.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task

from tasks.arrays import Array
from tasks.benchmark import BenchmarkRow, measure_again
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.engines import BuiltEngine, EngineRequest
from tasks.errors import brief
from tasks.io import write_json
from tasks.measuring_process import (
    measure_in_subprocess,
    measurement_context,
    measurement_key,
    reused_row,
)
from tasks.paired_timing import Compare, compare_in_subprocess, compare_with_references
from tasks.runtimes import runs_on
from tasks.store import ArtifactStore
from tasks.variant import read_record

FLOW_NAME = "benchmark"


def benchmark_variants(
    runner: str,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    variant_dirs: dict[str, Path],
    images_file: Path,
    reuse_dir: Path | None = None,
    measure: Callable[..., BenchmarkRow] = measure_in_subprocess,
    compare: Compare | None = compare_in_subprocess,
) -> list[BenchmarkRow]:
    """Every variant this runner can run, one at a time, each in a fresh process; with
    `reuse_dir`, a variant measured before on the same inputs (measurement_key) is not again.
    A reference measured here is measured once more after the others, and so is a variant that
    measured slow against it (measure_again). Then each variant is timed interleaved with its
    references (compare_with_references; `compare` None: not)."""
    records = {name: read_record(directory) for name, directory in variant_dirs.items()}
    rows: dict[str, BenchmarkRow] = {}
    kept_files: dict[str, Path] = {}
    # what every measurement here shares, hashed once for the runner rather than per variant
    context = measurement_context(images_file, runner, profile, cfg) if reuse_dir else ""
    for name, directory in variant_dirs.items():
        record = records[name]
        if not runs_on(record.runtime, profile):
            reason = f"{record.runtime} variants are not measured on {profile.kind} runners"
            rows[name] = BenchmarkRow.failed(name, runner, reason, status="skipped")
            continue
        if reuse_dir is not None:
            kept_files[name] = reuse_dir / f"{measurement_key(directory, context)}.json"
            if kept_files[name].exists():
                rows[name] = reused_row(kept_files[name], name)
                continue
        rows[name] = measure(name, directory, images_file, runner, profile, cfg)
    measured = [name for name, row in rows.items() if row.measured_at and not row.reused]

    def again(name: str) -> BenchmarkRow:
        return measure(name, variant_dirs[name], images_file, runner, profile, cfg)

    sources = {name: record.source for name, record in records.items()}
    measure_again(rows, measured, sources, again, cfg.measure_again_below_speedup)
    for name in measured:
        if name in kept_files and rows[name].status == "ok":
            write_json(kept_files[name], asdict(rows[name]))  # atomic: never half a row
    if compare is not None:
        compare_with_references(
            rows,
            variant_dirs,
            sources,
            images_file,
            runner,
            profile,
            cfg,
            compare,
            reuse_dir,
            context,
        )
    return list(rows.values())


@flow(name=FLOW_NAME, log_prints=True)
def benchmark_runner(
    runner: str,
    profile: dict[str, Any],
    config: dict[str, Any],
    store_uri: str,
    variants: dict[str, str],
    images_key: str,
    result_key: str,
    store_endpoint_url: str | None = None,
    engines: dict[str, dict[str, Any]] | None = None,
) -> int:
    """Runs on the runner: fetch variants from the store, build TensorRT engines when this is a
    CUDA runner, measure, and put the rows (and built engines) back in the store."""
    store = ArtifactStore(store_uri, endpoint_url=store_endpoint_url)
    profile_model = RunnerProfile.model_validate(profile)
    built: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mp-runner-") as work:
        work_dir = Path(work)
        images_file = work_dir / "images.npz"
        images_file.write_bytes(store.get_bytes(images_key))
        dirs = {name: store.get_dir(key, work_dir / name) for name, key in variants.items()}
        rows: list[BenchmarkRow] = []
        if engines:
            engine_dirs, built, rows = build_engines(
                runner, profile_model.kind, engines, store, work_dir, images_file, result_key
            )
            dirs |= engine_dirs
        rows += benchmark_variants(
            runner, profile_model, BenchmarkConfig.model_validate(config), dirs, images_file
        )
    store.put_json(result_key, {"rows": [asdict(r) for r in rows], "engines": built})
    print(f"benchmark on {runner}: {len(rows)} rows, {len(built)} engine(s) → {result_key}")
    return len(rows)


def build_engines(
    runner: str,
    kind: str,
    engines: dict[str, dict[str, Any]],
    store: ArtifactStore,
    work_dir: Path,
    images_file: Path,
    result_key: str,
) -> tuple[dict[str, Path], dict[str, dict[str, Any]], list[BenchmarkRow]]:
    """Build each requested variant whose technique builds on this runner kind (a TensorRT fp16
    engine is specific to the GPU that built it), run it on the test images, and put its files and
    logits in the store for the nightly flow."""
    import io

    from tasks.evaluate import run_variant
    from tasks.techniques import technique_named  # CUDA runners have the full install
    from tasks.techniques.context import BuildContext

    with np.load(images_file) as archive:
        images = archive["x"].astype(np.float32)
    dirs: dict[str, Path] = {}
    built: dict[str, dict[str, Any]] = {}
    rows: list[BenchmarkRow] = []
    for name, spec in engines.items():
        technique = technique_named(spec["config"]["technique"])
        if technique.build_on != kind:
            continue
        source_dir = store.get_dir(spec["source_key"], work_dir / f"{name}-source")
        out = work_dir / name
        # away from the prepared data: preprocess comes from the source's variant.json; an
        # engine build draws no random numbers
        context = BuildContext(name=name, seed=0, source_dir=source_dir, out_dir=out)
        record = technique.build(context, technique.config.model_validate(spec["config"]))
        if record.status != "ok":
            rows.append(
                BenchmarkRow.failed(name, runner, f"engine not built: {record.reason}", "skipped")
            )
            continue
        buffer = io.BytesIO()
        np.save(buffer, run_variant(out, images))
        key = f"{result_key.removesuffix('.json')}/engines/{name}"
        store.put_dir(out, key)
        store.put_bytes(f"{key}.logits.npy", buffer.getvalue())
        built[name] = {
            "key": key,
            "logits_key": f"{key}.logits.npy",
            "build": record.extra.get("build"),
        }
        dirs[name] = out
    return dirs, built, rows


# ---- the nightly side ---------------------------------------------------------------------------


@task(name="dispatch-benchmark", task_run_name="benchmark-on-{runner}")
def dispatch_task(
    runner: str,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    store_uri: str,
    store_endpoint_url: str | None,
    variants: dict[str, str],
    images_key: str,
    result_key: str,
    engines: dict[str, EngineRequest] | None = None,
) -> tuple[list[BenchmarkRow], dict[str, BuiltEngine]]:
    """Run `benchmark/<runner>` on its work pool; any failure becomes failed rows with the reason.
    Returns the rows and the TensorRT engines the runner built (store keys)."""
    names = [*variants, *(engines or {})]
    assert profile.work_pool is not None
    idle = _no_worker_reason(profile.work_pool)
    if idle:
        return [BenchmarkRow.failed(name, runner, idle) for name in names], {}
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run = run_deployment(  # sync here: a flow run, not a coroutine
        f"{FLOW_NAME}/{runner}",
        parameters={
            "runner": runner,
            "profile": profile.model_dump(),
            "config": cfg.model_dump(),
            "store_uri": store_uri,
            "variants": variants,
            "images_key": images_key,
            "result_key": result_key,
            "store_endpoint_url": store_endpoint_url,
            "engines": {name: request.as_json() for name, request in (engines or {}).items()},
        },
        timeout=profile.timeout_s,
    )
    assert isinstance(run, FlowRun)
    state = run.state
    if state is None or not state.is_completed():
        reason = _failure_reason(run, profile)
        get_run_logger().warning("benchmark on %s: %s", runner, reason)
        return [BenchmarkRow.failed(name, runner, reason) for name in names], {}
    result = ArtifactStore(store_uri, endpoint_url=store_endpoint_url).get_json(result_key)
    built = {name: BuiltEngine.from_json(payload) for name, payload in result["engines"].items()}
    return [BenchmarkRow(**row) for row in result["rows"]], built


def _no_worker_reason(pool: str) -> str | None:
    """A reason when no worker polls `pool` (so the run would only wait), else None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            online = client.read_workers_for_work_pool(
                pool,
                worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])),
                limit=10,
                offset=0,
            )
        except ObjectNotFound:
            return f"work pool {pool!r} does not exist (create it and start a worker: see infra/stack.sh)"
    return None if online else f"no worker is polling work pool {pool!r}"


def _failure_reason(run: Any, profile: RunnerProfile) -> str:
    state = run.state
    if state is None or not state.is_final():
        _cancel(run.id)
        name = state.name if state else "unknown"
        return f"timed out after {profile.timeout_s}s in state {name} (runner flow run {run.name})"
    return f"runner flow run {run.name} ended {state.name}: {brief(state.message or '')}"


def _cancel(flow_run_id: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            flow_run_id, Cancelled(message="nightly stopped waiting"), force=True
        )


def upload_inputs(
    store: ArtifactStore, run_key: str, variant_dirs: dict[str, str], images: Array
) -> tuple[dict[str, str], str]:
    """Put the variants (content-addressed by model sha256) and the test images in the store."""
    keys = {}
    for name, directory in variant_dirs.items():
        record = read_record(Path(directory))
        keys[name] = f"variants/{record.model_sha256}/{name}"
        store.put_dir(Path(directory), keys[name])
    with tempfile.TemporaryDirectory(prefix="mp-store-") as work:
        images_file = Path(work) / "images.npz"
        np.savez(images_file, x=images)
        images_key = f"runs/{run_key}/images.npz"
        store.put_bytes(images_key, images_file.read_bytes())
    return keys, images_key


@task(name="benchmark", task_run_name="benchmark-on-{runner}")
def local_benchmark_task(
    runner: str,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    variant_dirs: dict[str, str],
    images_file: str,
    reuse_dir: str | None = None,
) -> list[BenchmarkRow]:
    """A runner profile measured on this machine: each variant in a fresh process, one at a time."""
    dirs = {name: Path(directory) for name, directory in variant_dirs.items()}
    kept = Path(reuse_dir) if reuse_dir else None
    rows = benchmark_variants(runner, profile, cfg, dirs, Path(images_file), kept)
    reused = [f"{r.variant} ({r.measured_at})" for r in rows if r.reused]
    if reused:
        get_run_logger().info(
            "benchmark on %s: %d of %d rows reused, their files, images, runner, settings, host "
            "and runtimes unchanged since measured: %s (benchmark.reuse: false measures again)",
            runner,
            len(reused),
            len(rows),
            ", ".join(reused),
        )
    return rows


def benchmark_on_runners(
    cfg: BenchmarkConfig,
    profiles: dict[str, RunnerProfile],
    variant_dirs: dict[str, str],
    images: Array,
    run_dir: Path,
    engine_requests: dict[str, EngineRequest],
    reuse_dir: Path | None = None,
) -> tuple[list[BenchmarkRow], dict[str, BuiltEngine]]:
    """Runners with a work pool get the variants through the artifact store and run in parallel
    (CUDA runners build the requested engines first); profiles without one are measured here,
    one variant at a time, reusing the rows kept in `reuse_dir` when benchmark.reuse is on."""
    futures = []
    remote = {name: p for name, p in profiles.items() if p.work_pool}
    if remote:
        store = ArtifactStore(cfg.store_uri, endpoint_url=cfg.store_endpoint_url)
        keys, images_key = upload_inputs(store, run_dir.name, variant_dirs, images)
        requests = {  # source names → their store keys
            name: EngineRequest(keys[request.source_key], request.config, request.build_on)
            for name, request in engine_requests.items()
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
                {n: r for n, r in requests.items() if r.build_on == profile.kind} or None,
            )
            for name, profile in remote.items()
        ]
    images_file = run_dir / "test-images.npz"
    np.savez(images_file, x=images)
    rows: list[BenchmarkRow] = []
    for name, profile in profiles.items():
        if not profile.work_pool:
            kept = str(reuse_dir) if reuse_dir is not None and cfg.reuse else None
            rows += local_benchmark_task(name, profile, cfg, variant_dirs, str(images_file), kept)
    engines: dict[str, BuiltEngine] = {}
    for future in futures:
        runner_rows, built = future.result()
        rows += runner_rows
        engines |= built
    return rows, engines
