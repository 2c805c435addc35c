"""The real stack (`infra/stack.sh up`: Caddy, the review guard, Prefect server, workers, S3) with
two people, a third reviewer not on `review.approvers`, and the workers' credential.

Each principal logs in with their own credential; nothing reaches the Prefect server or the guard
past Caddy; a worker cannot resume or cancel a paused review; a reviewer cannot approve as
somebody else; a reviewer not on the list is refused and recorded; the manifest names the login
that resumed the run, and the secrets are in no log. Prints the probe table (request, expected,
observed) that infra/README.md shows.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from tests.integration.test_security import Scan
from tests.processes import Processes

pytestmark = pytest.mark.slow  # a whole stack and a nightly through it: about 3 minutes


@dataclass
class Stack:
    env: dict[str, str]
    state: Path
    api: str  # the front door's /api
    ports: dict[str, int]
    probes: list[tuple[str, str, str]] = field(default_factory=list)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return processes.run(
            ["bash", str(REPO_ROOT / "infra" / "stack.sh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def credential(self, name: str) -> str:
        return (self.state / "credentials" / name).read_text().strip()

    def client(self, name: str | None, base: str | None = None) -> httpx.Client:
        """As `name` (None: no credential), with a CSRF token fetched as that principal."""
        headers = {}
        if name is not None:
            headers["Authorization"] = basic_auth(self.credential(name))
        http = httpx.Client(base_url=base or self.api, headers=headers, timeout=60)
        if name is not None:
            client_id = f"test-{secrets.token_hex(4)}"
            token = http.get("/csrf-token", params={"client": client_id})
            if token.status_code == 200:
                http.headers["Prefect-Csrf-Token"] = token.json()["token"]
                http.headers["Prefect-Csrf-Client"] = client_id
        return http

    def probe(self, request: str, expected: str, answer: httpx.Response) -> httpx.Response:
        detail = ""
        try:
            body = answer.json()
            detail = (
                body.get("detail") or body.get("exception_message") or body.get("status")
                or body.get("principal") or ""
            )  # fmt: skip
        except (ValueError, AttributeError):
            pass
        self.probes.append((request, expected, f"{answer.status_code} {detail}".strip()))
        return answer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    state = root / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env |= {
        "MODELPRESS_BIN": str(Path(sys.executable).parent),
        "MODELPRESS_STACK_STATE": str(state),
        "PREFECT_PORT": str(free_port()),
        "S3_PORT": str(free_port()),
    }
    stack = Stack(env, state, f"http://127.0.0.1:{env['PREFECT_PORT']}/api", {})
    try:
        up = stack.run("up")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        for name in ("alice", "bob", "carol"):
            added = stack.run("user", "add", name, "--role", "reviewer")
            assert added.returncode == 0, added.stdout + added.stderr
        ports = dict(line.split("=") for line in (state / "ports").read_text().split())
        stack.ports = {k: int(v) for k, v in ports.items()}
        yield stack
    finally:
        down = stack.run("down")
        print("\n| request | expected | observed |\n|---|---|---|")
        for row in stack.probes:
            print("| " + " | ".join(row) + " |")
    assert down.returncode == 0, down.stderr


def test_each_principal_has_their_own_credential_and_nothing_goes_around_caddy(
    stack: Stack,
) -> None:
    state = stack.state
    assert state.stat().st_mode & 0o777 == 0o700
    for name in ("worker", "alice", "bob", "carol"):
        path = state / "credentials" / name
        assert path.stat().st_mode & 0o777 == 0o600
        user, password = stack.credential(name).split(":", 1)
        assert user == name and len(password) >= 43  # 32 random bytes, urlsafe base64
    hashes = json.loads((state / "users.json").read_text())
    assert {n: e["role"] for n, e in hashes.items()} == {
        "worker": "worker", "alice": "reviewer", "bob": "reviewer", "carol": "reviewer",
    }  # fmt: skip
    assert all(e["bcrypt"].startswith("$2b$") for e in hashes.values())
    assert stack.credential("alice").split(":")[1] not in (state / "users.json").read_text()

    anonymous = stack.client(None)
    stack.probe("GET /api/admin/version, no credential", "401", anonymous.get("/admin/version"))
    assert anonymous.get("/admin/version").status_code == 401
    wrong = httpx.get(
        f"{stack.api}/admin/version",
        headers={"Authorization": basic_auth("alice:not-her-password")},
    )
    assert stack.probe("GET /api/admin/version, alice's name, wrong password", "401", wrong)
    assert wrong.status_code == 401
    for name in ("worker", "alice", "bob"):
        whoami = stack.client(name).get("/modelpress/guard")
        stack.probe(f"GET /api/modelpress/guard as {name}", f"200 {name}", whoami)
        assert whoami.status_code == 200 and whoami.json()["principal"] == name
    assert stack.client("worker").get("/modelpress/guard").json()["role"] == "worker"
    no_csrf = httpx.post(
        f"{stack.api}/flows/", json={"name": "x"},
        headers={"Authorization": basic_auth(stack.credential("alice"))},
    )  # fmt: skip
    stack.probe("POST /api/flows/ as alice without a CSRF token", "403", no_csrf)
    assert no_csrf.status_code == 403
    workers = stack.client("worker").post(
        "/work_pools/modelpress-local/workers/filter", json={"limit": 5, "offset": 0}
    )
    assert [w["status"] for w in workers.json()] == ["ONLINE"]  # through Caddy, as `worker`

    # around Caddy: the Prefect server's own port wants its own auth string, which no person
    # or worker holds; the guard's port wants Caddy's secret, not a principal header
    server = f"http://127.0.0.1:{stack.ports['SERVER_PORT']}/api"
    direct = stack.client("alice", base=server).get("/admin/version")
    stack.probe("GET the Prefect server's own port with alice's credential", "401", direct)
    assert direct.status_code == 401
    guard = f"http://127.0.0.1:{stack.ports['GUARD_PORT']}"
    forged = httpx.get(f"{guard}/api/modelpress/guard", headers={"X-Modelpress-Principal": "alice"})
    stack.probe("GET the guard's port with a forged principal header", "401", forged)
    assert forged.status_code == 401

    # websockets: the first message's token is checked against the same hashes
    import asyncio

    import websockets

    async def first_answer(token: str) -> str:
        url = stack.api.replace("http", "ws", 1) + "/events/out"
        try:
            async with websockets.connect(
                url, subprotocols=[websockets.Subprotocol("prefect")]
            ) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                return str(json.loads(await asyncio.wait_for(ws.recv(), 30))["type"])
        except websockets.ConnectionClosed as closed:
            return f"closed {closed.rcvd.code if closed.rcvd else '?'}"

    assert asyncio.run(first_answer(stack.credential("bob"))) == "auth_success"
    assert asyncio.run(first_answer("bob:wrong")) == "closed 1008"
    stack.probes.append(("websocket /api/events/out, bob's token", "auth_success", "auth_success"))
    stack.probes.append(("websocket /api/events/out, wrong token", "closed 1008", "closed 1008"))

    # a person removed: their credential stops working at once
    added = stack.run("user", "add", "dave", "--role", "reviewer")
    assert added.returncode == 0, added.stderr
    dave = stack.credential("dave")
    assert (
        httpx.get(
            f"{stack.api}/admin/version", headers={"Authorization": basic_auth(dave)}
        ).status_code
        == 200
    )
    assert stack.run("user", "remove", "dave").returncode == 0
    gone = httpx.get(f"{stack.api}/admin/version", headers={"Authorization": basic_auth(dave)})
    stack.probe("GET /api/admin/version as dave after `user remove dave`", "401", gone)
    assert gone.status_code == 401

    printed = stack.run("env", "alice")
    assert printed.returncode == 0 and "credentials/alice" in printed.stdout
    assert stack.credential("alice").split(":")[1] not in printed.stdout


def _wait_for_review(
    api: httpx.Client, cli: subprocess.Popen[str], after: str | None = None
) -> dict[str, Any]:
    """The paused run once its form is stored; `after`: a form already answered."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert cli.poll() is None, "the nightly ended before its review"
        runs = api.post("/flow_runs/filter", json={"sort": "ID_DESC", "limit": 5, "offset": 0})
        for run in runs.json():
            keyset = (run.get("state") or {}).get("state_details", {}).get("run_input_keyset")
            fresh = keyset and keyset["schema"] != after
            stored = fresh and api.get(f"/flow_runs/{run['id']}/input/{keyset['schema']}")
            if run["state_type"] == "PAUSED" and stored and stored.status_code == 200:
                return dict(run)
        time.sleep(1)
    raise AssertionError("the nightly never paused for review")


