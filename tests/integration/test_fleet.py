"""The fleet flow (local mode: subflows, two at a time) on three entries: two tiny models and one
broken params file. The broken one fails with one line; the others publish; the fleet ends
Failed saying 1 of 3 failed, with one summary artifact."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import FAST_BENCHMARK, LENIENT_GATES, write_params

pytestmark = pytest.mark.slow


def _fleet(tmp_path: Path) -> Path:
    params = write_params(
        tmp_path,
        {"gates": LENIENT_GATES, "benchmark": FAST_BENCHMARK, "train": {"epochs": 3}},
    )
    raw = yaml.safe_load(params.read_text())
    raw["variants"] = {
        "tflite_int8": {"technique": "tflite_int8", "source": "baseline", "calibration_samples": 64}
    }
    raw["gates"]["per_variant"] = {}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "broken.yaml").write_text("variants:\n  fast: {technique: no_such_technique}\n")
    fleet = {
        "concurrency": 2,
        "mode": "local",
        "approval": "auto",
        "models": [
            {"name": "digits-a", "params": "params.yaml"},
            {"name": "broken", "params": "broken.yaml"},
            # another model: other data (12x12 images), its own registry name
            {
                "name": "digits-b",
                "params": "params.yaml",
                "overrides": {"data": {"image_size": 12}},
            },
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


def test_fleet_runs_every_model_and_counts_the_failed_one(
    prefect_server: str, tmp_path: Path
) -> None:
    from flows.fleet import fleet
    from tasks.fleet import FleetResult, fleet_result

    fleet_file = _fleet(tmp_path)
    registry = tmp_path / "registry"
    raw = yaml.safe_load(fleet_file.read_text())
    for model in raw["models"]:
        model["overrides"] = model.get("overrides", {}) | {"registry": {"uri": str(registry)}}
    fleet_file.write_text(yaml.safe_dump(raw, sort_keys=False))

    state = fleet(fleet_file=str(fleet_file), workdir=str(tmp_path / "work"), return_state=True)

    assert state.is_failed()
    assert state.message == "1 of 3 models failed: broken"
    result = fleet_result(state.result(raise_on_failure=False))
    assert isinstance(result, FleetResult)
    outcomes = {m.name: m for m in result.models}
    assert [m.name for m in result.models] == ["digits-a", "broken", "digits-b"]
    for name in ("digits-a", "digits-b"):
        assert outcomes[name].status == "published", outcomes[name]
        assert outcomes[name].version and outcomes[name].best_variant in {"tflite_int8", "baseline"}
        assert (registry / name).is_dir()
        assert outcomes[name].link
    broken = outcomes["broken"]
    assert broken.status == "failed" and broken.version is None
    # the width is Prefect's own global concurrency limit, created with fleet.yaml's concurrency
    # and shown in the UI; it holds for every fleet of this server, not one thread pool's
    limit = httpx.get(
        f"{prefect_server}/v2/concurrency_limits/modelpress-nightlies", timeout=30
    ).json()
    assert limit["limit"] == 2 and limit["active_slots"] == 0, limit
    assert "\n" not in (broken.error or "")
    assert "broken.yaml" in (broken.error or "") and "no_such_technique" in (broken.error or "")

    body = {"artifacts": {"key": {"any_": ["fleet-summary"]}}, "limit": 5, "offset": 0}
    artifacts = httpx.post(f"{prefect_server}/artifacts/filter", json=body, timeout=30).json()
    assert len(artifacts) == 1, artifacts
    summary = str(artifacts[0]["data"])
    assert "3 models, 1 failed" in summary
    assert "| digits-a | published |" in summary and "| broken | failed: " in summary


def test_deployment_mode_runs_each_model_as_a_run_of_the_nightly_deployment(
    prefect_server: str, tmp_path: Path
) -> None:
    """mode: deployment: each model's nightly is a flow run of `nightly/nightly` that whatever
    serves the deployment takes (here `nightly.serve()` in its own process, as a worker of a
    work pool would), not a run inside the fleet's process."""
    import os
    import sys
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.fleet import fleet
    from tasks.fleet import FleetResult, fleet_result
    from tests import processes

    fleet_file = _fleet(tmp_path)
    raw = yaml.safe_load(fleet_file.read_text())
    raw["mode"], raw["concurrency"] = "deployment", 1
    raw["models"] = [m for m in raw["models"] if m["name"] != "digits-b"]
    for model in raw["models"]:
        model["overrides"] = {"registry": {"uri": str(tmp_path / "registry")}}
    fleet_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    serve = "from flows.nightly import nightly; nightly.serve(name='nightly')"
    with processes.Processes() as started:
        server = started.popen([sys.executable, "-c", serve], env=env, log=tmp_path / "serve.log")
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.read_deployment_by_name("nightly/nightly")
                    break
                except Exception:
                    assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                    assert time.monotonic() < deadline, "nightly/nightly was never served"
                    time.sleep(1)
        state = fleet(fleet_file=str(fleet_file), workdir=str(tmp_path / "work"), return_state=True)

    assert state.is_failed() and state.message == "1 of 2 models failed: broken"
    result = fleet_result(state.result(raise_on_failure=False))
    assert isinstance(result, FleetResult)
    outcomes = {m.name: m for m in result.models}
    assert outcomes["digits-a"].status == "published", outcomes["digits-a"]
    assert outcomes["digits-a"].version and (tmp_path / "registry" / "digits-a").is_dir()
    assert outcomes["broken"].status == "failed"
    assert "no_such_technique" in (outcomes["broken"].error or "")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("nightly/nightly")
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=10,
        )
    # one run of the deployment for the model that could run: the broken entry's params were
    # refused before any nightly started, so it never became a run
    assert len(runs) == 1


