"""infra/bucket-policy.json against the requests ModelPress really sends.

moto does not enforce bucket policies, so the policy is evaluated here by a small evaluator that
covers exactly the policy language the file uses (Allow/Deny, Action, Resource wildcards, and the
Null / StringLike / Bool conditions), with AWS's rule: an explicit Deny wins, else an Allow is
needed. The requests are recorded from the registry's own boto3 client publishing to, verifying and
pulling from a real S3 endpoint on loopback, so a change in what the registry sends (a write without
If-None-Match, a delete) fails here before it fails against a real bucket.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tasks.config import RegistryConfig
from tasks.registry import S3Registry, open_registry
from tests.unit.test_registry import make_entry

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_BUCKET = "modelpress-bucket"
ACCOUNT = "111122223333"
RUNNER = f"arn:aws:iam::{ACCOUNT}:role/modelpress-runner"
PUBLISHER = f"arn:aws:iam::{ACCOUNT}:role/modelpress-publisher"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/admin"
# boto3 operation → the IAM action S3 authorises it as
ACTIONS = {
    "PutObject": "s3:PutObject",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "CopyObject": "s3:PutObject",
}


@dataclass(frozen=True)
class Request:
    operation: str
    key: str | None  # None for bucket-level requests
    prefix: str | None = None
    if_none_match: str | None = None

    @property
    def action(self) -> str:
        return ACTIONS[self.operation]

    @property
    def resource(self) -> str:
        if self.key is None:
            return f"arn:aws:s3:::{POLICY_BUCKET}"
        return f"arn:aws:s3:::{POLICY_BUCKET}/{self.key}"


def _policy() -> dict[str, Any]:
    return json.loads((REPO_ROOT / "infra" / "bucket-policy.json").read_text())


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _principal_matches(statement: dict[str, Any], principal: str) -> bool:
    named = statement["Principal"]
    return named == "*" or principal in _listify(named["AWS"])


def _conditions_hold(statement: dict[str, Any], request: Request) -> bool:
    context = {
        "s3:if-none-match": request.if_none_match,
        "s3:prefix": request.prefix,
        "aws:SecureTransport": "true",  # production S3 is HTTPS; the loopback endpoint is not
    }
    for operator, checks in statement.get("Condition", {}).items():
        for key, expected in checks.items():
            value = context[key]  # a key this evaluator does not know is a KeyError, not a pass
            if operator == "Null":
                if (value is None) != (expected == "true"):
                    return False
            elif operator == "StringLike":
                if value is None or not any(fnmatch.fnmatchcase(value, p) for p in expected):
                    return False
            elif operator == "Bool":
                if value != expected:
                    return False
            else:
                raise AssertionError(f"condition operator {operator} not understood by the test")
    return True


def _applies(statement: dict[str, Any], principal: str, request: Request) -> bool:
    actions = _listify(statement["Action"])
    resources = _listify(statement["Resource"])
    return (
        _principal_matches(statement, principal)
        and any(fnmatch.fnmatchcase(request.action, a) for a in actions)
        and any(fnmatch.fnmatchcase(request.resource, r) for r in resources)
        and _conditions_hold(statement, request)
    )


def allowed(principal: str, request: Request) -> bool:
    statements = _policy()["Statement"]
    if any(s["Effect"] == "Deny" and _applies(s, principal, request) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and _applies(s, principal, request) for s in statements)


# ---- the evaluator can say no --------------------------------------------------------------------


def test_policy_answers_the_questions_it_exists_for() -> None:
    manifest = "registry/digits/3/manifest.json"
    assert allowed(PUBLISHER, Request("PutObject", manifest, if_none_match="*"))
    assert not allowed(PUBLISHER, Request("PutObject", manifest))  # an overwrite
    assert not allowed(ADMIN, Request("PutObject", manifest))  # nobody, not even an admin
    assert not allowed(RUNNER, Request("PutObject", manifest, if_none_match="*"))
    for who in (RUNNER, PUBLISHER, ADMIN):
        assert not allowed(who, Request("DeleteObject", manifest))
    assert allowed(RUNNER, Request("GetObject", manifest))
    assert allowed(RUNNER, Request("PutObject", "store/run-1/result.json"))
    assert not allowed(ADMIN, Request("GetObject", manifest))  # not granted: no access at all
    assert not allowed(RUNNER, Request("ListObjectsV2", None, prefix="other/"))
    assert allowed(RUNNER, Request("ListObjectsV2", None, prefix="registry/digits/"))


# ---- what the registry really sends --------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPOLICYTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "policy-test-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


def _recording(registry: S3Registry) -> list[Request]:
    """Record every S3 call the registry's client makes, with the parameters S3 authorises on."""
    seen: list[Request] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append(
            Request(
                operation=model.name,
                key=params.get("Key"),
                prefix=params.get("Prefix"),
                if_none_match=params.get("IfNoneMatch"),
            )
        )

    registry._client.meta.events.register("before-parameter-build.s3", record)
    return seen


def test_every_request_of_a_publish_is_allowed_for_the_publisher_only(
    endpoint: str, tmp_path: Path
) -> None:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=POLICY_BUCKET
    )
    cfg = RegistryConfig(uri=f"s3://{POLICY_BUCKET}/registry", endpoint_url=endpoint)
    publisher = open_registry(cfg)
    assert isinstance(publisher, S3Registry)
    sent = _recording(publisher)
    entries = {"pruned": make_entry(tmp_path / "v", "pruned", b"model-bytes" * 64)}

    version = publisher.allocate_version("digits")
    publisher.publish("digits", version, entries, {"git_commit": "abc"})
    publisher.publish("digits", version, entries, {"git_commit": "abc"})  # idempotent retry

    writes = [r for r in sent if r.action == "s3:PutObject"]
    assert len(writes) >= 4  # reservation, claim, two files, manifest
    assert all(r.if_none_match == "*" for r in writes), writes
    assert not [r for r in sent if r.action == "s3:DeleteObject"]
    refused = [r for r in sent if not allowed(PUBLISHER, r)]
    assert refused == []
    # the runner role could not have published any of it
    assert not any(allowed(RUNNER, r) for r in writes)

    # a runner (or device) verifying and pulling needs only reads, and is allowed all of them
    runner = open_registry(cfg)
    assert isinstance(runner, S3Registry)
    reads = _recording(runner)
    assert runner.verify().problems == []
    runner.pull("digits", version, "pruned", tmp_path / "pulled")
    assert reads and {r.action for r in reads} <= {"s3:GetObject", "s3:ListBucket"}, reads
    assert [r for r in reads if not allowed(RUNNER, r)] == []
