"""Prefect API calls ride out throttling, 5xx and dropped connections, and never retry 4xx.

A loopback `FlakyProxy` sits between a Prefect client and the session's real Prefect server: it
forwards every request (method, path, headers, body) and the server's response, except that a
test can make it answer the first N requests for one path with a 503/500 (or reset the
connection, or stop listening for a moment), or answer 404/422. It counts requests per path and
records when each arrived, so a test sees exactly how many attempts the client made and how long
it waited between them.

The client runs in a subprocess (Prefect reads its settings once, on import), called the way
flows/benchmark.py calls it: `get_client(sync_client=True)`. Prefect 3.8.8's client retries
429/502/503/408 plus PREFECT_CLIENT_RETRY_EXTRA_CODES, and ReadError / RemoteProtocolError /
ConnectError (the last only after one successful connection), at most PREFECT_CLIENT_MAX_RETRIES
times, sleeping 2**attempt seconds (or the response's Retry-After) times jitter.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests import processes

# ~25 s of calls (the client's own backoff is 2**n s, no setting shortens it) + server start
pytestmark = pytest.mark.slow

MAX_RETRIES = 4
# Prefect has no setting for the backoff base (it is 2**attempt s); jitter off makes it exact.
CLIENT_SETTINGS = {
    "PREFECT_CLIENT_MAX_RETRIES": str(MAX_RETRIES),
    "PREFECT_CLIENT_RETRY_JITTER_FACTOR": "0",
}
READ_RUNS = ("POST", r"/api/flow_runs/filter")  # what read_flow_runs calls
SET_STATE = ("POST", r"/api/flow_runs/[0-9a-f-]{36}/set_state")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Fault:
    """What to do instead of forwarding a request that matches `method` and `path`."""

    method: str
    path: str  # a regex the whole URL path must match
    status: int = 503  # the answer for mode "status"
    times: int | None = None  # how many matching requests to fault; None: all of them
    mode: str = "status"  # "status", "reset" (TCP RST, no reply), "outage" (see FlakyProxy)
    retry_after: str | None = None
    outage_s: float = 0.5

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.fullmatch(self.path, path) is not None


class FlakyProxy:
    """Loopback HTTP proxy to the Prefect server that fails chosen requests on purpose.

    Mode "outage": the matching request is forwarded and answered, but first the proxy stops
    listening (later connections are refused) and starts again on the same port `outage_s` later.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.log: list[tuple[float, str, str, str]] = []  # (monotonic time, method, path, outcome)
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.restart: threading.Timer | None = None
        self._listen()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _listen(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.server = server

    def _stop_listening(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def close(self) -> None:
        if self.restart is not None:
            self.restart.cancel()
        with self.lock:
            self._stop_listening()

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def inject(self, method: str, path: str, **kwargs: Any) -> None:
        with self.lock:
            self.faults.append(Fault(method, path, **kwargs))

    def hits(self, method: str, path: str) -> list[float]:
        """Arrival times of the requests seen for `method` and the `path` regex."""
        with self.lock:
            return [t for t, m, p, _ in self.log if m == method and re.fullmatch(path, p)]

    def count(self, method: str, path: str) -> int:
        return len(self.hits(method, path))

    def counts(self) -> dict[str, int]:
        """Requests per "METHOD path" (for failure messages and the report)."""
        with self.lock:
            tally: dict[str, int] = {}
            for _, method, path, _ in self.log:
                tally[f"{method} {path}"] = tally.get(f"{method} {path}", 0) + 1
            return tally

    def _take(self, method: str, path: str) -> Fault | None:
        """Log a request; the fault to apply to it, or None to forward it."""
        with self.lock:
            fault = None
            for candidate in self.faults:
                if candidate.matches(method, path) and candidate.times != 0:
                    if candidate.times is not None:
                        candidate.times -= 1
                    fault = candidate
                    break
            outcome = "forwarded" if fault is None else fault.mode
            if fault is not None and fault.mode == "status":
                outcome = f"status {fault.status}"
            self.log.append((time.monotonic(), method, path, outcome))
            if fault is not None and fault.mode == "outage":
                self._stop_listening()  # before the reply: the client's next connect is refused
                self.restart = threading.Timer(fault.outage_s, self._restart)
                self.restart.daemon = True
                self.restart.start()
            return fault

    def _restart(self) -> None:
        with self.lock:
            if self.server is None:
                self._listen()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real server
            timeout = 30  # a stuck client cannot hold a handler thread forever

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_any(self) -> None:
                body = self._read_body()
                path = urlsplit(self.path).path
                fault = proxy._take(self.command, path)
                if fault is None or fault.mode == "outage":
                    if fault is not None:
                        self.close_connection = True
                    self._forward(body)
                elif fault.mode == "reset":  # close with SO_LINGER 0: the client reads an RST
                    self.close_connection = True
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                else:
                    payload = json.dumps({"detail": f"injected {fault.status}"}).encode()
                    headers = [("Content-Type", "application/json")]
                    if fault.retry_after is not None:
                        headers.append(("Retry-After", fault.retry_after))
                    self._reply(fault.status, headers, payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_any

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                for _ in range(10_000):
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                for _ in range(100):  # trailers, up to the blank line
                    if self.rfile.readline() in (b"\r\n", b"\n", b""):
                        break
                return b"".join(chunks)

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    self._reply(response.status, response.getheaders(), response.read())
                finally:
                    upstream.close()

            def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
                self.send_response(status)
                skip = HOP_BY_HOP | {"server", "date"}
                for name, value in headers:
                    if name.lower() not in skip:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

        return Handler


# Runs in a fresh interpreter; prints one line "RESULT <json>" (and the client's retry log lines).
CLIENT_SCRIPT = r"""
import json, logging, sys, time, uuid

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort

retry_log = []


class Collect(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        if "attempt" in message:
            line = message.splitlines()[0]
            if record.exc_info:
                line += f" [{record.exc_info[0].__name__}]"
            retry_log.append(line)


def watch_client_log():
    client_logger = logging.getLogger("prefect.client")
    client_logger.setLevel(logging.DEBUG)
    if not any(isinstance(h, Collect) for h in client_logger.handlers):
        client_logger.addHandler(Collect())


def outcome(call):
    watch_client_log()
    started = time.monotonic()
    try:
        value = call()
        result = {"ok": True, "value": value}
    except Exception as exc:
        http_exc = getattr(exc, "http_exc", exc)  # ObjectNotFound wraps the HTTP error
        response = getattr(http_exc, "response", None)
        result = {
            "ok": False,
            "error": type(exc).__name__,
            "status": getattr(response, "status_code", None),
        }
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def read_runs(client, sort=FlowRunSort.START_TIME_DESC):
    return len(client.read_flow_runs(limit=1, sort=sort))


@flow(name="mp-retry-probe", persist_result=False)
def probe() -> int:
    return 1


def main(scenario):
    if scenario == "read":
        with get_client(sync_client=True) as client:
            return {"read": outcome(lambda: read_runs(client))}
    if scenario == "client_errors":
        with get_client(sync_client=True) as client:
            return {
                "missing_run": outcome(lambda: str(client.read_flow_run(uuid.uuid4()))),
                "negative_limit": outcome(lambda: len(client.read_flow_runs(limit=-1))),
                "work_pools": outcome(lambda: len(client.read_work_pools())),
                "deployments": outcome(lambda: len(client.read_deployments())),
            }
    if scenario == "reconnect":
        with get_client(sync_client=True) as client:
            return {
                "first": outcome(lambda: read_runs(client)),
                "second": outcome(lambda: read_runs(client)),
                "third": outcome(lambda: read_runs(client)),
            }
    if scenario == "flow":
        def run():
            state = probe(return_state=True)
            return {
                "state": state.type.value,
                "result": state.result(raise_on_failure=False),
                "flow_run_id": str(state.state_details.flow_run_id),
            }
        return {"flow": outcome(run)}
    raise SystemExit(f"unknown scenario {scenario}")


result = main(sys.argv[1])
result["retry_log"] = retry_log
print("RESULT " + json.dumps(result, default=str), flush=True)
"""


@pytest.fixture(scope="module")
def proxy_server(prefect_server: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(prefect_server)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def proxy(proxy_server: FlakyProxy) -> FlakyProxy:
    proxy_server.reset()
    return proxy_server


def run_client(proxy: FlakyProxy, scenario: str, tmp_path: Path, **settings: str) -> dict[str, Any]:
    """Run CLIENT_SCRIPT's `scenario` against the proxy; its RESULT line, parsed."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    env = dict(os.environ, PREFECT_API_URL=proxy.api_url, **CLIENT_SETTINGS, **settings)
    if "PREFECT_CLIENT_RETRY_EXTRA_CODES" not in settings:
        env.pop("PREFECT_CLIENT_RETRY_EXTRA_CODES", None)
    done = processes.run(
        [sys.executable, str(script), scenario],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (
        f"client exited {done.returncode}\nstdout:\n{done.stdout[-3000:]}\n"
        f"stderr:\n{done.stderr[-3000:]}\nproxy saw: {proxy.counts()}"
    )
    return json.loads(lines[-1].removeprefix("RESULT "))


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in pairwise(times)]


def test_transient_503s_are_retried_with_exponential_backoff(
    proxy: FlakyProxy, tmp_path: Path
) -> None:
    proxy.inject(*READ_RUNS, status=503, times=2)  # no Retry-After: the client's own backoff
    result = run_client(proxy, "read", tmp_path)

    assert result["read"]["ok"], result
    hits = proxy.hits(*READ_RUNS)
    assert len(hits) == 3, proxy.counts()  # 2 x 503, then the forwarded one
    first, second = gaps(hits)
    assert 1.9 <= first < 3.5, gaps(hits)  # 2**1 s
    assert 3.9 <= second < 5.5, gaps(hits)  # 2**2 s
    assert [line.split(". ")[1] for line in result["retry_log"]] == [
        "Another attempt will be made in 2s",
        "Another attempt will be made in 4s",
    ], result["retry_log"]


def test_permanent_503_gives_up_after_max_retries(proxy: FlakyProxy, tmp_path: Path) -> None:
    # Retry-After (which the client prefers to its own 2**n s) keeps the 4 waits short
    proxy.inject(*READ_RUNS, status=503, retry_after="0.2")
    result = run_client(proxy, "read", tmp_path)

    assert result["read"]["ok"] is False, result
    assert result["read"]["status"] == 503, result
    hits = proxy.hits(*READ_RUNS)
    assert len(hits) == 1 + MAX_RETRIES, proxy.counts()
    assert all(gap >= 0.19 for gap in gaps(hits)), gaps(hits)
    # 3.8.8 logs (and waits) once more after the last attempt, before it returns the 503
    assert len(result["retry_log"]) == 1 + MAX_RETRIES, result["retry_log"]
    assert "attempt 1/5." in result["retry_log"][0] and "attempt 5/5." in result["retry_log"][-1]


def test_client_errors_are_not_retried(proxy: FlakyProxy, tmp_path: Path) -> None:
    # the real server's own 4xx: an unknown flow run (404), read_flow_runs with a negative limit
    # (422; a missing sort was one until fastapi was pinned to 0.150, where a null body field takes
    # its default) and injected ones on two other paths, in case a proxy or gateway answers them
    proxy.inject("POST", r"/api/work_pools/filter", status=404)
    proxy.inject("POST", r"/api/deployments/filter", status=422)
    result = run_client(proxy, "client_errors", tmp_path)

    expected = {
        "missing_run": ("ObjectNotFound", 404, "GET", r"/api/flow_runs/[0-9a-f-]{36}"),
        "negative_limit": ("PrefectHTTPStatusError", 422, *READ_RUNS),
        "work_pools": ("PrefectHTTPStatusError", 404, "POST", r"/api/work_pools/filter"),
        "deployments": ("PrefectHTTPStatusError", 422, "POST", r"/api/deployments/filter"),
    }
    for call, (error, status, method, path) in expected.items():
        assert not result[call]["ok"], (call, result)
        assert (result[call]["error"], result[call]["status"]) == (error, status), (call, result)
        assert proxy.count(method, path) == 1, (call, proxy.counts())
    assert result["retry_log"] == []


@pytest.mark.parametrize("extra_codes", ["500,504", None])
def test_5xx_retried_only_when_listed_in_extra_codes(
    proxy: FlakyProxy, tmp_path: Path, extra_codes: str | None
) -> None:
    # infra/stack.sh sets PREFECT_CLIENT_RETRY_EXTRA_CODES=500,504; by default a 500 is final
    proxy.inject(*READ_RUNS, status=500, times=2, retry_after="0.1")
    settings = {"PREFECT_CLIENT_RETRY_EXTRA_CODES": extra_codes} if extra_codes else {}
    result = run_client(proxy, "read", tmp_path, **settings)

    if extra_codes:
        assert result["read"]["ok"], result
        assert proxy.count(*READ_RUNS) == 3, proxy.counts()
    else:
        assert (result["read"]["ok"], result["read"]["status"]) == (False, 500), result
        assert proxy.count(*READ_RUNS) == 1, proxy.counts()


def test_reset_connection_is_retried(proxy: FlakyProxy, tmp_path: Path) -> None:
    proxy.inject(*READ_RUNS, mode="reset", times=1)  # httpx.ReadError (connection reset)
    result = run_client(proxy, "read", tmp_path)

    assert result["read"]["ok"], result
    hits = proxy.hits(*READ_RUNS)
    assert len(hits) == 2, proxy.counts()
    assert 1.9 <= gaps(hits)[0] < 3.5, gaps(hits)  # 2**1 s
    assert len(result["retry_log"]) == 1 and "[ReadError]" in result["retry_log"][0], result


def test_refused_connections_after_first_success_are_retried(
    proxy: FlakyProxy, tmp_path: Path
) -> None:
    # Two layers retry a refused connect: Prefect sets the httpcore pool's connect retries to 3
    # (waits 0, 0.5, 1 s), then its own loop retries the httpx.ConnectError (only once the
    # client has connected before) after 2**1 s. After answering read 1 the proxy stops
    # listening for 0.5 s (the pool rides it out); after read 2, for 2.5 s (the pool gives up
    # after ~1.5 s, the client waits 2 s and connects).
    proxy.inject(*READ_RUNS, mode="outage", times=1, outage_s=0.5)
    proxy.inject(*READ_RUNS, mode="outage", times=1, outage_s=2.5)
    result = run_client(proxy, "reconnect", tmp_path)

    assert all(result[call]["ok"] for call in ("first", "second", "third")), result
    assert proxy.count(*READ_RUNS) == 3, proxy.counts()  # refused connects never reach it
    assert 0.4 <= result["second"]["seconds"] < 1.5, result
    assert 2.5 <= result["third"]["seconds"] < 6, result
    assert len(result["retry_log"]) == 1 and "[ConnectError]" in result["retry_log"][0], result


def test_flow_completes_through_503s_on_state_changes(
    proxy: FlakyProxy, tmp_path: Path, prefect_server: str
) -> None:
    proxy.inject(*SET_STATE, status=503, times=2, retry_after="0.2")
    result = run_client(proxy, "flow", tmp_path)

    flow = result["flow"]
    assert flow["ok"], result
    assert (flow["value"]["state"], flow["value"]["result"]) == ("COMPLETED", 1), result
    set_states = proxy.count(*SET_STATE)
    assert set_states >= 2 + 2, proxy.counts()  # 2 x 503, then at least Running and Completed
    assert len(result["retry_log"]) == 2, result["retry_log"]
    # the server (asked directly, not through the proxy) agrees
    run_url = f"{prefect_server}/flow_runs/{flow['value']['flow_run_id']}"
    with urllib.request.urlopen(run_url, timeout=10) as response:
        assert json.load(response)["state"]["type"] == "COMPLETED"
