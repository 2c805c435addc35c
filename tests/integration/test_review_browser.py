"""A review decided in a real Chromium (Debian's, driven by Playwright) against the real stack.

What a reviewer sees and does in the Prefect UI a fresh browser gets: the `review needed` link
opens the run's page once logged in (and the login page before); the artifacts are readable (the
variants table's gate and reason columns inside a 1400 px window, no server file path on a plot);
a reviewer not on `review.approvers` is refused and finds the refusal in words on the form when
the run asks again; a reviewer who types somebody else's name is told why, in words, and the run
stays paused; the login that presses Resume is the approver, only the variant toggled on is
published, and the comment is shown as text, not rendered as HTML.

`make test` brings Chromium (`make browser`: Debian's package, never `playwright install`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.stack_harness import Stack, review_night, wait_for_review
from tests.processes import Processes

pytestmark = pytest.mark.slow  # a stack, a nightly through it and a browser: about 3 minutes

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = {"width": 1400, "height": 1000}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} missing: `make browser` installs Debian's chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], timeout=120_000
        )
        try:
            yield browser
        finally:
            browser.close()


def _review_link(log: Path, cli: Any) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"review needed: .* Open (\S+) and press Resume", log.read_text())
        if found:
            return found.group(1)
        assert cli.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError("no `review needed` line in the nightly's log")


class Reviewer:
    """One person's browser session on the stack's UI."""

    def __init__(self, browser: Any, stack: Stack, name: str, shots: Path) -> None:
        self.context = browser.new_context(viewport=WINDOW)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.ui = stack.api.removesuffix("/api")
        self.credential = stack.credential(name)
        self.name, self.shots = name, shots

    def log_in(self) -> None:
        self.page.goto(f"{self.ui}/v2/login", wait_until="networkidle")
        self.page.locator("input").first.fill(self.credential)
        self.page.get_by_role("button", name="Login").click()
        self.page.wait_for_url(lambda url: "/login" not in url)

    def shot(self, what: str) -> None:
        self.page.screenshot(path=self.shots / f"{self.name}-{what}.png", full_page=True)

    def open_resume(self, link: str) -> Any:
        self.page.goto(link, wait_until="networkidle")
        self.page.get_by_text("Paused").first.wait_for()
        self.page.get_by_role("button", name="Open menu").click()
        self.page.get_by_role("menuitem", name="Resume").click()
        dialog = self.page.get_by_role("dialog")
        dialog.wait_for()
        dialog.get_by_text("Publish", exact=False).first.wait_for()
        return dialog

    def toggle(self, dialog: Any, variant: str) -> None:
        label = dialog.get_by_text(f"Publish {variant}", exact=False).first
        field = label.locator("xpath=ancestor::*[.//button[@role='switch']][1]")
        field.get_by_role("switch").first.click()

    def fill(self, dialog: Any, title: str, text: str) -> None:
        label = dialog.get_by_text(title, exact=False).first
        box = label.locator("xpath=ancestor::*[.//textarea][1]").locator("textarea").first
        box.fill(text)

    def close(self) -> None:
        self.context.close()


def _state(api: httpx.Client, run_id: str) -> str:
    return str(api.get(f"/flow_runs/{run_id}").json()["state_type"])


def _artifacts(api: httpx.Client, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's artifacts by key, the newest of each (a refusal and an approval share a key)."""
    found = api.post(
        "/artifacts/filter",
        json={
            "artifacts": {"flow_run_id": {"any_": [run_id]}},
            "sort": "CREATED_DESC",
            "limit": 50,
            "offset": 0,
        },
    )
    assert found.status_code == 200, found.text
    newest: dict[str, dict[str, Any]] = {}
    for artifact in found.json():
        newest.setdefault(artifact.get("key") or "", artifact)
    return newest


