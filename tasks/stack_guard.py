"""The review guard: the few requests of the stack where who sends them decides what they may do.

Caddy checks every person's and worker's password (`tasks/stack_users.py`) and sends the guard
only the review's routes, with the checked principal in a header; the guard answers them:

* `POST /api/flow_runs/<id>/resume`: refused to workers. A reviewer resumes as themselves: the
  form's `reviewer` is filled with their login (a different typed name is refused, so nobody
  approves as somebody else), and before the run resumes the guard writes the attestation
  `modelpress-approver-<pause key>` on the run, which the flow reads to record the approver.
* `POST /api/flow_runs/<id>/set_state`: a worker may not move a paused run on (resume, cancel).
* `POST /api/flow_runs/<id>/input`: nobody writes an attestation or a pause's answer directly.
* `GET /api/modelpress/guard`: who the caller is; the flow's evidence that a guard is in front.
* websockets: Prefect authenticates them by their first message, which Caddy cannot read; the
  guard checks that credential against the same hashes and relays the socket to the server.

Everything else goes from Caddy to the Prefect server directly. The server has its own auth
string, which only Caddy's config and the guard hold, so nothing reaches it past them.

    python -m tasks.stack_guard --state DIR --port G --upstream-port U
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tasks.stack_users import (
    ATTESTATION_PREFIX,
    PRINCIPAL_HEADER,
    PROXY_SECRET_HEADER,
    Principal,
    authenticate,
    basic_auth,
    load_users,
)

# Prefect keeps a pause's answer under `paused-<pause key>-response`; only its resume writes it
ANSWER_SUFFIX = "-response"
# what a worker may not make of a paused run: resume it (Running, or Scheduled to resume
# elsewhere) or cancel it
MOVES_ON = {"RUNNING", "SCHEDULED", "PENDING", "CANCELLING", "CANCELLED"}
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "authorization",
               PRINCIPAL_HEADER.lower(), PROXY_SECRET_HEADER.lower()}  # fmt: skip


@dataclass
class Guard:
    upstream: str  # http://127.0.0.1:<port> of the Prefect server
    upstream_auth: str
    proxy_secret: str
    state: Path
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _csrf: tuple[str, float] | None = None
    _users: tuple[float, dict[str, Principal]] | None = None
    _http: httpx.AsyncClient | None = None

    def users(self) -> dict[str, Principal]:
        """users.json, read again when it changes (a user added or removed while running)."""
        path = self.state / "users.json"
        mtime = path.stat().st_mtime if path.exists() else 0.0
        if self._users is None or self._users[0] != mtime:
            self._users = (mtime, load_users(self.state))
        return self._users[1]

    def via_caddy(self, headers: Headers) -> bool:
        """Whether a request came through Caddy (which shows the guard the proxy secret)."""
        return headers.get(PROXY_SECRET_HEADER) == self.proxy_secret

    def principal(self, request: Request) -> Principal | None:
        """The principal Caddy checked, when the request came through Caddy."""
        if not self.via_caddy(request.headers):
            return None
        return self.users().get(request.headers.get(PRINCIPAL_HEADER, ""))

    async def csrf_headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        """A CSRF token for the guard's own changes (the server wants one on every change)."""
        if self._csrf is None or self._csrf[1] < time.time() + 60:
            answer = await client.get("/api/csrf-token", params={"client": self.client_id})
            answer.raise_for_status()
            body = answer.json()
            expires = datetime.fromisoformat(body["expiration"]).timestamp()
            self._csrf = (body["token"], expires)
        return {"Prefect-Csrf-Token": self._csrf[0], "Prefect-Csrf-Client": self.client_id}

    def client(self) -> httpx.AsyncClient:
        """One client to the server for every request (its connections are kept)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.upstream,
                headers={"Authorization": basic_auth(self.upstream_auth)},
                timeout=60,
            )
        return self._http


def refused(status: int, message: str) -> JSONResponse:
    """Prefect's error shape, so the UI and the client show the reason."""
    return JSONResponse({"detail": message, "exception_message": message}, status_code=status)


