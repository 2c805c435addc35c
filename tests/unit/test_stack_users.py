"""The stack's principals: one generated credential each, only bcrypt hashes kept, the Caddyfile
that checks them. (The whole stack with them: tests/integration/test_stack_people.py.)"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.stack_users import (
    GUARDED_PATH,
    add_user,
    authenticate,
    caddyfile,
    load_users,
    main,
    remove_user,
)
from tests.helpers import REPO_ROOT


def test_each_user_gets_a_private_credential_and_only_its_hash_is_kept(tmp_path: Path) -> None:
    path = add_user(tmp_path, "alice", "reviewer")
    credential = path.read_text().strip()
    name, password = credential.split(":", 1)
    assert name == "alice" and len(password) >= 43
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600
    assert password not in (tmp_path / "users.json").read_text()

    users = load_users(tmp_path)
    assert authenticate(users, credential) == users["alice"]
    assert authenticate(users, "alice:" + password[:-1]) is None
    assert authenticate(users, "mallory:" + password) is None
    assert authenticate(users, "alice") is None

    again = add_user(tmp_path, "alice", "reviewer").read_text().strip()  # a new password
    assert again != credential and authenticate(load_users(tmp_path), credential) is None
    add_user(tmp_path, "worker", "worker")
    remove_user(tmp_path, "alice")
    assert list(load_users(tmp_path)) == ["worker"] and not path.exists()


@pytest.mark.parametrize("name", ["Alice", "a b", "../x", "", "x" * 65, "1abc"])
def test_a_bad_name_or_role_is_one_line_and_writes_nothing(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["add", name, "--role", "reviewer", "--state", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: user name") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="--role"):
        add_user(tmp_path, "bob", "admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a user"):
        remove_user(tmp_path, "bob")


def test_the_caddyfile_checks_every_user_and_sends_the_review_routes_to_the_guard(
    tmp_path: Path,
) -> None:
    add_user(tmp_path, "alice", "reviewer")
    add_user(tmp_path, "worker", "worker")
    users = load_users(tmp_path)
    text = caddyfile(
        users,
        port=4200,
        upstream_port=4300,
        guard_port=4400,
        upstream_auth="modelpress-server:s3cret",
        proxy_secret="proxy-s3cret",
        access_log=tmp_path / "access.log",
    )
    for user in users.values():
        assert f"{user.name} {base64.b64encode(user.bcrypt_hash.encode()).decode()}" in text
    upstream = base64.b64encode(b"modelpress-server:s3cret").decode()
    assert f'header_up Authorization "Basic {upstream}"' in text
    assert "reverse_proxy @guarded 127.0.0.1:4400" in text and GUARDED_PATH in text
    assert "header_up X-Modelpress-Principal {http.auth.user.id}" in text
    for route in ("resume", "set_state", "input", "modelpress/guard"):
        path = f"/api/flow_runs/abc/{route}" if route != "modelpress/guard" else "/api/" + route
        assert re.match(GUARDED_PATH, path), path
    assert not re.match(GUARDED_PATH, "/api/flow_runs/abc/input/paused-review-schema")
    with pytest.raises(ValueError, match="no users"):
        caddyfile({}, port=1, upstream_port=2, guard_port=3, upstream_auth="a", proxy_secret="b",
                  access_log=tmp_path / "x")  # fmt: skip

    caddy = shutil.which("caddy") or str(REPO_ROOT / ".tools/caddy/usr/bin/caddy")
    if Path(caddy).exists():  # `make test` unpacks it; Caddy itself says the file is valid
        (tmp_path / "Caddyfile").write_text(text)
        checked = subprocess.run(
            [caddy, "validate", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr[-2000:]
    assert json.loads((tmp_path / "users.json").read_text())["worker"]["role"] == "worker"
