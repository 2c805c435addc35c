"""The stack's Prefect server is closed: a real `prefect server start` with the settings
infra/stack.sh gives it (PREFECT_SERVER_API_AUTH_STRING, CSRF protection on).

Without the credential the API answers 401, the UI gets nothing to show, the websockets close;
state changes need a CSRF token; with the credential a real nightly (the `modelpress nightly` CLI,
as a user runs it) pauses for review, a reviewer resumes it through the API and it publishes; the
credential is then searched for in everything the run left (the secret scan of test_security).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import yaml

from tasks.stack_users import basic_auth
from tests import processes
from tests.helpers import (
    FAST_BENCHMARK,
    REPO_ROOT,
    cli_env,
    free_port,
    write_params,
    write_random_inputs,
)
from tests.integration.test_security import Scan, _scan_flow_run
from tests.processes import Processes

USER = "modelpress"
UNAUTHORIZED = {"exception_message": "Unauthorized"}
NO_RUN = "00000000-0000-0000-0000-000000000000"
# every websocket route of Prefect 3.8.8's API (server/api: events, logs, task_runs, workers)
WEBSOCKETS = [
    "/events/in",
    "/events/out",
    "/logs/out",
    "/task_runs/subscriptions/scheduled",
    "/work_pools/modelpress-local/workers/connect",
]


@dataclass(frozen=True)
class AuthServer:
    url: str  # .../api
    credential: str  # user:password, as infra/stack.sh generates it
    home: Path  # the server's PREFECT_HOME (its database)
    log: Path  # what the server printed


@contextmanager
def _process_group(command: list[str], env: dict[str, str], log: Path) -> Iterator[Any]:
    """A subprocess in its own process group, stopped on every path (tests.processes: SIGTERM to
    the group, a wait, SIGKILL to the group; the server's uvicorn and services go with it)."""
    with Processes() as started:
        yield started.popen(command, env=env, log=log)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    root = tmp_path_factory.mktemp("auth-server")
    credential = f"{USER}:{secrets.token_urlsafe(32)}"  # the shape stack.sh generates
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_SERVER_API_AUTH_STRING": credential,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log = root / "server.log"
    with _process_group(command, env, log) as process:
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:  # open, by design
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (
                "the Prefect server did not come up\n" + (log.read_text()[-3000:])
            )
            time.sleep(1)
        yield AuthServer(url, credential, root / "home", log)


class Api:
    """The API as a browser or script sees it: optional credential, optional CSRF token."""

    def __init__(self, server: AuthServer, credential: str | None, csrf: bool = True):
        headers = {"Authorization": basic_auth(credential)} if credential else {}
        self.http = httpx.Client(base_url=server.url, headers=headers, timeout=30)
        if csrf:  # a token needs the credential: fetch it with the real one
            client_id = f"test-{secrets.token_hex(4)}"
            token = httpx.get(
                f"{server.url}/csrf-token",
                params={"client": client_id},
                headers={"Authorization": basic_auth(server.credential)},
                timeout=30,
            )
            token.raise_for_status()
            self.http.headers["Prefect-Csrf-Token"] = token.json()["token"]
            self.http.headers["Prefect-Csrf-Client"] = client_id

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=body)


def _filter(sort: str) -> dict[str, Any]:
    """3.8.8's filter endpoints want sort, limit and offset explicitly."""
    return {"sort": sort, "limit": 5, "offset": 0}


FILTERS = {  # filter endpoints the UI calls, with a sort each accepts
    "/flows/filter": _filter("NAME_ASC"),
    "/flow_runs/filter": _filter("ID_DESC"),
    "/logs/filter": _filter("TIMESTAMP_ASC"),
    "/artifacts/filter": _filter("ID_DESC"),
}


# ---- without the credential -----------------------------------------------------------------------