async def forward(guard: Guard, request: Request, body: bytes) -> Response:
    """The request as it came (CSRF headers included), with the server's credential."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
    answer = await guard.client().request(
        request.method, request.url.path, params=request.query_params, content=body, headers=headers
    )
    kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
    kept.pop("content-encoding", None)  # httpx has decoded the body
    return Response(answer.content, status_code=answer.status_code, headers=kept)


Handler = Callable[[Request, Guard, Principal], Awaitable[Response]]


def authenticated(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The route, for requests that came through Caddy with a principal it checked."""

    async def endpoint(request: Request) -> Response:
        guard: Guard = request.app.state.guard
        principal = guard.principal(request)
        if principal is None:
            return refused(401, "Unauthorized")
        return await handler(request, guard, principal)

    return endpoint


async def json_body(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The request's body as sent (to forward it) and as JSON (to judge it)."""
    body = await request.body()
    return body, (json.loads(body) if body else {})


async def flow_run_state(guard: Guard, flow_run_id: str) -> dict[str, Any] | None:
    answer = await guard.client().get(f"/api/flow_runs/{flow_run_id}")
    if answer.status_code != 200:
        return None
    state: dict[str, Any] | None = answer.json().get("state")
    return state


@authenticated
async def resume(request: Request, guard: Guard, principal: Principal) -> Response:
    if principal.role != "reviewer":
        return refused(
            403, f"{principal.name} is a {principal.role} credential: it cannot resume a paused run"
        )
    body, payload = await json_body(request)
    run_input = payload.get("run_input")
    flow_run_id = request.path_params["flow_run_id"]
    state = await flow_run_state(guard, flow_run_id)
    if state is None or state.get("type") != "PAUSED":
        return await forward(guard, request, body)  # Prefect answers these itself
    details = state.get("state_details") or {}
    # a pause that waits for input: a resume without one is answered with the login too
    if run_input is None and not details.get("run_input_keyset"):
        return await forward(guard, request, body)
    run_input = dict(run_input or {})
    typed = str(run_input.get("reviewer") or "").strip()
    if typed and typed.casefold() != principal.name.casefold():
        return refused(
            403,
            f"you are logged in as {principal.name}: you approve as yourself, not as {typed!r} "
            f"(leave the reviewer field empty or type {principal.name})",
        )
    run_input["reviewer"] = principal.name
    key = ATTESTATION_PREFIX + str(details.get("pause_key"))
    attestation = {
        "principal": principal.name,
        "role": principal.role,
        "at": datetime.now(UTC).isoformat(),
        "via": "caddy basicauth (bcrypt) + modelpress review guard",
    }
    client = guard.client()
    written = await client.post(
        f"/api/flow_runs/{flow_run_id}/input",
        json={"key": key, "value": json.dumps(attestation)},
        headers=await guard.csrf_headers(client),
    )
    if written.status_code == 409:
        return refused(409, "another reviewer's decision on this review is being submitted")
    written.raise_for_status()
    filled = json.dumps({**payload, "run_input": run_input}).encode()
    accepted = False
    try:
        answer = await forward(guard, request, filled)
        accepted = (
            answer.status_code < 300 and json.loads(bytes(answer.body)).get("status") == "ACCEPT"
        )
    finally:
        if not accepted:  # the run did not resume: the attestation must not outlive it
            await client.delete(
                f"/api/flow_runs/{flow_run_id}/input/{key}",
                headers=await guard.csrf_headers(client),
            )
    return answer


@authenticated
async def set_state(request: Request, guard: Guard, principal: Principal) -> Response:
    body, payload = await json_body(request)
    wanted = str((payload.get("state") or {}).get("type", "")).upper()
    # a run's own moves (Completed, Failed, ...) are never refused: the server is asked for the
    # run's state only for the moves a worker may not make of a paused run
    if principal.role == "worker" and wanted in MOVES_ON:
        state = await flow_run_state(guard, request.path_params["flow_run_id"])
        if state is not None and state.get("type") == "PAUSED":
            return refused(
                403,
                f"{principal.name} is a worker credential: it cannot resume or cancel a paused "
                f"run (a reviewer decides it)",
            )
    return await forward(guard, request, body)


@authenticated
async def run_input(request: Request, guard: Guard, principal: Principal) -> Response:
    body, payload = await json_body(request)
    key = str(payload.get("key", ""))
    if key.startswith(ATTESTATION_PREFIX) or key.endswith(ANSWER_SUFFIX):
        return refused(
            403,
            f"run input {key!r}: a review's answer is written by resuming the run, not directly",
        )
    return await forward(guard, request, body)


@authenticated
async def whoami(request: Request, guard: Guard, principal: Principal) -> Response:
    return JSONResponse(
        {
            "guard": "modelpress-review-guard",
            "attestation_prefix": ATTESTATION_PREFIX,
            "principal": principal.name,
            "role": principal.role,
        }
    )


async def relay(websocket: WebSocket) -> None:
    """A websocket authenticated by its first message (Prefect's protocol), relayed to the
    server with the server's credential in that message."""
    import websockets

    guard: Guard = websocket.app.state.guard
    offered = [
        p.strip()
        for header in websocket.headers.getlist("sec-websocket-protocol")
        for p in header.split(",")
    ]
    if not guard.via_caddy(websocket.headers) or "prefect" not in offered:
        await websocket.close(1008)
        return
    await websocket.accept(subprotocol="prefect")
    try:
        first = await websocket.receive_json()
    except (WebSocketDisconnect, ValueError):
        return
    token = first.get("token") if isinstance(first, dict) and first.get("type") == "auth" else None
    principal = await asyncio.to_thread(authenticate, guard.users(), str(token)) if token else None
    if principal is None:
        await websocket.close(1008, reason="Invalid token")
        return
    url = guard.upstream.replace("http", "ws", 1) + websocket.url.path
    if websocket.url.query:
        url += "?" + websocket.url.query
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol("prefect")]) as up:
        await up.send(json.dumps({"type": "auth", "token": guard.upstream_auth}))
        await websocket.send_text(str(await up.recv()))
        await _pump_both_ways(websocket, up)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close()  # the server ended it; a client that left is already closed


