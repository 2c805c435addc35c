"""The fleet flow: one nightly per model of fleet.yaml, as many at once as a Prefect
concurrency limit lets, each ended within its bound.

mode deployment: each nightly is its own flow run of the `nightly/nightly` deployment
(run_deployment), so any worker of its work pool (another machine, a Kubernetes pod) takes it.
The limit is that deployment's concurrency limit: the server holds it for every run of it (this
fleet, another, the schedule, `prefect deployment run`), the others wait in
AwaitingConcurrencySlot in the UI. A deployment without one gets fleet.yaml's `concurrency`.
mode local: each nightly runs on this machine in its own process, as a child run of the fleet,
holding a slot of the global concurrency limit `modelpress-nightlies` (created with
`concurrency` slots; shown under Concurrency in the UI) while it runs: no deployment or worker
needed, `make run`'s setting.

Every model ends: published (or another nightly status), failed with its reason, or timed out (not
started within start_timeout_s, or running past its bound, then cancelled). One model failing does
not stop the others; the fleet ends Failed, saying how many did, after all have ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed
from prefect.task_runners import TaskRunner

from flows.runners import LettingGoThreadPoolTaskRunner
from tasks.decision import Status
from tasks.fleet import (
    FleetConfig,
    FleetFailed,
    FleetModel,
    FleetResult,
    ModelOutcome,
    entry_errors,
    latest_published,
    load_fleet,
    model_bound_s,
    nightly_parameters,
    one_line,
    summary_markdown,
)
from tasks.processes import stop_process_tree


def _link(flow_run_id: Any) -> str:
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else str(flow_run_id)


def _outcome(name: str, run: Any, parameters: dict[str, Any]) -> ModelOutcome:
    """A finished nightly run's outcome: its status from the tag the nightly gives its run, the
    version and best variant from the registry (readable from here also when the run was on
    another machine, which its return value, in that machine's result storage, is not)."""
    state = run.state
    link = _link(run.id)
    if state is None or not state.is_completed():
        message = (state.message or state.name) if state is not None else "no state"
        error = one_line(str(message)).removeprefix("Flow run encountered an exception: ")
        error = error.removeprefix("Flow run failed due to timeout: ")
        status = "timed-out" if state is not None and state.name == "TimedOut" else "failed"
        return ModelOutcome(name, status, link=link, error=error)
    status = next((tag for tag in run.tags or [] if tag in get_args(Status)), "completed")
    version = best = None
    if status in ("published", "unchanged"):
        version, best = latest_published(parameters)
    return ModelOutcome(name, status, version=version, best_variant=best, link=link)


def _in_subprocess(name: str, parameters: dict[str, Any], bound_s: int) -> ModelOutcome:
    """The nightly in a fresh process, as a child run of this task: two nightlies never share a
    process (torch's ONNX export keeps global state: two at once in one process fail)."""
    from prefect import get_client
    from prefect.context import TaskRunContext
    from prefect.flow_engine import run_flow_in_subprocess

    from flows.nightly import nightly

    # the flow crosses by value (cloudpickle), where its postponed annotations cannot be
    # resolved: the parameters are plain values already
    flow = nightly.with_options(validate_parameters=False)
    context = TaskRunContext.get()
    parent = context.task_run.id if context else None
    with get_client(sync_client=True) as client:
        flow_run = _create_flow_run(client, flow, parameters, parent)
        # this server, also when it is Prefect's temporary one (else the child starts its own)
        env: dict[str, str | None] = {"PREFECT_API_URL": str(client.api_url).rstrip("/")}
        process = run_flow_in_subprocess(flow, flow_run=flow_run, parameters=parameters, env=env)
        process.join(bound_s)
        if process.is_alive():
            stop_process_tree(process.pid or 0)
            why = f"ran past its bound of {bound_s} s (fleet model_timeout_s, else its night's)"
            client.set_flow_run_state(flow_run.id, Cancelled(message=why), force=True)
            return ModelOutcome(name, "timed-out", link=_link(flow_run.id), error=why)
        run = client.read_flow_run(flow_run.id)
    if run.state is None or not run.state.is_final():
        code = process.exitcode
        return ModelOutcome(name, "failed", link=_link(flow_run.id), error=f"exit code {code}")
    return _outcome(name, run, parameters)


def _create_flow_run(client: Any, flow: Any, parameters: dict[str, Any], parent: Any) -> Any:
    """The child's flow run. Two first runs of a flow created at once race to register the
    flow, and the loser got 409 Conflict from the server (seen on a fresh server in CI): the
    flow is registered once before the models start (_register), and a conflict is tried again,
    after a jittered wait: three tries 0.5 s and 1 s apart still lost on a loaded CI machine."""
    import random

    from prefect.exceptions import PrefectHTTPStatusError

    attempts = 6
    for attempt in range(attempts):
        try:
            return client.create_flow_run(flow, parameters=parameters, parent_task_run_id=parent)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 409 or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1) + random.uniform(0.0, 0.5))
    raise AssertionError("unreachable")