def test_api_answers_401_without_the_credential(auth_server: AuthServer) -> None:
    anonymous = Api(auth_server, None)
    wrong = Api(auth_server, f"{USER}:not-the-password")
    for path in ("/admin/version", f"/flow_runs/{NO_RUN}", "/deployments/name/nightly/nightly"):
        for api in (anonymous, wrong):
            response = api.get(path)
            assert (response.status_code, response.json()) == (401, UNAUTHORIZED), path
    # POSTs carry a valid CSRF token here, so it is the auth check that refuses them
    for path, body in FILTERS.items():
        for api in (anonymous, wrong):
            response = api.post(path, body)
            assert (response.status_code, response.json()) == (401, UNAUTHORIZED), path
    # the CSRF token endpoint is closed too: without the credential no state change is possible
    token = httpx.get(f"{auth_server.url}/csrf-token", params={"client": "x"})
    assert token.status_code == 401

    # what stays open, by Prefect's design: liveness probes and the UI's static files/settings
    assert httpx.get(f"{auth_server.url}/health").json() is True
    ui = auth_server.url.removesuffix("/api")
    settings = httpx.get(f"{ui}/ui-settings").json()
    # "BASIC": the UI shows its login form and sends nothing else until a credential is typed
    assert settings["auth"] == "BASIC" and settings["csrf_enabled"] is True

    authorized = Api(auth_server, auth_server.credential)
    assert authorized.get("/admin/version").status_code == 200
    for path, body in FILTERS.items():
        assert authorized.post(path, body).status_code == 200, path


def test_csrf_protection_refuses_state_changes_without_a_token(auth_server: AuthServer) -> None:
    no_token = Api(auth_server, auth_server.credential, csrf=False)
    flow = {"name": "csrf-probe"}
    refused = no_token.post("/flows/", flow)
    assert (refused.status_code, refused.json()) == (403, {"detail": "Missing CSRF token."})
    forged = no_token.http.post(
        "/flows/", json=flow, headers={"Prefect-Csrf-Token": "f" * 64, "Prefect-Csrf-Client": "x"}
    )
    assert forged.status_code == 403
    assert forged.json() == {"detail": "Invalid CSRF token or client identifier."}
    assert no_token.get(f"/flows/{NO_RUN}").status_code == 404  # reads (GET) need no token
    # nothing was created by the refused writes
    with_token = Api(auth_server, auth_server.credential)
    found = with_token.post(
        "/flows/filter", {**FILTERS["/flows/filter"], "flows": {"name": {"any_": ["csrf-probe"]}}}
    )
    assert found.status_code == 200 and found.json() == []
    created = with_token.post("/flows/", flow)
    assert created.status_code in (200, 201) and created.json()["name"] == "csrf-probe"


async def _websocket(url: str, subprotocols: list[str] | None, first: dict[str, Any]) -> str:
    """What a websocket client gets: the server's first message, or how it was refused."""
    import websockets

    try:
        async with websockets.connect(url, subprotocols=subprotocols, open_timeout=10) as ws:
            await ws.send(json.dumps(first))
            try:
                return f"message {await asyncio.wait_for(ws.recv(), 10)}"
            except websockets.ConnectionClosed as closed:
                return f"closed {closed.rcvd.code if closed.rcvd else None}"
    except websockets.InvalidStatus as refused:
        return f"refused {refused.response.status_code}"


def test_websockets_refuse_without_the_credential(auth_server: AuthServer) -> None:
    """Prefect issue 17687 (3.2): the events websockets were open under the auth string. In 3.8.8
    every websocket route authenticates in its first message (`prefect` subprotocol + token)."""
    base = auth_server.url.replace("http://", "ws://")
    event = {"event": "modelpress.probe", "resource": {"prefect.resource.id": "probe"}}
    for path in WEBSOCKETS:
        url = base + path

        def outcome(subprotocols: list[str] | None, first: dict[str, Any], url: str = url) -> str:
            return asyncio.run(_websocket(url, subprotocols, first))

        assert outcome(None, {"type": "auth", "token": None}) == "refused 403", path
        assert outcome(["prefect"], {"type": "auth", "token": None}) == "closed 1008", path
        wrong = {"type": "auth", "token": f"{USER}:not-the-password"}
        assert outcome(["prefect"], wrong) == "closed 1008", path
        assert outcome(["prefect"], event) == "closed 1008", path  # no auth message first
        right = {"type": "auth", "token": auth_server.credential}
        assert outcome(["prefect"], right) == 'message {"type":"auth_success"}', path


