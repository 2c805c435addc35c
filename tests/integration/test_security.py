"""Security: credentials never leave the environment, and nothing is published without approval.

Recognisable fake AWS credentials are put in the environment of a real nightly run (S3 registry on
a loopback moto endpoint, the session's Prefect server), then every output is searched for them:
the run's Prefect logs, artifacts, flow and task run records, the published manifest and every
object in the bucket, every file under the run's directories and Prefect's result storage, the
flow's return value, and what was printed. Failing runs and the CLI are searched the same way.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests import processes
from tests.helpers import (
    FAST_BENCHMARK,
    LENIENT_GATES,
    REPO_ROOT,
    cli_env,
    write_params,
    write_random_inputs,
)

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAMODELPRESSLEAK01",
    "AWS_SECRET_ACCESS_KEY": "mp-secret-LEAK-7f3a9c",
    "AWS_SESSION_TOKEN": "mp-token-LEAK-42",
}
THREE_VARIANTS = {
    "tflite_int8": {"technique": "tflite_int8", "source": "baseline", "calibration_samples": 64},
    "pruned": {"technique": "pruned", "source": "baseline", "ratio": 0.3, "finetune_epochs": 1},
    "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 4},
}
EXIT_USER_ERROR = 2


@pytest.fixture(scope="module", autouse=True)
def _prefect_logging_outside_capfd() -> None:
    """Prefect configures logging when first imported and binds its console handler to the
    sys.stderr of that moment: import it here, not inside a test whose capfd stream then closes
    (every later log line would fail on the closed stream)."""
    import prefect.main  # noqa: F401


# ---- the search -------------------------------------------------------------------------------


@dataclass
class Scan:
    """Counts every occurrence of the secrets in what it is shown, and how much it was shown."""

    scanned: dict[str, int] = field(default_factory=dict)  # source → bytes
    hits: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=lambda: dict(SECRETS))  # name → secret

    def add(self, source: str, content: str | bytes) -> None:
        data = content if isinstance(content, bytes) else content.encode("utf-8", "replace")
        self.scanned[source] = self.scanned.get(source, 0) + len(data)
        for name, secret in self.secrets.items():
            count = data.count(secret.encode())
            if count:
                self.hits.append(f"{name} x{count} in {source}")

    def add_files(self, source: str, root: Path) -> int:
        files = [p for p in Path(root).rglob("*") if p.is_file()]
        for path in files:
            self.add(f"{source}:{path.relative_to(root)}", path.read_bytes())
        return len(files)

    def total(self, prefix: str) -> int:
        return sum(n for source, n in self.scanned.items() if source.startswith(prefix))


def _dump(value: Any) -> str:
    """Pydantic models (Prefect's client objects) and plain values as JSON text."""
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    return json.dumps(value, default=str)


def test_the_scan_finds_a_planted_secret() -> None:
    """The zero-hit assertions below mean something only if the scan can see a secret."""
    scan = Scan()
    scan.add("control", f"key={SECRETS['AWS_SECRET_ACCESS_KEY']}".encode())
    scan.add("control", repr({"token": SECRETS["AWS_SESSION_TOKEN"]}))
    assert scan.hits == ["AWS_SECRET_ACCESS_KEY x1 in control", "AWS_SESSION_TOKEN x1 in control"]


# ---- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def leaky_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The fake secrets in this process's environment (boto3 reads them there), no AWS files."""
    env = SECRETS | {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _params(directory: Path, registry: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = write_params(directory, {"gates": LENIENT_GATES, "registry": registry, **(extra or {})})
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = THREE_VARIANTS
    raw["gates"]["per_variant"] = {}
    raw["benchmark"] = {**raw["benchmark"], **FAST_BENCHMARK}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _flush_run_logs() -> None:
    """Logs reach the server in batches from a background worker: send what is queued."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30, at_exit=False)


def _scan_flow_run(scan: Scan, flow_run_id: UUID) -> list[str]:
    """Logs, artifacts, flow and task run records of one run; returns the log messages."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort, LogSort, TaskRunSort

    _flush_run_logs()
    messages: list[str] = []
    # Prefect 3.8.8's server rejects filter requests without an explicit sort, limit and offset
    with get_client(sync_client=True) as client:
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        while batch := client.read_logs(
            log_filter=log_filter, limit=200, offset=len(messages), sort=LogSort.TIMESTAMP_ASC
        ):
            for log in batch:
                scan.add("logs", _dump(log))
                messages.append(log.message)
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(),
            flow_run_filter=runs,
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=200,
            offset=0,
        )
        for artifact in artifacts:
            scan.add(f"artifacts:{artifact.key}", _dump(artifact))
        scan.add("flow-run", _dump(client.read_flow_run(flow_run_id)))
        task_runs = client.read_task_runs(
            flow_run_filter=runs, sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200
        )
        for task_run in task_runs:
            scan.add("task-runs", _dump(task_run))
    return messages


def _scan_bucket(scan: Scan, endpoint: str, bucket: str) -> int:
    s3 = _s3(endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    for key in keys:
        response = s3.get_object(Bucket=bucket, Key=key)
        scan.add(f"s3:{key}", response["Body"].read())
        scan.add(f"s3-metadata:{key}", _dump(response.get("Metadata", {})))
    return len(keys)


def _result_storage() -> Path:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return Path(PREFECT_LOCAL_STORAGE_PATH.value())


def _cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return processes.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---- a published run ----------------------------------------------------------------------------


@pytest.mark.slow
def test_published_run_leaks_no_credentials_anywhere(
    prefect_server: str,
    s3_endpoint: str,
    leaky_env: dict[str, str],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flows.nightly import nightly
    from tasks.registry import open_registry

    _s3(s3_endpoint).create_bucket(Bucket="mp-security")
    registry = {
        "uri": "s3://mp-security/registry",
        "endpoint_url": s3_endpoint,
        "model_name": "digits-sec",
    }
    params = _params(tmp_path, registry)
    state = nightly(
        params_file=str(params),
        approval="auto",
        version="sec.1",
        workdir=str(tmp_path / "work"),
        return_state=True,
    )
    result = state.result()
    assert result.status == "published" and len(result.published) >= 2, result

    scan = Scan()
    messages = _scan_flow_run(scan, state.state_details.flow_run_id)
    manifest = open_registry(_load(params).registry).read_manifest("digits-sec", "sec.1")
    scan.add("manifest", json.dumps(manifest))
    objects = _scan_bucket(scan, s3_endpoint, "mp-security")
    files = scan.add_files("files", tmp_path)
    scan.add_files("result-storage", _result_storage())
    scan.add("return-value", repr(result) + json.dumps(asdict(result), default=str))
    captured = capfd.readouterr()
    # Prefect's console handler writes where the first test that imported it pointed it: scan the
    # raw streams and the log records
    scan.add("console", captured.out + captured.err + caplog.text)

    assert scan.hits == []
    # the search saw the real outputs, not empty ones
    assert any("published digits-sec version sec.1" in m for m in messages), messages[-5:]
    assert len(messages) >= 10 and scan.total("logs") > 5_000
    assert {"digits-sec-variants", "digits-sec-summary", "digits-sec-pareto"} <= {
        s.removeprefix("artifacts:") for s in scan.scanned if s.startswith("artifacts:")
    }
    assert scan.total("artifacts:") > 10_000 and scan.total("task-runs") > 5_000
    assert objects >= 1 + 2 * len(result.published) and scan.total("s3:") > 50_000
    assert set(manifest["variants"]) == set(result.published)
    assert files >= 10 and scan.total("files:") > 100_000
    assert scan.total("return-value") > 500 and scan.total("console") > 1_000
    assert sum(scan.scanned.values()) > 500_000


def _load(params: Path) -> Any:
    from tasks.params_file import load_params

    return load_params(params)


# ---- failing runs and the CLI --------------------------------------------------------------------


def _failed_run(params: Path, tmp_path: Path) -> tuple[Any, Exception]:
    from flows.nightly import nightly

    state = nightly(
        params_file=str(params),
        approval="auto",
        workdir=str(tmp_path / "work"),
        return_state=True,
    )
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, Exception)
    return state, error


def test_failed_runs_leak_no_credentials(
    prefect_server: str,
    s3_endpoint: str,
    leaky_env: dict[str, str],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import moto.settings

    from tasks.registry import RegistryError

    scan = Scan()
    missing = _params(
        tmp_path / "missing",
        {"uri": "s3://mp-no-such-bucket/r", "endpoint_url": s3_endpoint},
    )
    state, error = _failed_run(missing, tmp_path / "missing")
    assert isinstance(error, RegistryError) and "does not exist" in str(error)
    scan.add("missing-bucket:error", str(error) + repr(error))
    scan.add("missing-bucket:state", f"{state!r} {state.message}")
    _scan_flow_run(scan, state.state_details.flow_run_id)

    _s3(s3_endpoint).create_bucket(Bucket="mp-security-auth")
    rejected = _params(
        tmp_path / "rejected",
        {"uri": "s3://mp-security-auth/r", "endpoint_url": s3_endpoint},
    )
    # moto with authentication on: the fake key belongs to no IAM user, as a wrong key would
    previous = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    try:
        state, error = _failed_run(rejected, tmp_path / "rejected")
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = previous
    assert isinstance(error, RegistryError) and "rejected the credentials" in str(error)
    scan.add("rejected:error", str(error) + repr(error))
    scan.add("rejected:state", f"{state!r} {state.message}")
    _scan_flow_run(scan, state.state_details.flow_run_id)

    scan.add_files("files", tmp_path)
    captured = capfd.readouterr()
    # where Prefect's console handler writes depends on which test imported it first: scan both
    # the raw streams and the log records (with their tracebacks)
    console = captured.out + captured.err + caplog.text
    scan.add("console", console)

    assert scan.hits == []
    assert scan.total("logs") > 500 and scan.total("console") > 200
    assert "does not exist" in console and "rejected the credentials" in console


def test_registry_cli_errors_leak_no_credentials(s3_endpoint: str, tmp_path: Path) -> None:
    import moto.settings

    env = cli_env(SECRETS)
    missing = _cli(
        tmp_path, env, "registry", "list", "--uri", "s3://mp-absent", "--endpoint-url", s3_endpoint
    )
    assert missing.returncode == EXIT_USER_ERROR, missing.stderr
    assert missing.stderr.startswith("error: bucket 'mp-absent' does not exist")

    _s3_with_admin(s3_endpoint).create_bucket(Bucket="mp-cli-auth")
    previous = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # the server runs in this process
    try:
        rejected = _cli(
            tmp_path,
            env,
            *("registry", "show", "digits", "--uri", "s3://mp-cli-auth/r"),
            *("--endpoint-url", s3_endpoint),
        )
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = previous
    assert rejected.returncode == EXIT_USER_ERROR, rejected.stderr
    assert re.match(r"error: S3 at .* rejected the credentials", rejected.stderr)

    scan = Scan()
    for name, done in (("missing", missing), ("rejected", rejected)):
        scan.add(f"{name}:stdout", done.stdout)
        scan.add(f"{name}:stderr", done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert scan.hits == []
    assert scan.total("missing:") > 40 and scan.total("rejected:") > 40


def _s3_with_admin(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )


def test_credentials_in_params_are_refused_without_echoing_them(tmp_path: Path) -> None:
    """params are recorded in every manifest's lineage: a secret there would be published."""
    from tasks.errors import ConfigError
    from tasks.params_file import load_params

    remote = {
        "endpointurl": "http://127.0.0.1:9",
        "secret_access_key": SECRETS["AWS_SECRET_ACCESS_KEY"],
    }
    params = write_params(tmp_path, {"fetch": {"remote_config": remote}})

    with pytest.raises(
        ConfigError, match=r"fetch\.remote_config: secret_access_key: credentials"
    ) as caught:
        load_params(params)

    assert SECRETS["AWS_SECRET_ACCESS_KEY"] not in str(caught.value)
    assert "environment" in str(caught.value)


# ---- approval --------------------------------------------------------------------------------------


def test_approval_defaults_to_a_reviewer_everywhere() -> None:
    """auto-approval must be asked for: params.yaml, the config model and the deployment say ui."""
    from tasks.config import ReviewConfig

    assert yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["review"]["approval"] == "ui"
    assert ReviewConfig().approval == "ui"
    deployment = yaml.safe_load((REPO_ROOT / "infra" / "prefect.yaml").read_text())
    nightly = [d for d in deployment["deployments"] if d["entrypoint"].startswith("flows/nightly")]
    assert nightly and {d["parameters"]["approval"] for d in nightly} == {"ui"}


def test_cli_without_approval_flag_waits_for_a_reviewer_and_publishes_nothing(
    prefect_server: str, tmp_path: Path
) -> None:
    """`modelpress nightly` with no --approval takes params' default (ui): an unanswered review
    times out and nothing is published."""
    inputs = write_random_inputs(tmp_path)  # every accuracy gate off: a review is due
    params = write_params(tmp_path, inputs | {"review": {"timeout_s": 1}})
    raw = yaml.safe_load(params.read_text())
    assert raw["review"]["approval"] == "ui"  # the repo's default, untouched
    raw["variants"] = {"distilled": THREE_VARIANTS["distilled"] | {"epochs": 1}}
    raw["gates"]["per_variant"] = {}
    raw["benchmark"] = {**raw["benchmark"], **FAST_BENCHMARK}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))

    done = _cli(
        tmp_path,
        cli_env(SECRETS, prefect_server),
        *("nightly", "--params", str(params), "--workdir", str(tmp_path / "work")),
        *("--registry-uri", str(tmp_path / "registry")),
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "nightly: review-timed-out" in done.stdout, done.stdout[-2000:]
    assert "published: nothing" in done.stdout
    assert "review timed out after 1s" in done.stderr
    # nothing published: the registry holds only the record of the timed-out decision
    registry = tmp_path / "registry"
    stored = [p.relative_to(registry) for p in registry.rglob("*") if p.is_file()]
    assert [p.parts[1] for p in stored] == ["decisions"], stored
