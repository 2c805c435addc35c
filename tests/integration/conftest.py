"""Real services for the integration tests: a Prefect server (test harness), an S3 endpoint, and
the whole stack behind its login (module-scoped: one per module that asks for it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.integration.stack_harness import Stack


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One real Prefect server (SQLite, in a subprocess) for the whole session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3-compatible HTTP server on loopback (a real endpoint boto3 talks HTTP to)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake, recognisable credentials: moto accepts any."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMODELPRESSTEST01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "modelpress-test-secret-key-0000000000000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every integration test runs a real pipeline, server or stack: `make test` runs them,
    `make test-fast` (-m "not slow") leaves them out."""
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.slow)


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
