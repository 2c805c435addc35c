"""Two nightly runs publishing the same model at the same time, as two real processes against the
session's Prefect server and one S3 registry on a loopback endpoint.

Two runs with different files (other seeds): without a version, each allocates one by a
conditional write and both publish, under distinct versions; with the same explicit version,
exactly one publishes and the other is refused in one line. Two identical runs: exactly one
publishes, the other ends unchanged (a create-only claim of the content; both used to publish
byte-identical versions). Every time `registry verify` finds every manifest and checksum whole.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tasks.config import RegistryConfig
from tasks.registry import open_registry
from tests.helpers import cli_env, write_params, write_random_inputs
from tests.processes import Processes

BUCKET = "mp-concurrent"
MODEL = "digits-concurrent"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAMODELPRESSCONC01",
    "AWS_SECRET_ACCESS_KEY": "concurrent-test-secret",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random data, a linear .pt2 model and params with one fast variant that always passes."""
    root = tmp_path_factory.mktemp("concurrent")
    inputs = write_random_inputs(root)
    params = write_params(root, inputs | {"registry": {"model_name": MODEL}})
    raw = yaml.safe_load(params.read_text())
    raw["variants"] = {
        "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 1}
    }
    raw["gates"]["per_variant"] = {}
    raw["benchmark"] |= {"runners": ["cloud-cpu"], "trials": 1, "iterations": 10}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    for name, seed in (("a", 1), ("b", 2)):  # other seeds: other files
        (root / f"params-{name}.yaml").write_text(yaml.safe_dump(raw | {"seed": seed}))
    return root


def _start(
    started: Processes, root: Path, name: str, api_url: str, prefix: str, *extra: str
) -> Any:
    params = root / (
        f"params-{name}.yaml" if (root / f"params-{name}.yaml").exists() else "params.yaml"
    )
    return started.popen(
        [
            sys.executable,
            *("-m", "flows.cli", "nightly", "--params", str(params)),
            *("--approval", "auto", "--workdir", str(root / f"work-{name}")),
            *("--registry-uri", f"s3://{BUCKET}/{prefix}", *extra),
        ],
        cwd=root,
        env=cli_env(CREDENTIALS, api_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_both(
    workspace: Path,
    api_url: str,
    endpoint: str,
    prefix: str,
    *extra: str,
    names: tuple[str, str] = ("a", "b"),
) -> list[subprocess.CompletedProcess[str]]:
    for params in workspace.glob("params*.yaml"):
        raw = yaml.safe_load(params.read_text())
        raw["registry"]["endpoint_url"] = endpoint
        params.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = []
    with Processes() as started:  # both stopped, with what they started, on any path
        runs = [_start(started, workspace, n, api_url, prefix, *extra) for n in names]
        for run in runs:
            out, err = run.communicate(timeout=600)
            done.append(subprocess.CompletedProcess(run.args, run.returncode, out, err))
    return done


def _published_version(stdout: str) -> str:
    found = re.search(r"^nightly: published — model \S+ version (\S+)$", stdout, re.MULTILINE)
    assert found, stdout[-1500:]
    return found.group(1)


def _registry(endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return open_registry(RegistryConfig(uri=f"s3://{BUCKET}/{prefix}", endpoint_url=endpoint))


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    ).create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.mark.slow
def test_two_runs_at_once_get_distinct_versions(
    workspace: Path,
    prefect_server: str,
    s3_endpoint: str,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done = _run_both(workspace, prefect_server, s3_endpoint, "auto-versions")

    for run in done:
        assert run.returncode == 0, run.stderr[-3000:]
    versions = sorted(_published_version(run.stdout) for run in done)
    assert versions == ["1", "2"], [r.stdout[-800:] for r in done]
    registry = _registry(s3_endpoint, "auto-versions", monkeypatch)
    assert registry.list_versions(MODEL) == ["1", "2"]
    report = registry.verify()
    assert report.problems == [] and report.checked_versions == 2
    for version in versions:
        assert set(registry.read_manifest(MODEL, version)["variants"]) == {"baseline", "distilled"}


@pytest.mark.slow
def test_two_runs_for_one_version_one_publishes_one_is_refused(
    workspace: Path,
    prefect_server: str,
    s3_endpoint: str,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done = _run_both(workspace, prefect_server, s3_endpoint, "same-version", "--version", "7")

    codes = sorted(run.returncode for run in done)
    assert codes == [0, 2], [(r.returncode, r.stderr[-1500:]) for r in done]
    refused = next(run for run in done if run.returncode == 2)
    last_line = refused.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "7" in last_line, last_line
    assert "Traceback" not in refused.stderr
    registry = _registry(s3_endpoint, "same-version", monkeypatch)
    assert registry.list_versions(MODEL) == ["7"]
    report = registry.verify()
    assert report.problems == [] and report.checked_versions == 1


@pytest.mark.slow
def test_two_identical_runs_at_once_publish_once(
    workspace: Path,
    prefect_server: str,
    s3_endpoint: str,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same params and inputs in two processes at once: both found nothing published and
    both published, byte-identical, as versions 2 and 3. Now the content is claimed."""
    done = _run_both(
        workspace, prefect_server, s3_endpoint, "identical", names=("same-1", "same-2")
    )
    for run in done:
        assert run.returncode == 0, run.stderr[-3000:]
    published = [run for run in done if "nightly: published" in run.stdout]
    assert len(published) == 1, [r.stdout[-800:] for r in done]
    other = next(run for run in done if run is not published[0])
    assert "nightly: unchanged" in other.stdout, other.stdout[-1500:]
    registry = _registry(s3_endpoint, "identical", monkeypatch)
    assert registry.list_versions(MODEL) == ["1"]
    assert registry.verify().problems == []
