"""The stack's people and workers: one credential each, and the Caddyfile that checks them.

Each principal has a role: a `reviewer` may resume a paused review (and is recorded as its
approver when `review.approvers` names them), a `worker` (work pools, deployments, the operator's
scripts) may run flows but never resume or cancel a paused one. Passwords are generated here,
written once to `credentials/<name>` (mode 600, `name:password`, the shape Prefect's
`PREFECT_API_AUTH_STRING` takes) and kept in `users.json` only as bcrypt hashes, which Caddy's
`basicauth` checks on every HTTP request and the review guard checks on websockets.

    python -m tasks.stack_users add NAME --role reviewer|worker --state DIR
    python -m tasks.stack_users caddyfile --state DIR --port P --upstream-port U --guard-port G
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["reviewer", "worker"]
ROLES: tuple[Role, ...] = ("reviewer", "worker")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9._-]{0,63}")
# one check at cost 10 takes about 60 ms here (Python's bcrypt, measured 2026-12-07); Caddy
# checks a credential on HTTP requests, the guard on each websocket
BCRYPT_COST = 10
USERS_FILE = "users.json"
CREDENTIALS_DIR = "credentials"
# header names between Caddy and the guard; Caddy sets them, replacing whatever a client sent
PRINCIPAL_HEADER = "X-Modelpress-Principal"
PROXY_SECRET_HEADER = "X-Modelpress-Proxy"
# the run input the guard writes before a reviewer's resume goes through: the flow's evidence
ATTESTATION_PREFIX = "modelpress-approver-"
# the routes the guard sees (after Caddy's basicauth): the review's resume, state changes and
# run inputs of flow runs, the guard's own endpoint
GUARDED_PATH = r"^/api/(flow_runs/[^/]+/(resume|set_state|input)|modelpress/.*)$"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    bcrypt_hash: str


def load_users(state: Path) -> dict[str, Principal]:
    """Every principal of the stack at `state` (none before the first `add`)."""
    path = state / USERS_FILE
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {name: Principal(name, entry["role"], entry["bcrypt"]) for name, entry in raw.items()}


def add_user(state: Path, name: str, role: Role) -> Path:
    """A new password for `name` (created or replaced): the hash into users.json, the
    credential into credentials/<name>, mode 600 from its creation. Returns the credential's path."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"user name {name!r}: expected lowercase letters, digits, '.', '_' or '-', "
            f"starting with a letter, at most 64 characters"
        )
    if role not in ROLES:
        raise ValueError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    import bcrypt  # the full install's; an edge worker reading this module's names needs none

    password = secrets.token_urlsafe(32)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
    folder = state / CREDENTIALS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    credential = folder / name
    _write_private(credential, f"{name}:{password}\n")
    _save_users(state, {**load_users(state), name: Principal(name, role, hashed)})
    return credential


def remove_user(state: Path, name: str) -> None:
    users = load_users(state)
    if name not in users:
        raise ValueError(
            f"user {name!r} is not a user of this stack ({', '.join(users) or 'none'})"
        )
    _save_users(state, {n: p for n, p in users.items() if n != name})
    (state / CREDENTIALS_DIR / name).unlink(missing_ok=True)


def _save_users(state: Path, users: dict[str, Principal]) -> None:
    entries = {p.name: {"role": p.role, "bcrypt": p.bcrypt_hash} for p in users.values()}
    _write_private(state / USERS_FILE, json.dumps(entries, indent=2) + "\n")


def basic_auth(credential: str) -> str:
    """The Authorization header for a `name:password` (or any auth string): HTTP basic."""
    return "Basic " + base64.b64encode(credential.encode()).decode()


def authenticate(users: dict[str, Principal], credential: str) -> Principal | None:
    """The principal whose `name:password` this is, or None."""
    name, _, password = credential.partition(":")
    principal = users.get(name)
    if principal is None or not password:
        return None
    import bcrypt

    if bcrypt.checkpw(password.encode(), principal.bcrypt_hash.encode()):
        return principal
    return None


