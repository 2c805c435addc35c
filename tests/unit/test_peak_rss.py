"""A measuring child reports its own peak memory, not its parent's: Linux keeps getrusage's
ru_maxrss across execve, and every edge-cpu row of the real example said 21,845 MB (the
nightly's own peak) for models that run in under 100 MB."""

from __future__ import annotations

import sys

import numpy as np

from tests import processes
from tests.helpers import REPO_ROOT

CHILD = "from tasks.benchmark import peak_rss_mb; print(peak_rss_mb())"


def test_a_child_of_a_large_parent_reports_its_own_peak() -> None:
    held = np.ones(600 << 20, dtype=np.uint8)  # 600 MB resident in this process
    assert held.sum() == held.size  # touched: resident, not only reserved
    done = processes.run(
        [sys.executable, "-c", CHILD], timeout=120, capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    child_mb = float(done.stdout.strip())
    assert 5 < child_mb < 400, child_mb  # numpy and the runtimes' imports, not the parent's 600