def _register_nightly() -> None:
    from prefect import get_client

    from flows.nightly import nightly

    with get_client(sync_client=True) as client:
        client.create_flow(nightly)


NIGHTLIES_LIMIT = "modelpress-nightlies"  # the global concurrency limit of local-mode nightlies
POLL_S = 5.0  # how often the fleet reads its nightlies' states (one request for all of them)


@task(name="model-nightly", task_run_name="nightly-{model.name}")
def model_task(
    model: FleetModel, fleet_file: str, cfg: FleetConfig, extra: dict[str, Any]
) -> ModelOutcome:
    """One model's nightly in its own process here, holding a slot of NIGHTLIES_LIMIT while it
    runs; never raises: its failure is this model's outcome, not the fleet's."""
    from prefect.concurrency.sync import concurrency

    parameters = _parameters(model, fleet_file, extra)
    try:
        bound = model_bound_s(parameters, cfg)
        with concurrency(NIGHTLIES_LIMIT, timeout_seconds=cfg.start_timeout_s, strict=True):
            return _in_subprocess(model.name, parameters, bound)
    except TimeoutError:
        why = f"no slot of {NIGHTLIES_LIMIT} within start_timeout_s = {cfg.start_timeout_s} s"
        return ModelOutcome(model.name, "timed-out", error=why)
    except Exception as exc:  # this model fails, the others go on
        return ModelOutcome(model.name, "failed", error=one_line(f"{type(exc).__name__}: {exc}"))


def _parameters(model: FleetModel, fleet_file: str, extra: dict[str, Any]) -> dict[str, Any]:
    parameters = nightly_parameters(model, fleet_file) | extra
    # a workdir per model: two nightlies started in the same second get different run folders
    parameters["workdir"] = str(Path(extra["workdir"]) / model.name)
    return parameters


@flow(name="fleet-models", validate_parameters=False)
def _run_local(
    models: list[FleetModel], fleet_file: str, cfg: FleetConfig, extra: dict[str, Any]
) -> list[ModelOutcome]:
    futures = [model_task.submit(m, fleet_file, cfg, extra) for m in models]
    return [future.result() for future in futures]


def _local_limit(slots: int) -> int:
    """NIGHTLIES_LIMIT on this server: created with `slots` when absent; an existing one keeps
    the operator's count (it holds across every fleet of this server)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return int(client.read_global_concurrency_limit_by_name(NIGHTLIES_LIMIT).limit)
        except ObjectNotFound:
            create = GlobalConcurrencyLimitCreate(name=NIGHTLIES_LIMIT, limit=slots)
            client.create_global_concurrency_limit(create)
            return slots


def _deployment_limit(name: str, slots: int) -> int:
    """The deployment's concurrency limit; one without a limit gets `slots` (else all the
    fleet's nightlies would start at once). Fails in one line when the deployment is missing:
    without it every model failed with `ObjectNotFound: None`."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from tasks.errors import ConfigError

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            where = PREFECT_API_URL.value() or "a temporary server (PREFECT_API_URL is not set)"
            raise ConfigError(
                f"deployment {name!r}: not found on {where}; deploy it (make deploy) or run "
                "the fleet with --mode local"
            ) from None
        limit = deployment.global_concurrency_limit
        if limit is not None:
            return int(limit.limit)
        client.update_deployment(deployment.id, DeploymentUpdate(concurrency_limit=slots))
        print(f"fleet: {name} had no concurrency limit; set to {slots} (fleet.yaml concurrency)")
        return slots


def _run_deployments(
    models: list[FleetModel], fleet_file: str, cfg: FleetConfig, extra: dict[str, Any]
) -> list[ModelOutcome]:
    """Every model's nightly as a run of the deployment, all created at once (the server lets
    the deployment's limit run at a time), then one loop that reads their states until each has
    ended or passed its bound."""
    from prefect.deployments import run_deployment

    waiting: dict[str, _Started] = {}
    outcomes: dict[str, ModelOutcome] = {}
    for model in models:
        parameters = _parameters(model, fleet_file, extra)
        try:
            bound = model_bound_s(parameters, cfg)
            run: Any = run_deployment(
                cfg.deployment, parameters=parameters, timeout=0, flow_run_name=model.name
            )
        except Exception as exc:  # this model fails, the others go on
            error = one_line(f"{type(exc).__name__}: {exc}")
            outcomes[model.name] = ModelOutcome(model.name, "failed", error=error)
            continue
        waiting[model.name] = _Started(run.id, parameters, bound, time.monotonic())
    outcomes |= _wait_for(waiting, cfg)
    return [outcomes[m.name] for m in models]


