"""Faults in the middle of an S3 publish, and transient faults the S3 client must ride out.

Two kinds of fault:

* injected: `FaultyClient` is a test-only fault-injection wrapper around the registry's boto3
  client; S3 call number k raises (a crash, a connection error, a 500) instead of, or right
  after, reaching the server; or the moto server itself is stopped before call k and started
  again on the same port afterwards (moto keeps its objects in the process, so the bucket
  survives the restart). `run_fault_loop` (shared with the local tests) checks the invariant
  after every fault and then retries the publish.
* transient: `FlakyProxy` is a loopback HTTP server in front of moto that answers 503 (or
  drops the connection, or answers 403) to the first N requests, then forwards; it counts
  requests, showing what botocore's "standard" retry mode retries and what it does not.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from moto.server import ThreadedMotoServer

from tasks.config import RegistryConfig
from tasks.registry import (
    S3_MAX_ATTEMPTS,
    PublishEntry,
    RegistryError,
    S3Registry,
    VerifyReport,
    open_registry,
)
from tests.unit.test_registry_faults import (
    FaultPlan,
    InjectedFault,
    Tally,
    make_entries,
    report_tally,
    run_fault_loop,
)

BUCKET = "modelpress-faults"
ACCESS_KEY = "AKIAMODELPRESSFAULTS"
SECRET_KEY = "modelpress-fault-test-secret"
LINEAGE = {"git_commit": "abc123"}
PUBLISH_STEPS = 9  # head manifest, put claim, 6 files, put manifest


class RestartableMoto:
    """A moto S3 server on a fixed loopback port that a test can stop and start again."""

    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.running = True

    def stop(self) -> None:
        self.server.stop()
        self.running = False

    def start(self) -> None:
        if not self.running:
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()
            self.running = True


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials in the environment, and no shared AWS config files to interfere."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto() -> Iterator[RestartableMoto]:
    server = RestartableMoto()
    try:
        boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ).create_bucket(Bucket=BUCKET)
        yield server
    finally:
        if server.running:  # a test may end with it stopped
            server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"faults/{request.node.name.replace('[', '-').replace(']', '')}"


@pytest.fixture
def entries(tmp_path: Path) -> dict[str, PublishEntry]:
    return make_entries(tmp_path / "variants")


@pytest.fixture(scope="module")
def fault_tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Totals over this module's fault loops, reported after them; partial must be 0."""
    total = Tally()
    yield total
    report_tally(request, total)


# ── injected faults ─────────────────────────────────────────────────────────────────────────


class FaultyClient:
    """Fault-injection wrapper (tests only): the S3 calls a publish makes go through `plan.step`."""

    WRAPPED = frozenset({"put_object", "head_object", "get_object", "list_objects_v2"})

    def __init__(self, client: Any, plan: FaultPlan) -> None:
        self._client = client
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in self.WRAPPED:
            return attribute

        def call(**kwargs: Any) -> Any:
            return self._plan.step(f"{name} {kwargs.get('Key', '')}", lambda: attribute(**kwargs))

        return call


def _server_error(name: str) -> BaseException:
    return ClientError(
        {
            "Error": {"Code": "InternalError", "Message": "We encountered an internal error"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        },
        name.split()[0],
    )


FAULTS: dict[str, tuple[Callable[[str], BaseException], bool]] = {
    # kind: (the exception for the failing call, whether the call reached S3 first)
    "crash-before": (lambda name: InjectedFault(f"injected crash at: {name}"), False),
    "crash-after": (lambda name: InjectedFault(f"injected crash after: {name}"), True),
    "connection-before": (lambda name: EndpointConnectionError(endpoint_url="http://x"), False),
    "connection-after": (lambda name: ReadTimeoutError(endpoint_url="http://x"), True),
    "500-before": (_server_error, False),
    "500-after": (_server_error, True),
}


def _faulty_registry(moto: RestartableMoto, prefix: str, plan: FaultPlan) -> S3Registry:
    """The registry as users open it, its boto3 client inside the fault-injection wrapper."""
    registry = open_registry(RegistryConfig(uri=f"s3://{BUCKET}/{prefix}", endpoint_url=moto.url))
    assert isinstance(registry, S3Registry)
    registry._client = FaultyClient(registry._client, plan)
    return registry


def _faulty_registries(
    moto: RestartableMoto, prefix: str, plan: FaultPlan
) -> Callable[[int], S3Registry]:
    """One registry (prefix) per fault step, sharing the client and the plan."""
    first = _faulty_registry(moto, prefix, plan)

    def registry_for(step: int) -> S3Registry:
        return S3Registry(BUCKET, f"{prefix}/{step}", endpoint_url=moto.url, client=first._client)

    return registry_for


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=() if kind == "connection-after" else pytest.mark.slow)
        for kind in FAULTS
    ],
)
def test_a_fault_at_any_publish_step_leaves_a_whole_state(
    moto: RestartableMoto,
    prefix: str,
    entries: dict[str, PublishEntry],
    fault_tally: Tally,
    kind: str,
) -> None:
    fail, after = FAULTS[kind]
    plan = FaultPlan(fail, after=after)
    tally = run_fault_loop(_faulty_registries(moto, prefix, plan), plan, entries)

    fault_tally.add(tally)
    assert tally.faults == PUBLISH_STEPS and tally.partial == 0


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([4], id="mid-files"),
        pytest.param(list(range(PUBLISH_STEPS)), id="every-step", marks=pytest.mark.slow),
    ],
)
def test_the_server_going_down_at_any_publish_step_leaves_a_whole_state(
    moto: RestartableMoto,
    prefix: str,
    entries: dict[str, PublishEntry],
    fault_tally: Tally,
    steps: list[int],
) -> None:
    """The real thing: moto stops before call k, botocore retries and gives up, moto restarts."""
    plan = FaultPlan(lambda name: AssertionError("unused: the outage is real"))
    plan.before_fault = moto.stop
    registries = _faulty_registries(moto, prefix, plan)

    try:
        tally = run_fault_loop(registries, plan, entries, steps=steps, after_fault=moto.start)
    finally:
        moto.start()

    fault_tally.add(tally)
    assert tally.faults == len(steps) and tally.partial == 0
    for message in tally.messages:  # one line each (checked in the loop), naming the fix
        assert message.startswith(f"cannot reach the S3 endpoint {moto.url} for bucket")
        assert SECRET_KEY not in message and ACCESS_KEY not in message