def caddyfile(
    users: dict[str, Principal],
    *,
    port: int,
    upstream_port: int,
    guard_port: int,
    upstream_auth: str,
    proxy_secret: str,
    access_log: Path,
) -> str:
    """The Caddyfile of the stack's front door on 127.0.0.1:`port`.

    The Prefect server (`upstream_port`) holds its own auth string, which only this file and
    the guard know: Caddy replaces each request's Authorization with it after checking the
    person's. The review routes go to the guard with the checked principal; websockets go to the
    guard (Prefect authenticates them by their first message, which Caddy cannot read).
    """
    if not users:
        raise ValueError("no users: add one first (infra/stack.sh user add NAME --role reviewer)")
    upstream = basic_auth(upstream_auth)
    accounts = "\n".join(
        f"\t\t\t\t{p.name} {base64.b64encode(p.bcrypt_hash.encode()).decode()}"
        for p in users.values()
    )
    return f"""{{
\tadmin off
\tauto_https off
}}

http://127.0.0.1:{port} {{
\tbind 127.0.0.1
\tlog {{
\t\toutput file {access_log}
\t\tformat json
\t}}
\t@ws {{
\t\theader Connection *Upgrade*
\t\theader Upgrade websocket
\t}}
\t@probe path /api/health /api/ready
\t@api path /api/*
\t@guarded path_regexp {GUARDED_PATH}
\troute @ws {{
\t\treverse_proxy 127.0.0.1:{guard_port} {{
\t\t\theader_up {PROXY_SECRET_HEADER} "{proxy_secret}"
\t\t\theader_up -{PRINCIPAL_HEADER}
\t\t}}
\t}}
\troute @probe {{
\t\treverse_proxy 127.0.0.1:{upstream_port} {{
\t\t\theader_up Authorization "{upstream}"
\t\t}}
\t}}
\troute @api {{
\t\tbasicauth {{
{accounts}
\t\t}}
\t\treverse_proxy @guarded 127.0.0.1:{guard_port} {{
\t\t\theader_up {PRINCIPAL_HEADER} {{http.auth.user.id}}
\t\t\theader_up {PROXY_SECRET_HEADER} "{proxy_secret}"
\t\t\theader_up -Authorization
\t\t}}
\t\treverse_proxy 127.0.0.1:{upstream_port} {{
\t\t\theader_up Authorization "{upstream}"
\t\t\theader_up -{PRINCIPAL_HEADER}
\t\t}}
\t}}
\t# a refused credential gets Prefect's own 401, without Caddy's WWW-Authenticate: the UI has
\t# its own login page, and a browser's login dialog would hold the page's requests behind a
\t# prompt (and its login would not reach the UI's)
\thandle_errors {{
\t\t@unauthorized expression {{err.status_code}} == 401
\t\thandle @unauthorized {{
\t\t\theader -WWW-Authenticate
\t\t\theader Content-Type application/json
\t\t\trespond `{{"exception_message":"Unauthorized"}}` 401
\t\t}}
\t}}
\t# the UI's files and settings: open, as on Prefect's own server (they hold no run data)
\treverse_proxy 127.0.0.1:{upstream_port}
}}
"""


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, replacing it whole (no moment of other modes)."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.stack_users")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create NAME, or give NAME a new password")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--state", type=Path, required=True)
    remove = commands.add_parser("remove", help="remove NAME: its credential stops working")
    remove.add_argument("name")
    remove.add_argument("--state", type=Path, required=True)
    listing = commands.add_parser("list", help="each user and role, no secrets")
    listing.add_argument("--state", type=Path, required=True)
    config = commands.add_parser("caddyfile", help="write the Caddyfile for the users")
    config.add_argument("--state", type=Path, required=True)
    for option in ("--port", "--upstream-port", "--guard-port"):
        config.add_argument(option, type=int, required=True)
    args = parser.parse_args(argv)
    state: Path = args.state
    try:
        if args.command == "add":
            path = add_user(state, args.name, args.role)
            print(f"  {args.name} ({args.role}): credential in {path} (mode 600, hand it over)")
        elif args.command == "remove":
            remove_user(state, args.name)
            print(f"  {args.name} removed")
        elif args.command == "list":
            for principal in load_users(state).values():
                print(f"  {principal.name}\t{principal.role}")
        else:
            text = caddyfile(
                load_users(state),
                port=args.port,
                upstream_port=args.upstream_port,
                guard_port=args.guard_port,
                upstream_auth=(state / "upstream-auth").read_text().strip(),
                proxy_secret=(state / "proxy-secret").read_text().strip(),
                access_log=state / "caddy-access.log",
            )
            _write_private(state / "Caddyfile", text)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
