"""Take docs/screenshot.png: the chat UI in headless Chromium, one reply done and one streaming.

Start a gateway first (`relaygate dev` writes its URL and dev token to <data dir>/dev.json,
which this script reads), or pass --base-url and --token:

    uv run python scripts/screenshot.py [--out docs/screenshot.png] [--width 1280 --height 800]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from playwright.sync_api import Page, Route, sync_playwright

from cli.dev.command import read_state
from common.platform.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def slow_replies(page: Page) -> None:
    """Replies long and slow enough to be caught mid-stream."""

    def add_metadata(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        body["metadata"] = {"offline": {"tokens": 120, "tokens_per_second": 12}}
        route.continue_(post_data=json.dumps(body))

    page.route("**/api/v1/requests/web", add_metadata)


def send(page: Page, text: str) -> None:
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url")
    parser.add_argument("--token")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    state = read_state(Settings().data_dir.resolve())
    base_url, token = args.base_url or state.get("url"), args.token or state.get("token")
    if not base_url or not token:
        sys.exit("no gateway: run `relaygate dev` first, or pass --base-url and --token")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height}, color_scheme="light")
        page.goto(base_url.rstrip("/") + "/")
        page.locator("#token").fill(token)
        page.locator("#token").press("Enter")
        page.locator("#app").wait_for()
        send(page, "What does relaygate do?")
        page.locator('#messages .turn[data-status="completed"]').wait_for(timeout=60_000)
        slow_replies(page)
        send(page, "And if my connection drops while a reply is streaming?")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#messages .reply-body')].at(-1)?.textContent.length > 140",
            timeout=60_000,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
