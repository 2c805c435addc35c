"""The nightly deployment's schedule creates flow runs on a real `prefect server start`.

The `prefect_server` fixture (prefect_test_harness) runs an ephemeral server, which does not run the
scheduler services, so this module starts the same server the stack runs (infra/stack.sh) and
deploys infra/prefect.yaml with the CLI, the way `stack.sh deploy` does.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from tasks.params_file import load_params
from tests import processes
from tests.helpers import REPO_ROOT, free_port
from tests.processes import Processes

PREFECT = str(Path(sys.executable).with_name("prefect"))
# what infra/stack.sh deploy runs for the nightly
DEPLOY_NIGHTLY = [
    PREFECT,
    "--no-prompt",
    "deploy",
    "--prefect-file",
    "infra/prefect.yaml",
    "--name",
    "nightly",
]


@pytest.fixture(scope="module")
def scheduling_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `prefect server start` (scheduler services on) with its own home; yields the API URL
    and the server's log."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = home / "server.log"
    started = Processes()
    proc = started.popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, log=log
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"prefect server not up:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield api_url, log
    finally:
        started.stop_all()  # uvicorn and the services share the group: all of it goes


def test_nightly_deployment_schedules_runs_at_the_params_cron_in_its_timezone(
    scheduling_server: tuple[str, Path],
) -> None:
    """`prefect deploy` of infra/prefect.yaml's nightly, with params.yaml's schedule, makes the
    server's scheduler create Scheduled runs at that local time. (Prefect 3.8.8's scheduler fails
    every insert on SQLAlchemy 2.1 - "Can't evaluate bulk DML statement" - so none appeared.)"""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    api_url, log = scheduling_server
    schedule = load_params(REPO_ROOT / "params.yaml").schedule
    minute, hour, *rest = schedule.cron.split()
    assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"], (
        f"this test checks a daily 'M H * * *' cron; params.yaml has {schedule.cron!r}"
    )
    nightly = next(
        d
        for d in yaml.safe_load((REPO_ROOT / "infra" / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "nightly"
    )

    with SyncPrefectClient(api_url) as client:
        client.create_work_pool(WorkPoolCreate(name=nightly["work_pool"]["name"], type="process"))
        # as infra/stack.sh deploy: params.yaml's schedule reaches prefect.yaml through the
        # environment; the CLI's exit status is not the verdict (it fails a follow-up query)
        deploy = processes.run(
            DEPLOY_NIGHTLY,
            cwd=REPO_ROOT,
            env=os.environ
            | {
                "PREFECT_API_URL": api_url,
                "MODELPRESS_CRON": schedule.cron,
                "MODELPRESS_TIMEZONE": schedule.timezone,
                "MODELPRESS_HOME": str(REPO_ROOT),
            },
            capture_output=True,
            text=True,
            timeout=180,
        )
        deployment = client.read_deployment_by_name("nightly/nightly")
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules] == [
            (schedule.cron, schedule.timezone, True)
        ], deploy.stdout[-2000:] + deploy.stderr[-2000:]

        only_scheduled = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        )
        # the recent-deployments scheduler loops every 5 s
        deadline = time.monotonic() + 45
        while not (
            runs := client.read_flow_runs(
                flow_run_filter=only_scheduled,
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=20,
            )
        ):
            assert time.monotonic() < deadline, (
                f"no scheduled runs for nightly/nightly; server log:\n{log.read_text()[-4000:]}"
            )
            time.sleep(1)

    tz = ZoneInfo(schedule.timezone)
    local = [run.expected_start_time.astimezone(tz) for run in runs]
    assert all((t.hour, t.minute) == (int(hour), int(minute)) for t in local), local
    assert len(local) >= 2, local  # the scheduler makes at least 3 (min_runs) at once
    assert all(b.date() - a.date() == timedelta(days=1) for a, b in pairwise(local)), local
    assert all(run.state_name == "Scheduled" and run.auto_scheduled for run in runs)