async def _pump_both_ways(websocket: WebSocket, up: Any) -> None:
    """Relay messages until either side closes; the other side's pump is then stopped."""
    import websockets

    async def downstream() -> None:
        async for message in up:
            await websocket.send_text(message if isinstance(message, str) else message.decode())

    async def upstream() -> None:
        while True:
            await up.send(await websocket.receive_text())

    pumps = [asyncio.create_task(downstream()), asyncio.create_task(upstream())]
    await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    for pump in pumps:
        pump.cancel()
    # a side closing mid-message (or a client's broken frame) ends the relay, nothing else
    ended = (WebSocketDisconnect, websockets.ConnectionClosed, RuntimeError, asyncio.CancelledError)
    for outcome in await asyncio.gather(*pumps, return_exceptions=True):
        if outcome is not None and not isinstance(outcome, ended):
            raise outcome


def create_app(guard: Guard) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if guard._http is not None:  # the shared client's connections, at shutdown
            await guard._http.aclose()

    app = Starlette(
        lifespan=lifespan,
        routes=[
            Route("/api/flow_runs/{flow_run_id}/resume", resume, methods=["POST"]),
            Route("/api/flow_runs/{flow_run_id}/set_state", set_state, methods=["POST"]),
            Route("/api/flow_runs/{flow_run_id}/input", run_input, methods=["POST"]),
            Route("/api/modelpress/guard", whoami, methods=["GET"]),
            WebSocketRoute("/{path:path}", relay),
        ],
    )
    app.state.guard = guard
    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m tasks.stack_guard")
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args(argv)
    state: Path = args.state
    guard = Guard(
        upstream=f"http://127.0.0.1:{args.upstream_port}",
        upstream_auth=(state / "upstream-auth").read_text().strip(),
        proxy_secret=(state / "proxy-secret").read_text().strip(),
        state=state,
    )
    uvicorn.run(create_app(guard), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
