"""`infra/stack.sh up --db postgres`: the real stack with its Prefect server on a PostgreSQL that
the script initialises and starts. The operator's Prefect CLI works against it; `env` prints the
ports it started with; its Prefect home is its own (mode 700). With a work-pool limit of 1 on the
nightly's pool (what an operator sets first), the fleet deployment still ends: its own run is on
its own pool, and its nightly is a row in PostgreSQL. `down` stops PostgreSQL too."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import yaml

from tests import processes
from tests.helpers import FAST_BENCHMARK, LENIENT_GATES, REPO_ROOT, cli_env, free_port, write_params

pytestmark = pytest.mark.slow


def _stack(env: dict[str, str], *args: str) -> processes.subprocess.CompletedProcess[str]:
    return processes.run(
        ["bash", str(REPO_ROOT / "infra" / "stack.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def _nightly_runs(port: int, password: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user="modelpress", password=password, database="prefect"
    )
    try:
        rows = await conn.fetch(
            "SELECT fr.state_type FROM flow_run fr JOIN flow f ON f.id = fr.flow_id"
            " WHERE f.name = 'nightly'"
        )
    finally:
        await conn.close()
    return [str(row["state_type"]) for row in rows]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_nightly_against_the_postgres_backed_server(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env |= {
        "MODELPRESS_BIN": str(Path(sys.executable).parent),
        "MODELPRESS_STACK_STATE": str(state),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_PORT": str(free_port()),
        "S3_PORT": str(free_port()),
    }
    params = write_params(tmp_path, {"gates": LENIENT_GATES, "benchmark": FAST_BENCHMARK})
    raw = yaml.safe_load(params.read_text())
    raw["variants"] = {
        "tflite_int8": {"technique": "tflite_int8", "source": "baseline", "calibration_samples": 64}
    }
    raw["gates"]["per_variant"] = {}
    raw["train"]["epochs"] = 3
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    pg_dir: Path | None = None
    try:
        up = _stack(env, "up", "--db", "postgres")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "database: postgres" in up.stdout and "postgres started on 127.0.0.1:" in up.stdout
        pg_dir = Path((state / "postgres.dir").read_text().strip())
        port = int((state / "postgres.port").read_text())
        password = (state / "postgres-password").read_text().strip()
        assert (state / "postgres-password").stat().st_mode & 0o777 == 0o600
        assert password not in up.stdout + up.stderr

        home = state / "prefect-home"
        assert home.stat().st_mode & 0o777 == 0o700
        # another shell: no port variables, but `env` names the running stack's
        other_shell = {k: v for k, v in env.items() if not k.endswith("_PORT")}
        exports = _stack(other_shell, "env").stdout
        api = f"http://127.0.0.1:{env['PREFECT_PORT']}/api"
        assert f"PREFECT_API_URL={api}" in exports and f"PREFECT_HOME={home}" in exports
        cli = cli_env({}, api) | {
            "PREFECT_API_AUTH_STRING": (state / "credentials" / "worker").read_text().strip(),
            "PREFECT_HOME": str(home),
        }
        prefect = str(Path(sys.executable).parent / "prefect")
        # the operator's first commands: each got a 422 with fastapi 0.151+
        for command in ("flow-run ls", "flow ls", "deployment ls", "work-pool ls", "artifact ls"):
            done = processes.run(
                [prefect, *command.split()], env=cli, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        listed = processes.run(
            [prefect, "deployment", "ls"], env=cli, capture_output=True, text=True, timeout=120
        ).stdout
        for deployment in ("nightly/nightly", "fleet/fleet", "benchmark/cuda"):
            assert deployment in listed, listed  # `deploy --all` deployed every one

        limited = processes.run(
            [prefect, "work-pool", "set-concurrency-limit", "modelpress-local", "1"],
            env=cli, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert limited.returncode == 0, limited.stderr
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(
            yaml.safe_dump(
                {
                    "mode": "deployment",
                    "approval": "auto",
                    "models": [
                        {
                            "name": "digits-pg",
                            "params": str(params),
                            "overrides": {"registry": {"uri": str(tmp_path / "registry")}},
                        }
                    ],
                }
            )
        )
        run = processes.run(
            [prefect, "deployment", "run", "fleet/fleet", "--param", f"fleet_file={fleet_file}",
             "--param", f"workdir={tmp_path / 'work'}", "--watch", "--watch-timeout", "500"],
            env=cli, capture_output=True, text=True, timeout=560,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "COMPLETED" in run.stdout.upper(), run.stdout[-3000:]
        assert (tmp_path / "registry" / "digits-pg").is_dir()
        # the run is in PostgreSQL, not in a SQLite file (beside the deployment's scheduled runs)
        states = asyncio.run(_nightly_runs(port, password))
        assert states.count("COMPLETED") == 1 and set(states) <= {"COMPLETED", "SCHEDULED"}
        assert not list(home.glob("*.db"))
    finally:
        down = _stack(env, "down")
        if pg_dir is not None and pg_dir.is_relative_to("/var/lib/postgresql"):
            shutil.rmtree(pg_dir, ignore_errors=True)  # as root: outside tmp_path
    assert down.returncode == 0, down.stderr
    assert "postgres stopped" in down.stdout
    assert not _port_open(port)
