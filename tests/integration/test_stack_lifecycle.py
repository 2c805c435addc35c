"""infra/stack.sh up/down with stand-in programs: `up` says what S3 publishing needs, `env`
prints the ports the stack started with, Prefect's home is the stack's own, `down` stops every
process it started and what they spawned, even one that ignores SIGTERM."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from tests.helpers import REPO_ROOT

# A stand-in `prefect`: the server sleeps; a worker spawns a child (a flow run) and, on the
# edge-cpu pool, ignores SIGTERM as a worker stuck on a dead server does; the rest succeeds.
PREFECT = """#!/usr/bin/env bash
case "$1 $2" in
  "server start") exec sleep 300 ;;
  "worker start")
    if [[ "$4" == modelpress-edge-cpu ]]; then trap '' TERM; fi
    sleep 300 &
    echo $! >"$CHILDREN/$4.pid"
    while true; do wait; done ;;
esac
exit 0
"""
# A stand-in `python`: the deploy's schedule, secrets and free ports; `-m tasks.stack_users add`
# writes a credential, the guard sleeps
PYTHON = """#!/usr/bin/env bash
if [[ "${1:-}" == - ]]; then echo "export MODELPRESS_CRON='0 2 * * *' MODELPRESS_TIMEZONE='UTC'"; fi
if [[ "${1:-}" == -c ]]; then
  if [[ "$2" == *getsockname* ]]; then echo 3; else echo "stand-in-secret"; fi
fi
if [[ "${1:-} ${2:-}" == "-m tasks.stack_guard" ]]; then exec sleep 300; fi
if [[ "${1:-} ${2:-} ${3:-}" == "-m tasks.stack_users add" ]]; then
  state=${@: -1}; mkdir -p "$state/credentials"; echo "$4:stand-in" >"$state/credentials/$4"
fi
exit 0
"""
CADDY = """#!/usr/bin/env bash
if [[ "$1" == run ]]; then exec sleep 300; fi
exit 0
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_up_names_the_aws_variables_and_down_stops_every_process_group(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "infra").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "infra" / "stack.sh", repo / "infra" / "stack.sh")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    _script(venv_bin / "prefect", PREFECT)
    _script(venv_bin / "moto_server", "#!/usr/bin/env bash\nexec sleep 300\n")
    _script(venv_bin / "python", PYTHON)
    _script(venv_bin / "caddy", CADDY)
    tools = tmp_path / "tools"
    tools.mkdir()
    # a stand-in curl: every endpoint is up, and the API asked without a credential answers 401
    # as the closed server does (`up` refuses a server that answers without it)
    _script(
        tools / "curl", '#!/usr/bin/env bash\n[[ "$*" == *http_code* ]] && printf 401\nexit 0\n'
    )
    children = tmp_path / "children"
    children.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"PATH": f"{tools}{os.pathsep}{env['PATH']}", "CHILDREN": str(children)}
    env |= {"PREFECT_PORT": "1", "S3_PORT": "2"}  # nothing listens: the stand-ins never bind
    env["MODELPRESS_CADDY"] = str(venv_bin / "caddy")
    stack = ["bash", str(repo / "infra" / "stack.sh")]
    state = repo / ".modelpress" / "stack"
    try:
        up = subprocess.run([*stack, "up"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set" in up.stdout, up.stdout
        assert "inherit" in up.stdout

        with_keys = env | {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        again = subprocess.run(
            [*stack, "up"], env=with_keys, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "not set" not in again.stdout

        # another shell, without the port variables: `env` still names the running stack's ports
        other_shell = {k: v for k, v in env.items() if not k.endswith("_PORT")}
        printed = subprocess.run(
            [*stack, "env"], env=other_shell, capture_output=True, text=True, timeout=60
        )
        assert printed.returncode == 0, printed.stderr
        assert "PREFECT_API_URL=http://127.0.0.1:1/api" in printed.stdout, printed.stdout
        home = state / "prefect-home"
        assert f"PREFECT_HOME={home}" in printed.stdout
        assert home.is_dir() and home.stat().st_mode & 0o777 == 0o700

        deadline = time.monotonic() + 30
        while len(list(children.glob("*.pid"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        started = [int(p.read_text()) for p in state.glob("*.pid")]
        spawned = [int(p.read_text()) for p in children.glob("*.pid")]
        # server, guard, caddy, S3, four workers
        assert len(started) == 8 and len(spawned) == 4, (started, spawned)
        assert all(_alive(pid) for pid in started + spawned)

        down = subprocess.run(
            [*stack, "down"], env=env, capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0, down.stdout + down.stderr
        time.sleep(0.5)  # init reaps what the SIGKILL ended
        assert [pid for pid in started + spawned if _alive(pid)] == []
        assert list(state.glob("*.pid")) == []
        assert not (state / "ports").exists()
    finally:
        for pid_file in [*state.glob("*.pid"), *children.glob("*.pid")]:
            pid = int(pid_file.read_text())
            for target in (-pid, pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(target, signal.SIGKILL)