# ── transient faults: retried with backoff, and only those ──────────────────────────────────


class FlakyProxy:
    """Loopback HTTP proxy to moto: the next `failures` requests get `status` (0: dropped)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.requests = 0  # every request received
        self.failures = 0
        self.status = 503
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_next(self, failures: int, status: int = 503) -> None:
        with self.lock:
            self.failures, self.status, self.requests = failures, status, 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take(self) -> int | None:
        """Count a request; the status to fail it with, or None to forward it."""
        with self.lock:
            self.requests += 1
            if self.failures <= 0:
                return None
            self.failures -= 1
            return self.status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" at once

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = proxy._take()
                if status == 0:  # drop the connection without a reply
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif status is not None:
                    self._reply(status, *_s3_error(status))
                else:
                    self._forward(body)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = do_any

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                try:
                    hop = {"connection", "expect", "keep-alive"}
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    self._reply(response.status, response.getheaders(), payload)
                finally:
                    upstream.close()

            def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
                self.send_response(status)
                skip = {"connection", "transfer-encoding", "server", "date", "content-length"}
                for name, value in headers:
                    if name.lower() not in skip:
                        self.send_header(name, value)
                length = dict((k.lower(), v) for k, v in headers).get("content-length")
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

        return Handler


def _s3_error(status: int) -> tuple[list[tuple[str, str]], bytes]:
    code = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}[status]
    body = f"<Error><Code>{code}</Code><Message>injected {status}</Message></Error>".encode()
    return [("Content-Type", "application/xml")], body


@pytest.fixture
def proxy(moto: RestartableMoto) -> Iterator[FlakyProxy]:
    flaky = FlakyProxy(moto.url)
    yield flaky
    flaky.close()


@pytest.fixture
def proxied(proxy: FlakyProxy, prefix: str) -> S3Registry:
    """The registry as users open it, its endpoint the flaky proxy."""
    registry = open_registry(RegistryConfig(uri=f"s3://{BUCKET}/{prefix}", endpoint_url=proxy.url))
    assert isinstance(registry, S3Registry)
    return registry


def test_publish_and_pull_ride_out_transient_errors(
    proxied: S3Registry, proxy: FlakyProxy, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    proxy.fail_next(S3_MAX_ATTEMPTS - 1, status=503)  # SlowDown: throttling
    proxied.publish("digits", "1", entries, LINEAGE)
    assert proxy.requests == PUBLISH_STEPS + S3_MAX_ATTEMPTS - 1

    proxy.fail_next(1, status=500)
    dest = proxied.pull("digits", "1", "pruned", tmp_path / "pulled")
    assert (dest / "model.onnx").read_bytes() == (
        entries["pruned"].directory / "model.onnx"
    ).read_bytes()

    proxy.fail_next(1, status=0)  # the connection dropped without a reply
    assert proxied.list_versions("digits") == ["1"]
    assert proxied.verify() == VerifyReport(1, 6, [])


def test_a_lasting_503_gives_up_after_the_bounded_attempts(
    proxied: S3Registry, proxy: FlakyProxy
) -> None:
    proxy.fail_next(100, status=503)

    with pytest.raises(RegistryError, match=r"failed: SlowDown: injected 503") as caught:
        proxied.list_versions("digits")

    assert proxy.requests == S3_MAX_ATTEMPTS
    assert "\n" not in str(caught.value) and SECRET_KEY not in str(caught.value)


def test_client_errors_are_not_retried(
    proxied: S3Registry, proxy: FlakyProxy, entries: dict[str, PublishEntry]
) -> None:
    proxy.fail_next(100, status=403)
    with pytest.raises(RegistryError, match="access denied to"):
        proxied.list_models()
    assert proxy.requests == 1  # one request: a 403 is final

    proxy.fail_next(0)
    with pytest.raises(RegistryError, match="digits/9 is not published"):
        proxied.read_manifest("digits", "9")
    assert proxy.requests == 2  # the GET answered 404 once, then one listing for the message

    proxied.publish("digits", "1", entries, LINEAGE)
    proxy.fail_next(0)
    proxied._create("digits/1/manifest.json", b"{}", "0" * 64)  # the conditional PUT: 412
    assert proxy.requests == 1
