"""held_back inside a Prefect run with log_prints: converters' prints are not the run's log.

The flow runs in a fresh Python process against the session's server: what the run's log and the
convert log receive is decided by logging and stream state, which other tests in a shared (xdist)
process may have changed before this one ran."""

from __future__ import annotations

import json
import os
import sys

from tests import processes
from tests.helpers import REPO_ROOT

SCRIPT = r"""
import json, logging
from prefect import flow, task
from tasks.quiet import LOGGER, held_back


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@task
def convert():
    print("before the converter")
    with held_back():
        print("")  # onnx2tf's blank lines
        print("converter chatter")
    print("after the converter")


@flow(log_prints=True)
def nightly_like():
    convert()
    with held_back():
        print("flow-level chatter")


runs, held = Records(), Records()
for name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(name).addHandler(runs)
LOGGER.addHandler(held)
LOGGER.setLevel(logging.DEBUG)
nightly_like()
print("RESULT " + json.dumps({"runs": runs.messages, "held": held.messages}))
"""


def test_prints_held_back_in_a_task_stay_out_of_the_run_log(prefect_server: str) -> None:
    env = os.environ | {"PREFECT_API_URL": prefect_server, "PYTHONPATH": str(REPO_ROOT)}
    done = processes.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    runs, held = result["runs"], result["held"]
    assert "before the converter" in runs and "after the converter" in runs
    assert not {"", "converter chatter", "flow-level chatter"} & set(runs)
    assert "converter chatter" in held and "flow-level chatter" in held
    # and the console never saw the held-back lines
    assert "converter chatter" not in done.stdout.replace(line, "")