def test_a_review_decided_in_chromium_by_the_login_that_pressed_resume(
    stack: Stack, chromium: Any, tmp_path: Path
) -> None:
    command, env, registry, cli_log = review_night(stack, tmp_path, approvers=["alice", "bob"])
    api = stack.client("alice")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with Processes() as started:
        cli = started.popen(command, env=env, log=cli_log)
        run = wait_for_review(api, cli)
        link = _review_link(cli_log, cli)
        assert link == f"{stack.api.removesuffix('/api')}/v2/runs/flow-run/{run['id']}"

        # before logging in, the link leads to the login page, not to the run
        stranger = Reviewer(chromium, stack, "carol", shots)
        stranger.page.goto(link, wait_until="networkidle")
        stranger.page.get_by_role("button", name="Login").wait_for()
        stranger.close()

        # carol reads the artifacts, then resumes; she is not on review.approvers
        carol = Reviewer(chromium, stack, "carol", shots)
        carol.log_in()
        artifacts = _artifacts(api, run["id"])
        table = next(a for k, a in artifacts.items() if k.endswith("-variants"))
        carol.page.goto(f"{carol.ui}/v2/artifacts/artifact/{table['id']}", wait_until="networkidle")
        for column in ("gate", "reason"):
            header = carol.page.get_by_role("columnheader", name=column, exact=True).first
            box = header.bounding_box()
            assert box is not None and box["x"] + box["width"] <= WINDOW["width"], (column, box)
        pareto = next(a for k, a in artifacts.items() if k.endswith("-pareto"))
        carol.page.goto(
            f"{carol.ui}/v2/artifacts/artifact/{pareto['id']}", wait_until="networkidle"
        )
        carol.page.locator("img").first.wait_for()
        carol.shot("pareto")
        assert "File: /" not in carol.page.inner_text("body")

        dialog = carol.open_resume(link)
        carol.toggle(dialog, "onnx_int8")
        dialog.get_by_role("button", name="Resume").click()
        first = run["state"]["state_details"]["run_input_keyset"]["schema"]
        run = wait_for_review(api, cli, after=first)
        dialog = carol.open_resume(link)  # the run asks again, the refusal on top of its form
        carol.shot("refused")
        said = dialog.inner_text()
        assert "Refused:" in said and "not on review.approvers" in said, said[:800]
        carol.close()

        # alice types bob's name: told why in words, the dialog stays, the run stays paused
        alice = Reviewer(chromium, stack, "alice", shots)
        alice.log_in()
        dialog = alice.open_resume(link)
        alice.toggle(dialog, "onnx_int8")
        alice.fill(dialog, "Reviewer", "bob")
        alice.fill(dialog, "Comment", "<img src=x onerror=alert(1)> looks fine")
        dialog.get_by_role("button", name="Resume").click()
        toast = alice.page.get_by_text("you are logged in as alice", exact=False).first
        toast.wait_for()
        alice.shot("impostor")
        assert dialog.is_visible() and _state(api, run["id"]) == "PAUSED"

        alice.fill(dialog, "Reviewer", "")  # blank: the login is the approver
        dialog.get_by_role("button", name="Resume").click()
        cli.wait(timeout=600)
        output = cli_log.read_text()
        assert cli.returncode == 0, output[-3000:]

        # the decision artifact shows the comment as text: no element made from it
        decision = next(a for k, a in _artifacts(api, run["id"]).items() if k.endswith("-decision"))
        alice.page.goto(
            f"{alice.ui}/v2/artifacts/artifact/{decision['id']}", wait_until="networkidle"
        )
        alice.page.get_by_text("looks fine", exact=False).first.wait_for()
        alice.shot("decision")
        assert alice.page.locator("img[src='x']").count() == 0
        assert "<img src=x onerror=alert(1)> looks fine" in alice.page.inner_text("body")
        alice.close()

    manifest = json.loads(next(registry.rglob("manifest.json")).read_text())
    assert sorted(manifest["variants"]) == ["onnx_int8"]  # the baseline was not toggled on
    approval = manifest["variants"]["onnx_int8"]["approval"]
    assert approval["approved_by"] == "alice" and approval["flow_run_url"] == link
    decisions = sorted(p for p in registry.rglob("*.json") if p.parent.name == "decisions")
    assert [
        (d["outcome"], d["reviewer"]) for d in (json.loads(p.read_text()) for p in decisions)
    ] == [("refused", "carol"), ("approved", "alice")]
