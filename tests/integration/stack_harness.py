"""The real stack (`infra/stack.sh up`: Caddy, the review guard, Prefect server, workers, S3)
for the tests that log in to it (the `stack` fixture is in conftest.py: alice, bob and carol are
reviewers, the workers' credential is the stack's own); a nightly that waits for review through
the stack, and a wait for its form."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tasks.stack_users import basic_auth
from tests import processes
from tests.helpers import (
    FAST_BENCHMARK,
    REPO_ROOT,
    cli_env,
    write_params,
    write_random_inputs,
)


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


def review_night(
    stack: Stack, tmp_path: Path, approvers: list[str]
) -> tuple[list[str], dict[str, str], Path, Path]:
    """A nightly through the stack as its workers run it (the worker credential), every accuracy
    gate off so that a review is due: its command, environment, registry and log file."""
    inputs = write_random_inputs(tmp_path)  # every accuracy gate off: a review is due
    review = {"approval": "ui", "timeout_s": 600, "approvers": approvers}
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
    return command, env, registry, cli_log


def wait_for_review(
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
