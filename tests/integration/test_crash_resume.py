"""Crash and resume: a nightly run killed (SIGKILL) right after compression, then run again, reuses
the finished work through Prefect's cache and publishes exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import processes
from tests.helpers import LENIENT_GATES, write_params
from tests.processes import Processes, kill

pytestmark = pytest.mark.slow

VARIANTS = {
    "tflite_int8": {"technique": "tflite_int8", "source": "baseline", "calibration_samples": 64},
    "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 6},
}


def _command(params: Path, workdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flows.cli",
        "nightly",
        "--params",
        str(params),
        "--approval",
        "auto",
        "--workdir",
        str(workdir),
    ]


def _env(api_url: str) -> dict[str, str]:
    return dict(os.environ, PREFECT_API_URL=api_url, TF_CPP_MIN_LOG_LEVEL="2", DVC_NO_ANALYTICS="1")


def test_killed_run_resumes_from_cache_and_publishes_once(
    prefect_server: str, tmp_path: Path
) -> None:
    params = write_params(
        tmp_path, {"gates": LENIENT_GATES, "registry": {"uri": str(tmp_path / "registry")}}
    )
    raw = yaml.safe_load(params.read_text())
    raw["variants"], raw["gates"]["per_variant"] = VARIANTS, {}
    raw["benchmark"] = {"iterations": 20, "warmup": 2, "max_seconds": 2.0, "trials": 1}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    workdir = tmp_path / "work"

    # first run: killed as soon as every variant is built (the flow logs "variants: ...")
    with Processes() as started:  # stopped whatever happens below
        first = started.popen(
            _command(params, workdir),
            cwd=tmp_path,
            env=_env(prefect_server),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 600
        seen = []
        assert first.stdout is not None
        for line in first.stdout:
            seen.append(line)
            if "variants: baseline=ok" in line:
                kill(first)
                break
            assert time.monotonic() < deadline, "the first run never finished compression"
    assert first.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not list((tmp_path / "registry").rglob("manifest.json"))  # killed before publishing

    # second run: same inputs, same cache; compression and evaluation come from the cache
    second = processes.run(
        _command(params, workdir),
        cwd=tmp_path,
        env=_env(prefect_server),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    cached_line = next(
        line for line in second.stdout.splitlines() if line.strip().startswith("cached:")
    )
    cached = {name.strip() for name in cached_line.split(":", 1)[1].split(",")}
    assert cached == {"baseline", *VARIANTS}
    manifests = list((tmp_path / "registry").rglob("manifest.json"))
    assert len(manifests) == 1
    published = json.loads(manifests[0].read_text())
    assert set(published["variants"]) >= {"tflite_int8", "distilled"}
