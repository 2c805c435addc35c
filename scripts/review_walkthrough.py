"""A reviewer's walk through a waiting review, in a real Chromium against the running stack.

Logs in to the Prefect UI with a person's credential file, opens the run's page from the link
the nightly logged (`review needed: ... Open <link>`), screenshots the run and its artifacts,
opens the ⋮ menu's Resume dialog, toggles the variants named, optionally types a reviewer name
(to show what an impostor gets), presses Resume and reports what the page then says.

    python scripts/review_walkthrough.py --credential .modelpress/stack/credentials/alice \\
        --run-url http://127.0.0.1:4200/v2/runs/flow-run/<id> --approve onnx_int8 --out docs

Needs Playwright (`pip install playwright`) and a Chromium (Debian: `apt-get install chromium`;
never `playwright install`). The suite decides a review the same way in
tests/integration/test_review_browser.py; this script is for a person watching, and keeps the
screenshots in docs/ current.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"


async def walk(args: argparse.Namespace) -> list[str]:
    from playwright.async_api import async_playwright

    credential = Path(args.credential).read_text().strip()
    ui = args.run_url.split("/v2/")[0].split("/runs/")[0]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    said: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(f"{ui}/v2/login", wait_until="networkidle")
        await page.locator("input").first.fill(credential)
        await page.get_by_role("button", name="Login").click()
        await page.wait_for_timeout(2000)
        await page.goto(args.run_url, wait_until="networkidle")
        await page.wait_for_timeout(2000)
        await page.screenshot(path=out / f"{args.prefix}run.png")
        await page.get_by_role("tab", name="Artifacts").click()
        await page.wait_for_timeout(2000)
        await page.screenshot(path=out / f"{args.prefix}artifacts.png", full_page=True)
        await page.get_by_role("button", name="Open menu").click()
        await page.get_by_role("menuitem", name="Resume").click()
        dialog = page.get_by_role("dialog")
        await dialog.wait_for()
        await page.wait_for_timeout(1000)
        await page.screenshot(path=out / f"{args.prefix}resume-dialog.png", full_page=True)
        for name in args.approve:
            label = dialog.get_by_text(f"Publish {name}", exact=False).first
            switch = label.locator("xpath=ancestor::*[.//button[@role='switch']][1]")
            await switch.get_by_role("switch").first.click()
        if args.reviewer:
            reviewer = dialog.get_by_text("Reviewer", exact=False).first
            box = reviewer.locator("xpath=ancestor::*[.//textarea][1]").locator("textarea").first
            await box.fill(args.reviewer)
        await page.screenshot(path=out / f"{args.prefix}resume-filled.png", full_page=True)
        await dialog.get_by_role("button", name="Resume").click()
        await page.wait_for_timeout(2500)
        await page.screenshot(path=out / f"{args.prefix}after-resume.png")
        toasts: Any = page.locator("[data-sonner-toast], [role=status], [role=alert]")
        said += [text.strip() for text in await toasts.all_inner_texts() if text.strip()]
        state = await page.locator("text=/Paused|Running|Completed/").first.inner_text()
        said.append(f"run state shown: {state}")
        await browser.close()
    return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/review_walkthrough.py")
    parser.add_argument("--credential", required=True, help="a person's credential file")
    parser.add_argument("--run-url", required=True, help="the link of the `review needed` line")
    parser.add_argument("--approve", nargs="*", default=[], help="variants to toggle on")
    parser.add_argument("--reviewer", default="", help="a name typed into the reviewer field")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--prefix", default="review-", help="screenshot file name prefix")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    for line in asyncio.run(walk(args)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
