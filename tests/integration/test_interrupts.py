"""SIGINT and SIGTERM to `modelpress nightly`, `search` and `fleet` mid-build: the command ends
within 10 s, leaves no process behind (Prefect's temporary server, build and flow-run
children) and says what was kept. Before, SIGINT took about a minute (the build thread ran on)
and SIGTERM left the temporary server listening.

Each command runs without PREFECT_API_URL, so it starts its own temporary server: the process
that was orphaned."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests import processes
from tests.helpers import CRASHING_TECHNIQUE, FAST_BENCHMARK, REPO_ROOT, cli_env, write_params

pytestmark = pytest.mark.slow

HANG = {"technique": "crashing", "source": "baseline", "how": "hang"}  # 120 s in Python


def _params(tmp_path: Path) -> Path:
    path = write_params(tmp_path, {"train": {"epochs": 2}, "benchmark": FAST_BENCHMARK})
    raw = yaml.safe_load(path.read_text())
    raw["techniques"] = [CRASHING_TECHNIQUE]
    raw["variants"] = {"slow": HANG}
    raw["gates"]["per_variant"] = {}
    raw["registry"] = {"uri": str(tmp_path / "registry"), "model_name": "interrupted"}
    # the search builds its trials from the same hanging technique
    raw["search"] = {
        "chains": [["crashing"]],
        "space": {"crashing.how": ["hang"]},
        "budget": {"trials": 1},
        "batch": 1,
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _command(name: str, tmp_path: Path, params: Path) -> list[str]:
    work = ["--workdir", str(tmp_path / "work")]
    if name == "fleet":
        fleet = {
            "mode": "local",
            "approval": "auto",
            "models": [{"name": "interrupted", "params": str(params)}],
        }
        (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(fleet))
        return ["fleet", str(tmp_path / "fleet.yaml"), *work]
    return [name, "--params", str(params), "--approval", "auto", *work]


def _session(sid: int) -> list[psutil.Process]:
    alive = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return alive


@pytest.mark.parametrize(
    ("command", "signum"),
    [
        ("nightly", signal.SIGINT),
        ("nightly", signal.SIGTERM),
        ("search", signal.SIGINT),
        ("fleet", signal.SIGTERM),
    ],
)
def test_a_signal_mid_build_stops_everything_within_10_s(
    command: str, signum: signal.Signals, tmp_path: Path
) -> None:
    params = _params(tmp_path)
    env = cli_env({}) | {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "out.log"
    argv = [sys.executable, "-m", "flows.cli", *_command(command, tmp_path, params)]
    with processes.Processes(grace_s=10) as started:
        run = started.popen(argv, env=env, cwd=REPO_ROOT, log=log)
        sid = run.pid  # its own session: every process it starts is in it
        deadline = time.monotonic() + 300
        # mid-build: the hanging technique's build has started (in the flow, or in the fleet's
        # child nightly)
        while "hangs for 120 s" not in log.read_text():
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(1)
        sent = time.monotonic()
        os.kill(run.pid, signum)  # the command alone, as a terminal or a supervisor does
        code = run.wait(timeout=60)
        took = time.monotonic() - sent
        time.sleep(1)  # the last SIGKILLed children are reaped by init
        left = [p.cmdline() for p in _session(sid)]
    text = log.read_text()
    assert took < 10, (took, text[-2000:])
    assert code == 130, text[-2000:]
    assert left == [], left
    assert "Starting temporary server" in text
    assert f"interrupted ({signal.Signals(signum).name})" in text, text[-2000:]
    assert "cached under" in text and str(tmp_path / "work") in text
    assert not (tmp_path / "registry" / "interrupted").exists()