def test_the_review_is_decided_by_the_login_not_by_a_typed_name(
    stack: Stack, tmp_path: Path
) -> None:
    inputs = write_random_inputs(tmp_path)  # every accuracy gate off: a review is due
    review = {"approval": "ui", "timeout_s": 600, "approvers": ["alice", "bob"]}
    params = write_params(tmp_path, inputs | {"review": review})
    raw = yaml.safe_load(params.read_text())
    raw["variants"] = {"onnx_int8": {"technique": "onnx_int8", "source": "baseline"}}
    raw["gates"]["per_variant"] = {}
    raw["benchmark"] = {**raw["benchmark"], **FAST_BENCHMARK}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    client_home = tmp_path / "client-prefect-home"
    env = cli_env({}, stack.api) | {
        "PREFECT_API_AUTH_STRING": stack.credential("worker"),  # `infra/stack.sh env`
        "PREFECT_HOME": str(client_home),
        "PREFECT_LOCAL_STORAGE_PATH": str(client_home / "storage"),
        "PYTHONUNBUFFERED": "1",
    }
    registry = tmp_path / "registry"
    command = [sys.executable, "-m", "flows.cli", "nightly", "--params", str(params)]
    command += ["--workdir", str(tmp_path / "work"), "--registry-uri", str(registry)]
    cli_log = tmp_path / "cli.log"
    alice, carol, worker = stack.client("alice"), stack.client("carol"), stack.client("worker")
    with Processes() as started:
        cli = started.popen(command, env=env, log=cli_log)
        run = _wait_for_review(alice, cli)
        path = f"/flow_runs/{run['id']}"
        answer = {"approve_onnx_int8": True, "reviewer": "", "comment": "<img src=x> looks fine"}

        refused = stack.probe(
            "POST resume as worker",
            "403",
            worker.post(f"{path}/resume", json={"run_input": answer}),
        )
        assert refused.status_code == 403 and "cannot resume" in refused.json()["detail"]
        cancel = {"state": {"type": "CANCELLING", "name": "Cancelling"}}
        cancelled = stack.probe(
            "POST set_state CANCELLING on the paused run as worker", "403",
            worker.post(f"{path}/set_state", json=cancel),
        )  # fmt: skip
        assert cancelled.status_code == 403
        as_bob = answer | {"reviewer": "bob"}
        impostor = stack.probe(
            "POST resume as alice, reviewer typed 'bob'", "403",
            alice.post(f"{path}/resume", json={"run_input": as_bob}),
        )  # fmt: skip
        assert impostor.status_code == 403 and "logged in as alice" in impostor.json()["detail"]
        for key in ("modelpress-approver-review", "paused-review-response"):
            forged = stack.probe(
                f"POST run input '{key}' as alice", "403",
                alice.post(f"{path}/input", json={"key": key, "value": json.dumps({"principal": "bob"})}),
            )  # fmt: skip
            assert forged.status_code == 403, forged.text
        assert alice.get(path).json()["state_type"] == "PAUSED"

        # carol logs in but is not on review.approvers: the flow refuses, records it, asks again
        # (without a run_input at all: the guard answers for her login all the same)
        not_listed = stack.probe(
            "POST resume as carol (not on review.approvers), no run_input",
            "201 ACCEPT, then refused by the flow",
            carol.post(f"{path}/resume", json={}),
        )  # fmt: skip
        assert not_listed.json()["status"] == "ACCEPT", not_listed.text
        first = run["state"]["state_details"]["run_input_keyset"]["schema"]
        run = _wait_for_review(alice, cli, after=first)

        approved = stack.probe(
            "POST resume as alice, reviewer left blank", "201 ACCEPT, published as alice",
            alice.post(f"{path}/resume", json={"run_input": answer}),
        )  # fmt: skip
        assert approved.json()["status"] == "ACCEPT", approved.text
        cli.wait(timeout=600)
    output = cli_log.read_text()
    assert cli.returncode == 0, output[-3000:]
    assert "nightly: published" in output, output[-2000:]

    manifest = json.loads(next(registry.rglob("manifest.json")).read_text())
    approval = manifest["variants"]["onnx_int8"]["approval"]
    assert approval["approved_by"] == "alice"
    assert approval["identity"].startswith("authenticated login"), approval
    # the run's page in the UI a fresh browser gets (Prefect 3.8 serves its newer UI under /v2)
    assert approval["flow_run_url"] == stack.api.removesuffix("/api") + f"/v2{path}".replace(
        "/flow_runs/", "/runs/flow-run/"
    )
    assert approval["flow_run_url"] in output  # the `review needed` line of the run's log
    decisions = sorted(p for p in registry.rglob("*.json") if p.parent.name == "decisions")
    outcomes = [json.loads(d.read_text()) for d in decisions]
    assert [(d["outcome"], d["reviewer"]) for d in outcomes] == [
        ("refused", "carol"),
        ("approved", "alice"),
    ], outcomes
    assert "not on review.approvers" in outcomes[0]["reason"]
    # the form no longer tells an impostor whom to type
    schema = alice.get(
        f"{path}/input/{run['state']['state_details']['run_input_keyset']['description']}"
    )
    assert "alice" not in schema.text and "bob" not in schema.text

    scan = Scan(
        secrets={
            **{
                f"{n} password": stack.credential(n).split(":", 1)[1]
                for n in ("worker", "alice", "carol")
            },
            "server auth string": (stack.state / "upstream-auth").read_text().strip(),
            "proxy secret": (stack.state / "proxy-secret").read_text().strip(),
        }
    )
    for log in stack.state.glob("*.log"):
        scan.add(log.name, log.read_bytes())
    scan.add("cli-output", output)
    scan.add("manifest", json.dumps(manifest))
    scan.add_files("files", tmp_path)
    assert scan.hits == [] and scan.total("caddy-access.log") > 10_000
    access = [
        json.loads(line) for line in (stack.state / "caddy-access.log").read_text().splitlines()
    ]
    resumes = [
        (a.get("user_id"), a["status"]) for a in access if a["request"]["uri"].endswith("/resume")
    ]
    assert ("worker", 403) in resumes and ("alice", 201) in resumes  # who did what: Caddy's log


def test_rotate_auth_replaces_the_server_and_worker_secrets_and_people_keep_theirs(
    stack: Stack,
) -> None:
    worker, alice = stack.credential("worker"), stack.credential("alice")
    server_secret = (stack.state / "upstream-auth").read_text()
    rotated = stack.run("rotate-auth")
    assert rotated.returncode == 0, rotated.stdout[-2000:] + rotated.stderr[-2000:]
    assert stack.credential("worker") != worker
    assert (stack.state / "upstream-auth").read_text() != server_secret
    old = httpx.get(f"{stack.api}/admin/version", headers={"Authorization": basic_auth(worker)})
    stack.probe(
        "GET /api/admin/version with the worker credential from before rotate-auth", "401", old
    )
    assert old.status_code == 401
    kept = httpx.get(f"{stack.api}/admin/version", headers={"Authorization": basic_auth(alice)})
    assert kept.status_code == 200  # a person's credential outlives the rotation