def test_cli_without_the_credential_says_so_in_one_line(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    """`modelpress nightly` against the closed server, before `eval "$(infra/stack.sh env)"` or
    after a rotation: exit 2 and one `error:` line that names the setting, not a traceback."""
    wrong = f"{USER}:an-old-rotated-password"
    command = [sys.executable, "-m", "flows.cli", "nightly", "--params", "params.yaml"]
    command += ["--workdir", str(tmp_path / "work"), "--approval", "auto"]
    for credential, expected in ((None, "wants a credential (401)"), (wrong, "refused")):
        env = cli_env({}, auth_server.url) | {"PREFECT_HOME": str(tmp_path / "home")}
        if credential:
            env["PREFECT_API_AUTH_STRING"] = credential
        done = processes.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.startswith(f"error: the Prefect server at {auth_server.url} {expected}")
        assert "PREFECT_API_AUTH_STRING" in done.stderr and "infra/stack.sh env" in done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert "an-old-rotated-password" not in done.stdout + done.stderr
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("manifest.json"))


# ---- a nightly behind the auth ---------------------------------------------------------------------


def _wait_for_review(
    api: Api, cli: subprocess.Popen[str], timeout: float = 600, after: str | None = None
) -> dict[str, Any]:
    """The paused run, once its form's schema is stored (a resume before that is refused);
    `after`: a schema key already answered, so wait for the form asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert cli.poll() is None, "the nightly ended before its review"
        for run in api.post("/flow_runs/filter", FILTERS["/flow_runs/filter"]).json():
            keyset = (run.get("state") or {}).get("state_details", {}).get("run_input_keyset")
            stored = keyset and api.get(f"/flow_runs/{run['id']}/input/{keyset['schema']}")
            fresh = keyset and keyset["schema"] != after
            if run["state_type"] == "PAUSED" and fresh and stored and stored.status_code == 200:
                return run
        time.sleep(1)
    raise AssertionError("the nightly never paused for review")


@contextmanager
def _client_settings(server: AuthServer) -> Iterator[None]:
    """This process's Prefect client pointed at the closed server, with the credential."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(
        {PREFECT_API_URL: server.url, PREFECT_API_AUTH_STRING: server.credential}
    ):
        yield