@dataclass(frozen=True)
class _Started:
    run_id: Any
    parameters: dict[str, Any]
    bound_s: int  # once running
    created: float  # time.monotonic()


def _wait_for(waiting: dict[str, _Started], cfg: FleetConfig) -> dict[str, ModelOutcome]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    outcomes: dict[str, ModelOutcome] = {}
    by_id = {started.run_id: name for name, started in waiting.items()}
    with get_client(sync_client=True) as client:
        while len(outcomes) < len(waiting):
            pending = [waiting[n].run_id for n in waiting if n not in outcomes]
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending)), limit=len(pending)
            )
            for run in runs:
                name = by_id[run.id]
                ended = _ended(client, name, run, waiting[name], cfg)
                if ended is not None:
                    outcomes[name] = ended
                    print(
                        f"fleet: {name} {ended.status}"
                        + (f": {ended.error}" if ended.error else "")
                    )
            if len(outcomes) < len(waiting):
                time.sleep(POLL_S)
    return outcomes


def _ended(
    client: Any, name: str, run: Any, started: _Started, cfg: FleetConfig
) -> ModelOutcome | None:
    """The model's outcome once its run has ended, or once it passed a bound (then the run is
    cancelled: a worker stops a Cancelling run's process); None while it may go on."""
    from prefect.states import Cancelling

    state = run.state
    if state is not None and state.is_final():
        return _outcome(name, run, started.parameters)
    if run.start_time is not None and state is not None and state.is_running():
        ran = (datetime.now(UTC) - run.start_time).total_seconds()
        if ran <= started.bound_s:
            return None
        why = f"ran past its bound of {started.bound_s} s (fleet model_timeout_s, else its night's)"
    elif time.monotonic() - started.created > cfg.start_timeout_s:
        where = state.name if state is not None else "no state"
        why = (
            f"not started within start_timeout_s = {cfg.start_timeout_s} s (state {where}: "
            "does a worker poll the deployment's work pool?)"
        )
    else:
        return None
    client.set_flow_run_state(run.id, Cancelling(message=why), force=True)
    return ModelOutcome(name, "timed-out", link=_link(run.id), error=why)


@flow(name="fleet", log_prints=True)
def fleet(
    fleet_file: str = "fleet.yaml",
    concurrency: int | None = None,
    mode: Literal["deployment", "local"] | None = None,
    approval: Literal["ui", "auto"] | None = None,
    workdir: str = ".modelpress",
) -> State[Any]:
    """Run every model's nightly; one summary artifact; Failed if any model failed."""
    cfg = load_fleet(fleet_file)
    cfg = cfg.model_copy(
        update={"concurrency": concurrency or cfg.concurrency, "mode": mode or cfg.mode}
    )
    extra: dict[str, Any] = {"workdir": str(Path(workdir).resolve())}
    if approval or cfg.approval:
        extra["approval"] = approval or cfg.approval
    started = time.monotonic()
    if cfg.mode == "deployment":
        limit = _deployment_limit(cfg.deployment, cfg.concurrency)
        print(f"fleet: at most {limit} at a time ({cfg.deployment}'s concurrency limit)")
    else:
        _register_nightly()
        limit = _local_limit(cfg.concurrency)
        print(f"fleet: at most {limit} at a time (global concurrency limit {NIGHTLIES_LIMIT})")
    invalid = entry_errors(cfg, fleet_file)
    for name, error in invalid.items():
        print(f"fleet: {name} not started: {error}")
    runnable = [m for m in cfg.models if m.name not in invalid]
    path = str(Path(fleet_file).resolve())
    if cfg.mode == "deployment":
        ran = _run_deployments(runnable, path, cfg, extra)
    else:
        # threads as wide as the limit: a thread waits for its slot, not for a thread
        runner: TaskRunner[Any] = LettingGoThreadPoolTaskRunner(
            max_workers=min(limit, len(runnable) or 1)
        )
        ran = _run_local.with_options(task_runner=runner)(runnable, path, cfg, extra)
    by_name = {o.name: o for o in ran} | {
        name: ModelOutcome(name, "failed", error=error) for name, error in invalid.items()
    }
    outcomes = [by_name[m.name] for m in cfg.models]
    result = FleetResult(outcomes, time.monotonic() - started)
    markdown = summary_markdown(result)
    create_markdown_artifact(markdown, key="fleet-summary", description="ModelPress fleet")
    print(markdown)
    failed = result.failed
    if failed:
        names = ", ".join(m.name for m in failed)
        message = f"{len(failed)} of {len(outcomes)} models failed: {names}"
        return Failed(message=message, data=FleetFailed(message, result))
    return Completed(message=f"{len(outcomes)} models, none failed", data=result)
