"""The fleet flow: one nightly per model of fleet.yaml, at most `concurrency` at a time.

mode deployment: each nightly is its own flow run of the `nightly/nightly` deployment
(run_deployment), so any worker of its work pool (another machine, a Kubernetes pod) takes it.
mode local: each nightly runs on this machine in its own process, as a child run of the fleet,
with the same limit (no deployment or worker needed: `make run`'s setting). One model failing does not stop the others; the fleet
ends Failed, saying how many did, after all have run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, get_args

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.decision import Status
from tasks.fleet import (
    FleetModel,
    FleetResult,
    ModelOutcome,
    entry_errors,
    latest_published,
    load_fleet,
    nightly_parameters,
    one_line,
    summary_markdown,
)


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
        return ModelOutcome(name, "failed", link=link, error=error)
    status = next((tag for tag in run.tags or [] if tag in get_args(Status)), "completed")
    version = best = None
    if status in ("published", "unchanged"):
        version, best = latest_published(parameters)
    return ModelOutcome(name, status, version=version, best_variant=best, link=link)


def _in_subprocess(name: str, parameters: dict[str, Any]) -> ModelOutcome:
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
        process.join()
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


@task(name="model-nightly", task_run_name="nightly-{model.name}")
def model_task(
    model: FleetModel,
    fleet_file: str,
    mode: Literal["deployment", "local"],
    deployment: str,
    extra: dict[str, Any],
) -> ModelOutcome:
    """One model's nightly; never raises: its failure is this model's outcome, not the fleet's."""
    parameters = nightly_parameters(model, fleet_file) | extra
    # a workdir per model: two nightlies started in the same second get different run folders
    parameters["workdir"] = str(Path(extra["workdir"]) / model.name)
    try:
        if mode == "deployment":
            from prefect.deployments import run_deployment

            run: Any = run_deployment(deployment, parameters=parameters, timeout=None)
            return _outcome(model.name, run, parameters)
        return _in_subprocess(model.name, parameters)
    except Exception as exc:  # e.g. no such deployment: this model fails, the others go on
        return ModelOutcome(model.name, "failed", error=one_line(f"{type(exc).__name__}: {exc}"))


@flow(name="fleet-models", validate_parameters=False)
def _run_models(
    models: list[FleetModel],
    fleet_file: str,
    mode: Literal["deployment", "local"],
    deployment: str,
    extra: dict[str, Any],
) -> list[ModelOutcome]:
    futures = [model_task.submit(m, fleet_file, mode, deployment, extra) for m in models]
    return [future.result() for future in futures]


def _check_deployment(name: str) -> None:
    """mode deployment needs the deployment on this server: without it every model failed
    with `ObjectNotFound: None`."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from tasks.errors import ConfigError

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            where = PREFECT_API_URL.value() or "a temporary server (PREFECT_API_URL is not set)"
            raise ConfigError(
                f"deployment {name!r}: not found on {where}; deploy it (make deploy) or run "
                "the fleet with --mode local"
            ) from None


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
    limit = concurrency or cfg.concurrency
    extra: dict[str, Any] = {"workdir": str(Path(workdir).resolve())}
    if approval or cfg.approval:
        extra["approval"] = approval or cfg.approval
    started = time.monotonic()
    # the limit is the task runner's width: at most `limit` nightlies are in flight at once
    runner: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=limit)
    if (mode or cfg.mode) == "local":
        _register_nightly()
    if (mode or cfg.mode) == "deployment":
        _check_deployment(cfg.deployment)
    invalid = entry_errors(cfg, fleet_file)
    for name, error in invalid.items():
        print(f"fleet: {name} not started: {error}")
    runnable = [m for m in cfg.models if m.name not in invalid]
    ran = _run_models.with_options(task_runner=runner)(
        runnable, str(Path(fleet_file).resolve()), mode or cfg.mode, cfg.deployment, extra
    )
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
        return Failed(message=message, data=result)
    return Completed(message=f"{len(outcomes)} models, none failed", data=result)