def test_a_model_past_its_bound_is_cancelled_and_its_processes_stopped(
    prefect_server: str, tmp_path: Path
) -> None:
    """Local mode: a nightly still running at fleet.yaml's model_timeout_s is stopped with its
    whole process tree (the build child included), its run is Cancelled, the model is timed-out
    in the summary, and the other model still publishes."""
    import time

    import psutil

    from flows.fleet import fleet
    from tasks.fleet import FleetResult, fleet_result
    from tests.helpers import CRASHING_TECHNIQUE

    fleet_file = _fleet(tmp_path)
    raw = yaml.safe_load(fleet_file.read_text())
    hang = {"technique": "crashing", "source": "baseline", "how": "hang"}
    raw["model_timeout_s"] = 45
    raw["models"] = [
        {
            "name": "hung",
            "params": "params.yaml",
            "overrides": {"techniques": [CRASHING_TECHNIQUE], "variants": {"slow": hang}},
        },
    ]
    fleet_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.monotonic()
    state = fleet(fleet_file=str(fleet_file), workdir=str(tmp_path / "work"), return_state=True)
    assert time.monotonic() - started < 45 + 60
    assert state.is_failed() and state.message == "1 of 1 models failed: hung"
    result = fleet_result(state.result(raise_on_failure=False))
    assert isinstance(result, FleetResult)
    hung = result.models[0]
    assert hung.status == "timed-out", hung
    assert "ran past its bound of 45 s" in (hung.error or "")
    spawned = [
        p for p in psutil.Process().children(recursive=True)
        if "spawn_main" in " ".join(p.cmdline())
    ]  # fmt: skip
    assert spawned == [], [p.cmdline() for p in spawned]
    runs = httpx.post(
        f"{prefect_server}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["nightly"]}}, "limit": 200},
        timeout=30,
    ).json()
    ours = [r for r in runs if str(r["parameters"].get("workdir", "")).startswith(str(tmp_path))]
    assert [r["state"]["type"] for r in ours] == ["CANCELLED"], ours


def test_a_deployment_nobody_runs_ends_timed_out_not_waiting_for_ever(
    prefect_server: str, tmp_path: Path
) -> None:
    """Deployment mode with no worker on the deployment's pool: the run never starts. The
    fleet gives it start_timeout_s, cancels it and says where to look, instead of waiting for
    ever; a deployment without a concurrency limit gets fleet.yaml's."""
    import time

    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.fleet import fleet
    from flows.nightly import nightly
    from tasks.fleet import fleet_result

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="nobody-polls-this", type="process"))
        flow_id = client.create_flow(nightly)
        client.create_deployment(flow_id, "nightly", work_pool_name="nobody-polls-this")
    fleet_file = _fleet(tmp_path)
    raw = yaml.safe_load(fleet_file.read_text())
    raw |= {"mode": "deployment", "concurrency": 3, "start_timeout_s": 8}
    raw["models"] = [m for m in raw["models"] if m["name"] == "digits-a"]
    fleet_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.monotonic()
    state = fleet(fleet_file=str(fleet_file), workdir=str(tmp_path / "work"), return_state=True)
    assert time.monotonic() - started < 60
    result = fleet_result(state.result(raise_on_failure=False))
    assert result is not None
    outcome = result.models[0]
    assert outcome.status == "timed-out", outcome
    assert "not started within start_timeout_s = 8 s" in (outcome.error or "")
    assert "work pool" in (outcome.error or "")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("nightly/nightly")
        assert deployment.global_concurrency_limit is not None
        assert deployment.global_concurrency_limit.limit == 3
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
            )
        )
        # this test's run: the session's server keeps other tests' runs of nightly/nightly
        ours = [r for r in runs if str(r.parameters.get("workdir", "")).startswith(str(tmp_path))]
        states = {r.name: r.state.type.value for r in ours if r.state is not None}
    assert states.get("digits-a") in {"CANCELLED", "CANCELLING"}, states
