"""The S3 registry against a real S3 HTTP endpoint on loopback (moto's threaded server)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import moto.settings
import pytest
from moto.server import ThreadedMotoServer

from tasks.config import RegistryConfig
from tasks.registry import (
    CLAIM_NAME,
    RESERVATION_NAME,
    PublishEntry,
    RegistryError,
    S3Registry,
    VerifyReport,
    open_registry,
)
from tests import processes
from tests.unit.test_registry import make_entry, run_threads

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "modelpress-registry"
ACCESS_KEY = "AKIAMODELPRESSTEST"
SECRET_KEY = "modelpress-fake-secret-value"
LINEAGE = {"git_commit": "abc123", "dvc": {"data": "md5:1", "model": "md5:2"}}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one empty bucket; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        _client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake credentials in the environment, and no shared AWS config files to interfere."""
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of its own for each test, so tests share the bucket without meeting."""
    return f"tests/{request.node.name.replace('[', '-').replace(']', '')}"


@pytest.fixture
def registry(endpoint: str, prefix: str) -> S3Registry:
    opened = open_registry(RegistryConfig(uri=f"s3://{BUCKET}/{prefix}", endpoint_url=endpoint))
    assert isinstance(opened, S3Registry)
    return opened


@pytest.fixture
def entries(tmp_path: Path) -> dict[str, PublishEntry]:
    src = tmp_path / "variants"
    return {
        "pruned": make_entry(src, "pruned", b"pruned-model-bytes" * 100),
        "tflite_int8": make_entry(src, "tflite_int8", b"\x00\x01int8" * 50),
    }


def _client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def _objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` with its bytes."""
    client = _client(endpoint)
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return {
        item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        for item in listing.get("Contents", [])
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_publish_list_show_pull_round_trip(
    registry: S3Registry,
    entries: dict[str, PublishEntry],
    endpoint: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    result = registry.publish("digits", "v1", entries, LINEAGE)

    assert result.uri == f"s3://{BUCKET}/{prefix}/digits/v1/manifest.json"
    manifest = registry.read_manifest("digits", "v1")
    assert manifest == result.manifest and manifest["lineage"] == LINEAGE
    stored = _objects(endpoint, prefix)
    assert sorted(stored) == sorted(
        f"{prefix}/digits/v1/{path}"
        for path in (
            ".claim",
            "manifest.json",
            "pruned/model.onnx",
            "pruned/variant.json",
            "tflite_int8/model.onnx",
            "tflite_int8/variant.json",
        )
    )
    for name, entry in entries.items():
        for filename in ("model.onnx", "variant.json"):
            data = (entry.directory / filename).read_bytes()
            listed = manifest["variants"][name]["files"][filename]
            assert listed == {"sha256": _sha256(data), "size_bytes": len(data)}
            assert stored[f"{prefix}/digits/v1/{name}/{filename}"] == data
    head = _client(endpoint).head_object(
        Bucket=BUCKET, Key=f"{prefix}/digits/v1/pruned/model.onnx", ChecksumMode="ENABLED"
    )
    model_bytes = (entries["pruned"].directory / "model.onnx").read_bytes()
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(model_bytes).digest()).decode()
    assert registry.list_models() == ["digits"]
    assert registry.list_versions("digits") == ["v1"]

    dest = registry.pull("digits", "v1", "tflite_int8", tmp_path / "pulled")
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx", "variant.json"]
    assert (dest / "model.onnx").read_bytes() == (
        entries["tflite_int8"].directory / "model.onnx"
    ).read_bytes()


def test_empty_prefix_uses_the_bucket_root(endpoint: str, entries: dict[str, PublishEntry]) -> None:
    registry = open_registry(RegistryConfig(uri=f"s3://{BUCKET}", endpoint_url=endpoint))

    result = registry.publish("rootmodel", "v1", entries, LINEAGE)

    assert result.uri == f"s3://{BUCKET}/rootmodel/v1/manifest.json"
    assert "rootmodel" in registry.list_models()


def test_second_publish_is_refused_and_first_left_intact(
    registry: S3Registry,
    entries: dict[str, PublishEntry],
    endpoint: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    before = _objects(endpoint, prefix)
    other = {"pruned": make_entry(tmp_path / "other", "pruned", b"different bytes")}

    with pytest.raises(
        RegistryError,
        match=r"digits/v1/manifest\.json already exists; published versions are immutable",
    ):
        registry.publish("digits", "v1", other, LINEAGE)

    assert _objects(endpoint, prefix) == before


def test_manifest_412_from_a_racing_publisher_is_refused(
    registry: S3Registry,
    entries: dict[str, PublishEntry],
    endpoint: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pre-check passes, then the manifest PUT gets 412: the other publisher's manifest stays."""
    registry.publish("digits", "v1", entries, LINEAGE)
    before = _objects(endpoint, prefix)
    monkeypatch.setattr(registry, "_exists", lambda key: False)

    with pytest.raises(RegistryError, match="already exists; published versions are immutable"):
        registry.publish("digits", "v1", entries, {"git_commit": "racer"})

    assert _objects(endpoint, prefix) == before


def test_data_file_left_with_same_bytes_is_accepted(
    registry: S3Registry, entries: dict[str, PublishEntry], endpoint: str, prefix: str
) -> None:
    """An interrupted earlier attempt uploaded a file but no manifest: publishing again works."""
    model_bytes = (entries["pruned"].directory / "model.onnx").read_bytes()
    _client(endpoint).put_object(
        Bucket=BUCKET, Key=f"{prefix}/digits/v1/pruned/model.onnx", Body=model_bytes
    )
    assert registry.list_versions("digits") == []

    registry.publish("digits", "v1", entries, LINEAGE)

    assert registry.list_versions("digits") == ["v1"]


def test_data_file_left_with_other_bytes_is_refused(
    registry: S3Registry, entries: dict[str, PublishEntry], endpoint: str, prefix: str
) -> None:
    key = f"{prefix}/digits/v1/pruned/model.onnx"
    _client(endpoint).put_object(Bucket=BUCKET, Key=key, Body=b"stale", ChecksumAlgorithm="SHA256")

    with pytest.raises(
        RegistryError, match=re.escape(f"{key} already exists with sha256 {_sha256(b'stale')}")
    ):
        registry.publish("digits", "v1", entries, LINEAGE)

    assert registry.list_versions("digits") == []
    assert _objects(endpoint, prefix)[key] == b"stale"


def test_pull_of_corrupted_object_fails_naming_it_and_leaves_no_dest(
    registry: S3Registry,
    entries: dict[str, PublishEntry],
    endpoint: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    key = f"{prefix}/digits/v1/pruned/model.onnx"
    _client(endpoint).put_object(Bucket=BUCKET, Key=key, Body=b"tampered")  # bypasses the registry
    expected = _sha256((entries["pruned"].directory / "model.onnx").read_bytes())
    dest = tmp_path / "pulled" / "pruned"

    with pytest.raises(
        RegistryError, match=rf"model\.onnx: checksum mismatch, expected sha256 {expected}"
    ) as caught:
        registry.pull("digits", "v1", "pruned", dest)

    assert _sha256(b"tampered") in str(caught.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_pull_of_unknown_variant_lists_the_published_ones(
    registry: S3Registry, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)

    with pytest.raises(RegistryError, match="no variant 'distilled'; it has: pruned, tflite_int8"):
        registry.pull("digits", "v1", "distilled", tmp_path / "out")


def test_version_without_manifest_is_not_published(
    registry: S3Registry, entries: dict[str, PublishEntry], endpoint: str, prefix: str
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    client = _client(endpoint)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/digits/v2/pruned/model.onnx", Body=b"half")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/orphan/v1/pruned/model.onnx", Body=b"half")

    assert registry.list_versions("digits") == ["v1"]
    assert registry.list_models() == ["digits"]
    with pytest.raises(RegistryError, match="digits/v2 is not published"):
        registry.read_manifest("digits", "v2")


def test_bad_names_are_refused_before_any_request(
    registry: S3Registry, entries: dict[str, PublishEntry], endpoint: str, prefix: str
) -> None:
    for model, version, variant in (("a/b", "v1", "x"), ("m", "..", "x"), ("m", "v1", "x\ty")):
        with pytest.raises(RegistryError, match=r"name .*: use 1-128 letters"):
            registry.publish(model, version, {variant: entries["pruned"]}, LINEAGE)

    assert _objects(endpoint, prefix) == {}


def test_missing_bucket_is_a_registry_error(
    endpoint: str, entries: dict[str, PublishEntry]
) -> None:
    registry = open_registry(RegistryConfig(uri="s3://no-such-bucket/x", endpoint_url=endpoint))

    for action in (registry.list_models, lambda: registry.publish("m", "v1", entries, LINEAGE)):
        with pytest.raises(
            RegistryError,
            match=re.escape(f"bucket 'no-such-bucket' does not exist at {endpoint}: create it"),
        ):
            action()


def test_closed_port_fails_fast_with_a_registry_error() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    registry = open_registry(RegistryConfig(uri=f"s3://{BUCKET}/x", endpoint_url=endpoint))

    started = time.monotonic()
    with pytest.raises(
        RegistryError,
        match=re.escape(f"cannot reach the S3 endpoint {endpoint} for bucket '{BUCKET}'"),
    ):
        registry.list_versions("digits")

    assert time.monotonic() - started < 10


def test_rejected_credentials_are_named_but_not_shown(
    registry: S3Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Turn on moto's authentication: our fake key belongs to no IAM user, as a wrong key would.
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)

    with pytest.raises(
        RegistryError, match=r"rejected the credentials for bucket .* \(InvalidAccessKeyId\)"
    ) as caught:
        registry.list_models()

    assert SECRET_KEY not in str(caught.value) and ACCESS_KEY not in str(caught.value)


def test_cli_shows_and_pulls_over_s3(
    registry: S3Registry,
    entries: dict[str, PublishEntry],
    endpoint: str,
    prefix: str,
    aws_env: dict[str, str],
    tmp_path: Path,
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  uri: s3://{BUCKET}/{prefix}\n  endpoint_url: {endpoint}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | aws_env
    env["PYTHONPATH"] = str(REPO_ROOT)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "flows.cli", "registry", *args]
        return processes.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    shown = cli("show", "digits", "--params", str(params))
    assert (shown.returncode, shown.stdout) == (0, "v1\n"), shown.stderr
    manifest = cli("show", "digits", "v1", "--params", str(params))
    sha = _sha256((entries["pruned"].directory / "model.onnx").read_bytes())
    assert (
        manifest.returncode == 0 and sha in manifest.stdout and "approved by ada" in manifest.stdout
    )
    pulled = cli("pull", "digits", "v1", "pruned", str(tmp_path / "out"), "--params", str(params))
    assert pulled.returncode == 0, pulled.stderr
    assert f"{sha}  {len(b'pruned-model-bytes' * 100):>10}  model.onnx" in pulled.stdout
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"pruned-model-bytes" * 100

    wrong = cli("list", "--params", str(params), "--uri", "s3://no-such-bucket")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("error: bucket 'no-such-bucket' does not exist")
    assert wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr


# ── verify, allocation and concurrency ──────────────────────────────────────────────────────


@pytest.fixture
def atomic_conditional_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's conditional PUT atomic, as S3's is.

    moto checks If-None-Match and then stores the object with no lock in between, so two
    racing PUTs could in principle both succeed, which S3 never allows (the loser gets 412,
    or 409 to retry). Serializing moto's PUT handler makes these tests measure our code
    against S3's documented behaviour rather than a race inside the fake.
    """
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    original = S3Response.put_object

    def put_object(self: S3Response) -> object:
        with lock:
            return original(self)

    monkeypatch.setattr(S3Response, "put_object", put_object)


def _kinds(report: VerifyReport) -> list[tuple[str, str]]:
    return [(p.kind, p.key) for p in report.problems]


def test_verify_reads_every_object_back(
    registry: S3Registry, entries: dict[str, PublishEntry], endpoint: str, prefix: str
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    registry.publish("digits", "v2", entries, LINEAGE)
    assert registry.verify() == VerifyReport(2, 8, [])
    client = _client(endpoint)
    # tampering that keeps a valid stored ChecksumSHA256: only reading the bytes catches it
    key = f"{prefix}/digits/v1/pruned/model.onnx"
    client.put_object(
        Bucket=BUCKET,
        Key=key,
        Body=bytes(len(b"pruned-model-bytes" * 100)),
        ChecksumAlgorithm="SHA256",
    )
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}/digits/v2/tflite_int8/variant.json")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/digits/v2/pruned/extra.bin", Body=b"x")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/digits/v3/pruned/model.onnx", Body=b"half")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/digits/v4/manifest.json", Body=b"{oops")

    report = registry.verify()

    assert _kinds(report) == [
        ("corrupt", "digits/v1/pruned/model.onnx"),
        ("missing", "digits/v2/tflite_int8/variant.json"),
        ("orphaned", "digits/v2/pruned/extra.bin"),
        ("orphaned", "digits/v3"),
        ("bad-manifest", "digits/v4/manifest.json"),
    ]
    assert not report.ok and (report.checked_versions, report.checked_files) == (3, 8)


def test_a_stale_reservation_is_orphaned(registry: S3Registry, endpoint: str, prefix: str) -> None:
    created = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    _client(endpoint).put_object(
        Bucket=BUCKET,
        Key=f"{prefix}/digits/9/{RESERVATION_NAME}",
        Body=json.dumps({"created_at": created}).encode(),
    )
    assert registry.allocate_version("digits") == "10"

    report = registry.verify()

    assert _kinds(report) == [("orphaned", "digits/9")] and report.ok  # 10 is fresh
    assert registry.list_versions("digits") == []


def test_eight_concurrent_allocators_get_eight_versions(
    endpoint: str, prefix: str, atomic_conditional_puts: None
) -> None:
    uri = f"s3://{BUCKET}/{prefix}"
    # one client each, built here: creating boto3 clients is not thread-safe
    allocators = [open_registry(RegistryConfig(uri=uri, endpoint_url=endpoint)) for _ in range(8)]

    versions = run_threads(8, lambda n: allocators[n].allocate_version("digits"))

    assert sorted(versions, key=int) == [str(n) for n in range(1, 9)]  # type: ignore[arg-type]
    keys = _objects(endpoint, prefix)
    assert sorted(keys) == sorted(f"{prefix}/digits/{n}/{RESERVATION_NAME}" for n in range(1, 9))
    assert allocators[0].list_versions("digits") == []


def test_allocated_version_publishes_and_verifies_clean(
    registry: S3Registry, entries: dict[str, PublishEntry], endpoint: str, prefix: str
) -> None:
    version = registry.allocate_version("digits")

    registry.publish("digits", version, entries, LINEAGE)

    assert (version, registry.list_versions("digits")) == ("1", ["1"])
    assert registry.verify() == VerifyReport(1, 4, [])
    assert f"{prefix}/digits/1/{CLAIM_NAME}" in _objects(endpoint, prefix)
    assert registry.allocate_version("digits") == "2"


@pytest.mark.parametrize("other_files", [True, False], ids=["other-files", "same-files"])
def test_concurrent_publishes_of_one_version_have_one_winner(
    endpoint: str,
    prefix: str,
    entries: dict[str, PublishEntry],
    tmp_path: Path,
    atomic_conditional_puts: None,
    other_files: bool,
) -> None:
    uri = f"s3://{BUCKET}/{prefix}"
    publishers = [open_registry(RegistryConfig(uri=uri, endpoint_url=endpoint)) for _ in range(2)]
    theirs = {
        "pruned": make_entry(tmp_path / "theirs", "pruned", b"their pruned bytes"),
        "tflite_int8": make_entry(tmp_path / "theirs", "tflite_int8", b"their int8 bytes"),
    }
    candidates = [entries, theirs if other_files else entries]

    outcomes = run_threads(
        2, lambda n: publishers[n].publish("digits", "7", candidates[n], {"n": n})
    )

    errors = [o for o in outcomes if isinstance(o, RegistryError)]
    winners = [n for n, o in enumerate(outcomes) if not isinstance(o, Exception)]
    assert len(winners) == 1 and len(errors) == 1, outcomes
    assert re.search(r"claimed by another publish|immutable", str(errors[0]))
    assert publishers[0].read_manifest("digits", "7")["lineage"] == {"n": winners[0]}
    assert publishers[0].verify() == VerifyReport(1, 4, [])


def test_cli_verify_over_s3(
    registry: S3Registry,
    entries: dict[str, PublishEntry],
    endpoint: str,
    prefix: str,
    aws_env: dict[str, str],
    tmp_path: Path,
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | aws_env
    env["PYTHONPATH"] = str(REPO_ROOT)
    where = ["--uri", f"s3://{BUCKET}/{prefix}", "--endpoint-url", endpoint]

    def verify() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "flows.cli", "registry", "verify", *where]
        return processes.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    clean = verify()
    assert (clean.returncode, clean.stdout) == (
        0,
        f"OK: s3://{BUCKET}/{prefix}: 1 version(s), 4 file(s) checked; no problems\n",
    ), clean.stderr
    key = f"{prefix}/digits/v1/tflite_int8/model.onnx"
    _client(endpoint).put_object(Bucket=BUCKET, Key=key, Body=b"tampered")
    broken = verify()
    assert broken.returncode == 1, broken.stderr
    assert broken.stdout.startswith(f"FAILED: s3://{BUCKET}/{prefix}: 1 version(s), 4 file(s)")
    assert "  corrupt  digits/v1/tflite_int8/model.onnx: 8 bytes stored" in broken.stdout
    assert SECRET_KEY not in broken.stdout + broken.stderr


def test_decisions_are_kept_create_only_beside_the_versions_in_s3(
    registry: S3Registry, entries: dict[str, PublishEntry], endpoint: str, prefix: str
) -> None:
    registry.publish("digits", "1", entries, {})
    run_id = "7d3f1c2a-0000-4000-8000-000000000001"

    refused = registry.record_decision("digits", run_id, {"outcome": "refused", "reviewer": "eve"})
    approved = registry.record_decision(
        "digits", run_id, {"outcome": "approved", "reviewer": "ada"}
    )

    assert refused.startswith(f"s3://{BUCKET}/{prefix}/digits/decisions/") and refused != approved
    assert [d["outcome"] for d in registry.list_decisions("digits")] == ["refused", "approved"]
    assert registry.list_versions("digits") == ["1"]
    assert registry.verify().problems == []
