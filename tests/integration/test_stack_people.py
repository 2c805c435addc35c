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
from pathlib import Path

import httpx
import pytest

from tasks.stack_users import basic_auth
from tests.integration.stack_harness import Stack, review_night, wait_for_review
from tests.integration.test_security import Scan
from tests.processes import Processes

pytestmark = pytest.mark.slow  # a whole stack and a nightly through it: about 3 minutes


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


def test_the_review_is_decided_by_the_login_not_by_a_typed_name(
    stack: Stack, tmp_path: Path
) -> None:
    command, env, registry, cli_log = review_night(stack, tmp_path, approvers=["alice", "bob"])
    alice, carol, worker = stack.client("alice"), stack.client("carol"), stack.client("worker")
    with Processes() as started:
        cli = started.popen(command, env=env, log=cli_log)
        run = wait_for_review(alice, cli)
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
        run = wait_for_review(alice, cli, after=first)

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