def test_nightly_behind_auth_is_resumed_by_a_reviewer_and_leaks_no_credential(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    inputs = write_random_inputs(tmp_path)  # every accuracy gate off: a review is due
    review = {"approval": "ui", "timeout_s": 600, "approvers": ["alice"]}
    params = write_params(tmp_path, inputs | {"review": review})
    raw = yaml.safe_load(params.read_text())
    raw["variants"] = {
        "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 1}
    }
    raw["gates"]["per_variant"] = {}
    raw["benchmark"] = {**raw["benchmark"], **FAST_BENCHMARK}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    client_home = tmp_path / "client-prefect-home"
    env = cli_env({}, auth_server.url) | {
        "PREFECT_API_AUTH_STRING": auth_server.credential,  # what `infra/stack.sh env` exports
        "PREFECT_HOME": str(client_home),
        "PREFECT_LOCAL_STORAGE_PATH": str(client_home / "storage"),
    }
    registry = tmp_path / "registry"
    command = [sys.executable, "-m", "flows.cli", "nightly", "--params", str(params)]
    command += ["--workdir", str(tmp_path / "work"), "--registry-uri", str(registry)]
    command += ["--version", "auth.1"]
    cli_log = tmp_path / "cli.log"
    reviewer = Api(auth_server, auth_server.credential)
    with _process_group(command, env | {"PYTHONUNBUFFERED": "1"}, cli_log) as cli:
        run = _wait_for_review(reviewer, cli)
        run_path = f"/flow_runs/{run['id']}"

        # the run's page in the UI: the static shell loads, the run's data does not
        ui = auth_server.url.removesuffix("/api")
        page = httpx.get(f"{ui}/runs/flow-run/{run['id']}", headers={"Accept": "text/html"})
        assert run["name"] not in page.text
        anonymous = Api(auth_server, None)
        unauthorized = anonymous.get(run_path)
        assert (unauthorized.status_code, unauthorized.json()) == (401, UNAUTHORIZED)
        print(f"GET {run_path} without credentials: {unauthorized.status_code} {unauthorized.text}")
        assert anonymous.get(f"{run_path}/graph-v2").status_code == 401
        for path, body in FILTERS.items():
            assert anonymous.post(path, body).status_code == 401, path

        # a resume without the credential, or without a CSRF token, changes nothing
        answer = {
            "approve_distilled": True,
            "reviewer": "alice",
            "comment": "behind the stack's auth",
        }
        assert anonymous.post(f"{run_path}/resume", {"run_input": answer}).status_code == 401
        no_csrf = Api(auth_server, auth_server.credential, csrf=False)
        assert no_csrf.post(f"{run_path}/resume", {"run_input": answer}).status_code == 403
        assert reviewer.get(run_path).json()["state_type"] == "PAUSED"

        # authenticated, but not on review.approvers: refused by the flow, which asks again
        mallory = answer | {"reviewer": "mallory"}
        refused = reviewer.post(f"{run_path}/resume", {"run_input": mallory})
        assert refused.json()["status"] == "ACCEPT", refused.text
        first_schema = run["state"]["state_details"]["run_input_keyset"]["schema"]
        run = _wait_for_review(reviewer, cli, after=first_schema)
        print(f"resume by mallory (not on review.approvers): run paused again, {run['state_name']}")

        resumed = reviewer.post(f"{run_path}/resume", {"run_input": answer})
        assert resumed.status_code in (200, 201) and resumed.json()["status"] == "ACCEPT", (
            resumed.text
        )
        cli.wait(timeout=600)
    output = cli_log.read_text()
    assert cli.returncode == 0, output[-3000:]
    assert "nightly: published" in output and "distilled" in output, output[-2000:]

    manifest = json.loads(next(registry.rglob("manifest.json")).read_text())
    approval = manifest["variants"]["distilled"]["approval"]
    assert approval["approved_by"] == "alice"
    assert approval["identity"] == (
        "typed name, checked against review.approvers, behind a shared HTTP basic auth "
        "credential (no review guard: not proof of who typed it)"
    )
    decisions = sorted(p for p in registry.rglob("*.json") if p.parent.name == "decisions")
    outcomes = [json.loads(d.read_text()) for d in decisions]
    assert [(d["outcome"], d["reviewer"]) for d in outcomes] == [
        ("refused", "mallory"),
        ("approved", "alice"),
    ], outcomes
    print(f"decisions: {[(d['outcome'], d['reviewer']) for d in outcomes]}")

    # the secret scan: the credential, its password alone and the header form clients send
    password = auth_server.credential.split(":", 1)[1]
    scan = Scan(
        secrets={
            "auth string": auth_server.credential,
            "password": password,
            "basic header": basic_auth(auth_server.credential).removeprefix("Basic "),
        }
    )
    scan.add("control", f"x {password} y")  # the scan sees a planted secret
    assert scan.hits == ["password x1 in control"]
    scan = Scan(secrets=scan.secrets)
    with _client_settings(auth_server):
        messages = _scan_flow_run(scan, UUID(run["id"]))
    scan.add("manifest", json.dumps(manifest))
    scan.add("cli-output", output)
    scan.add("server-log", auth_server.log.read_bytes())
    files = scan.add_files("files", tmp_path)  # workdir, registry, the CLI's Prefect home
    server_files = scan.add_files("server-home", auth_server.home)  # the run records' database
    assert scan.hits == []
    assert any("published" in m for m in messages) and scan.total("logs") > 2_000
    assert scan.total("artifacts:") > 1_000 and scan.total("flow-run") > 500
    assert files > 20 and server_files >= 1 and scan.total("server-home") > 100_000
    total = sum(scan.scanned.values())
    print(f"secret scan: {len(scan.scanned)} sources, {total} bytes, {len(scan.hits)} hits")
