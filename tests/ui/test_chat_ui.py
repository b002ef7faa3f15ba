"""The browser chat UI end to end: real Chromium against the real gateway stack.

Each test signs in as its own fresh user, so session lists never mix between tests.
Reply length and speed come from the offline model's `metadata.offline`, added to the
page's own POST by a Playwright route (the UI has no test hooks).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Request, Route, expect

from tests.conftest import Stack

TERMINAL = ("completed", "failed", "cancelled")
XSS = "<img src=x onerror=alert(1)><script>window.__pwned=1</script>"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------- helpers


def new_user(stack: Stack) -> tuple[str, str]:
    """A fresh user id and their dev token."""
    user_id = f"ui-{uuid.uuid4().hex[:10]}"
    return user_id, stack.mint(user_id, "tenant-ui")


def sign_in(page: Page, stack: Stack, token: str) -> None:
    page.goto(stack.base_url + "/")
    page.locator("#token").fill(token)
    page.locator("#token").press("Enter")
    expect(page.locator("#app")).to_be_visible()


def offline_replies(page: Page, tokens: int, tokens_per_second: int, agent_id: str | None = None) -> None:
    """Make the offline model's replies to this page `tokens` long at that speed (from `agent_id`)."""

    def add_metadata(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        body["metadata"] = {"offline": {"tokens": tokens, "tokens_per_second": tokens_per_second}}
        if agent_id:
            body["agent_id"] = agent_id
        route.continue_(post_data=json.dumps(body))

    page.route("**/api/v1/requests/web", add_metadata)


def send(page: Page, text: str) -> None:
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")


def last_turn(page: Page) -> Locator:
    return page.locator("#messages .turn").last


def request_id_of(page: Page) -> str:
    turn = last_turn(page)
    expect(turn).to_have_attribute("data-request-id", UUID)
    return turn.get_attribute("data-request-id") or ""


def reply_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(
        """() => {
            const turn = [...document.querySelectorAll('#messages .turn')].at(-1);
            return turn ? {status: turn.dataset.status,
                           text: turn.querySelector('.reply-body').textContent}
                        : {status: null, text: ''};
        }"""
    )
    return state


def wait_for_reply_text(page: Page, min_chars: int = 1) -> None:
    page.wait_for_function(
        """(n) => {
            const turn = [...document.querySelectorAll('#messages .turn')].at(-1);
            return turn && turn.querySelector('.reply-body').textContent.length >= n;
        }""",
        arg=min_chars,
    )


def stored_request(stack: Stack, token: str, request_id: str) -> dict[str, Any]:
    res = httpx.get(
        f"{stack.base_url}/api/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    res.raise_for_status()
    body: dict[str, Any] = res.json()
    return body


def wait_stored_terminal(stack: Stack, token: str, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = stored_request(stack, token, request_id)
        if stored["status"] in TERMINAL:
            return stored
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} did not finish: {stored}")


def worker_pid(stack: Stack, token: str, request: dict[str, Any]) -> int:
    """The pid of the worker running `request` (from the workers' logs: clients are not told)."""
    return stack.worker_running(request["request_id"])


def rendered(page: Page, markdown: str) -> str:
    """The text the UI's own Markdown renderer makes of `markdown`."""
    text: str = page.evaluate(
        """async (source) => {
            const { renderMarkdown } = await import('/markdown.js');
            const box = document.createElement('div');
            renderMarkdown(source, box);
            return box.textContent;
        }""",
        markdown,
    )
    return text


def assert_final_reply_matches_store(page: Page, stack: Stack, token: str) -> None:
    request_id = request_id_of(page)
    stored = wait_stored_terminal(stack, token, request_id)
    assert stored["status"] == "completed", stored
    expect(last_turn(page)).to_have_attribute("data-status", "completed")
    assert stored["response"], stored
    assert reply_state(page)["text"] == rendered(page, stored["response"])


# ---------------------------------------------------------------- tests


def test_sign_in_rejects_a_bad_token_then_accepts_a_good_one(page: Page, stack: Stack) -> None:
    user_id, token = new_user(stack)
    page.goto(stack.base_url + "/")
    page.locator("#token").fill("not-a-token")
    page.locator("#token").press("Enter")
    expect(page.locator("#signin-error")).to_have_text("Invalid or expired token.")
    expect(page.locator("#app")).to_be_hidden()

    sign_in(page, stack, token)
    expect(page.locator("#whoami")).to_contain_text(user_id)
    assert page.evaluate("sessionStorage.getItem('relaygate.token')") == token
    page.reload()  # the token survives a reload of the tab
    expect(page.locator("#app")).to_be_visible()


def test_reply_streams_token_by_token(page: Page, stack: Stack) -> None:
    _, token = new_user(stack)
    offline_replies(page, tokens=60, tokens_per_second=20)
    sign_in(page, stack, token)

    page.locator("#input").fill("first line")
    page.locator("#input").press("Shift+Enter")  # a newline, not a send
    page.locator("#input").type("second line")
    expect(page.locator("#messages .turn")).to_have_count(0)
    page.locator("#input").press("Enter")
    expect(last_turn(page).locator(".msg-user")).to_contain_text("first line\nsecond line")

    lengths = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = reply_state(page)
        if state["status"] in TERMINAL:
            break
        lengths.append(len(state["text"]))
        page.wait_for_timeout(100)
    growth = sorted({n for n in lengths if n > 0})
    assert len(growth) >= 3, f"reply did not grow progressively: samples {lengths}"
    assert lengths == sorted(lengths), f"reply text shrank while streaming: {lengths}"
    assert_final_reply_matches_store(page, stack, token)
    expect(page.locator("#sessions .session")).to_have_count(1)
    expect(page.locator("#sessions .session-title")).to_have_text("first line\nsecond line")


def test_reload_mid_reply_completes_without_duplication(page: Page, stack: Stack) -> None:
    _, token = new_user(stack)
    offline_replies(page, tokens=80, tokens_per_second=20)
    sign_in(page, stack, token)
    send(page, "tell me a long story")
    wait_for_reply_text(page, 20)
    assert reply_state(page)["status"] == "running"

    page.reload()
    expect(page.locator("#messages .turn")).to_have_count(1)
    assert_final_reply_matches_store(page, stack, token)
    expect(page.locator("#messages .turn")).to_have_count(1)


def test_network_drop_resumes_without_losing_or_repeating_text(page: Page, stack: Stack, cutting_proxy: Any) -> None:
    _, token = new_user(stack)
    resumed_from: list[str] = []

    def on_request(request: Request) -> None:
        if request.url.endswith("/stream"):
            resumed_from.append(request.headers.get("last-event-id", ""))

    page.on("request", on_request)
    offline_replies(page, tokens=80, tokens_per_second=20)
    page.goto(cutting_proxy.base_url + "/")
    page.locator("#token").fill(token)
    page.locator("#token").press("Enter")
    send(page, "keep talking through the outage")
    wait_for_reply_text(page, 20)

    cutting_proxy.cut()
    expect(page.locator("#connection")).to_have_text("Reconnecting…")
    cutting_proxy.restore()
    expect(page.locator("#connection")).to_have_text("")
    assert_final_reply_matches_store(page, stack, token)
    assert resumed_from[0] == "" and len(resumed_from) >= 2, resumed_from
    assert all(resumed_from[1:]), f"a reconnect did not send Last-Event-ID: {resumed_from}"


def test_gateway_crash_and_restart_mid_reply_resumes_without_losing_or_repeating_text(
    new_stack: Stack,
    page: Page,  # this order closes the page before its stack stops
) -> None:
    new_stack.start_gateway()  # the shared stack's workers serve its requests
    _, token = new_user(new_stack)
    offline_replies(page, tokens=100, tokens_per_second=20)
    sign_in(page, new_stack, token)
    send(page, "keep talking while the gateway restarts")
    wait_for_reply_text(page, 20)

    gateway = new_stack.gateway
    assert gateway is not None
    gateway.kill()
    gateway.wait()
    expect(page.locator("#connection")).to_have_text("Reconnecting…")
    new_stack.start_gateway()  # same port; the worker kept writing to the stream meanwhile
    assert_final_reply_matches_store(page, new_stack, token)
    expect(page.locator("#connection")).to_have_text("")


def test_worker_lost_mid_reply_retry_replaces_the_partial_reply(
    stack: Stack, chaos_workers: Callable[[], None], page: Page
) -> None:
    chaos_workers()  # two workers on the `chaos` queue: kill one, the other retries
    _, token = new_user(stack)
    offline_replies(page, tokens=80, tokens_per_second=15, agent_id="chaos")
    sign_in(page, stack, token)
    send(page, "survive a lost worker")
    wait_for_reply_text(page, 20)

    # Kill the worker producing the reply; the other one's reaper retries it (attempt 2).
    request = stored_request(stack, token, request_id_of(page))
    os.kill(worker_pid(stack, token, request), signal.SIGKILL)
    assert_final_reply_matches_store(page, stack, token)
    assert stored_request(stack, token, request["request_id"])["attempt"] == 2


def test_cancel_ends_the_reply_with_a_notice(page: Page, stack: Stack) -> None:
    _, token = new_user(stack)
    offline_replies(page, tokens=400, tokens_per_second=10)
    sign_in(page, stack, token)
    send(page, "this will be cancelled")
    wait_for_reply_text(page, 5)

    cancel = last_turn(page).get_by_role("button", name="Cancel")
    expect(cancel).to_be_visible()
    cancel.focus()
    page.keyboard.press("Enter")  # keyboard only
    expect(last_turn(page)).to_have_attribute("data-status", "cancelled")
    expect(last_turn(page).locator(".reply-status")).to_have_text("Reply cancelled.")
    expect(cancel).to_be_hidden()
    assert stored_request(stack, token, request_id_of(page))["status"] == "cancelled"


def test_html_and_script_in_messages_stay_literal_text(page: Page, stack: Stack, watch: Any) -> None:
    _, token = new_user(stack)
    offline_replies(page, tokens=40, tokens_per_second=50)  # the offline model echoes the message
    sign_in(page, stack, token)
    send(page, XSS)

    expect(last_turn(page).locator(".msg-user .msg-text")).to_have_text(XSS)
    expect(last_turn(page)).to_have_attribute("data-status", "completed")
    expect(last_turn(page).locator(".reply-body")).to_contain_text(XSS)
    page.reload()  # and again when rendered from the stored history and the replay
    expect(last_turn(page).locator(".msg-user .msg-text")).to_have_text(XSS)
    expect(last_turn(page).locator(".reply-body")).to_contain_text(XSS)
    expect(page.locator("#sessions .session-title").first).to_have_text(XSS)
    assert page.locator("#app img, #app script").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert watch.dialogs == []


def test_conversation_applies_retries_resets_and_deliveries(page: Page, stack: Stack) -> None:
    """Event handling a live run rarely shows, fed to the UI's own Conversation."""
    page.goto(stack.base_url + "/")
    turns = page.evaluate(
        """async () => {
            const { Conversation } = await import('/chat.js');
            const list = document.createElement('div');
            document.body.append(list);
            const chat = new Conversation(list, { scroller: list, onCancel: async () => {} });
            const ev = (id, type, request_id, attempt, data) =>
                chat.applyEvent({ id, event: type, data: { type, request_id, attempt, seq: 0, ts: 0, data } });
            // r1: an attempt lost mid-reply, a late event from it, a duplicate, deliveries.
            ev('1-0', 'request.accepted', 'r1', 1, { content: 'hi' });
            ev('1-1', 'run.started', 'r1', 1, {});
            ev('1-2', 'token', 'r1', 1, { text: 'Hel' });
            ev('1-3', 'run.retrying', 'r1', 2, { attempt: 2, reason: 'worker lost' });
            ev('1-4', 'token', 'r1', 1, { text: 'STALE' });
            ev('1-5', 'token', 'r1', 2, { text: 'Hello' });
            ev('1-5', 'token', 'r1', 2, { text: 'Hello' });
            ev('1-6', 'run.completed', 'r1', 2, {});
            ev('1-7', 'delivery.succeeded', 'r1', 2, { channel: 'slack', detail: '#general' });
            ev('1-8', 'delivery.failed', 'r1', 2, { channel: 'email', detail: 'bounced' });
            // r2: events were missed; the reset snapshot replaces it and tokens continue it.
            ev('2-0', 'request.accepted', 'r2', 1, { content: 'again' });
            ev('2-1', 'run.started', 'r2', 1, {});
            ev('2-2', 'token', 'r2', 1, { text: 'ab' });
            chat.applyEvent({ id: '5-0', event: 'stream.reset', data: { type: 'stream.reset',
                request_id: '', attempt: 0, data: { reason: 'trimmed', requests: [
                    { request_id: 'r2', content: 'again', status: 'running', response: 'abcdef',
                      attempt: 1, error: null }] } } });
            ev('5-1', 'token', 'r2', 1, { text: 'gh' });
            // r3: stored mid-reply, its start already trimmed: the complete message decides.
            chat.loadSnapshot([{ request_id: 'r3', content: 'q', status: 'running',
                                 response: 'part', attempt: 1, error: null }]);
            ev('6-0', 'token', 'r3', 1, { text: 'XX' });
            ev('6-1', 'message', 'r3', 1, { content: 'part and rest' });
            ev('6-2', 'run.failed', 'r3', 1, { error: 'model timed out' });
            await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
            return [...list.querySelectorAll('.turn')].map((t) => ({
                id: t.dataset.requestId, status: t.dataset.status,
                text: t.querySelector('.reply-body').textContent,
                note: t.querySelector('.reply-status').textContent,
                deliveries: [...t.querySelectorAll('.delivery')].map((d) => d.textContent),
            }));
        }"""
    )
    assert turns == [
        {
            "id": "r1",
            "status": "completed",
            "text": "Hello",
            "note": "",
            "deliveries": ["Also sent to slack: #general", "Could not send to email: bounced"],
        },
        {"id": "r2", "status": "running", "text": "abcdefgh", "note": "", "deliveries": []},
        {
            "id": "r3",
            "status": "failed",
            "text": "part and rest",
            "note": "The reply failed: model timed out",
            "deliveries": [],
        },
    ]


def test_replies_render_safe_markdown(page: Page, stack: Stack) -> None:
    _, token = new_user(stack)
    offline_replies(page, tokens=40, tokens_per_second=50)  # the offline model echoes the message
    sign_in(page, stack, token)
    send(page, "**bold** and `a<b>` via [docs](https://example.com/docs) or [bad](javascript:alert(1))")
    reply = last_turn(page).locator(".reply-body")
    expect(last_turn(page)).to_have_attribute("data-status", "completed")
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("code")).to_have_text("a<b>")
    link = reply.get_by_role("link", name="docs")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(link).to_have_attribute("target", "_blank")
    expect(reply.locator("a")).to_have_count(1)
    expect(reply).to_contain_text("[bad](javascript:alert(1))")

    # Blocks the offline model does not produce, through the same renderer.
    html = page.evaluate(
        """async () => {
            const { renderMarkdown } = await import('/markdown.js');
            const box = document.createElement('div');
            renderMarkdown([
                '**bold** and *it* and `x<y>`',
                '- one', '- [site](https://example.com/a?b=1)',
                '1. [bad](javascript:alert(1))',
                '```js', '<script>window.__pwned=1</script>', '```',
            ].join('\\n'), box);
            return box.innerHTML;
        }"""
    )
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<code>x&lt;y&gt;</code>" in html
    assert '<a href="https://example.com/a?b=1" target="_blank" rel="noopener noreferrer">site</a>' in html
    assert "<li>[bad](javascript:alert(1))</li>" in html
    assert '<pre data-lang="js"><code>&lt;script&gt;window.__pwned=1&lt;/script&gt;</code></pre>' in html


def test_other_users_sessions_are_not_listed(page: Page, stack: Stack) -> None:
    _, other_token = new_user(stack)
    headers = {"Authorization": f"Bearer {other_token}"}
    other = httpx.post(
        f"{stack.base_url}/api/v1/sessions", json={"integration_type": "web"}, headers=headers, timeout=10
    )
    other.raise_for_status()
    other_session = other.json()["session_id"]

    _, token = new_user(stack)
    offline_replies(page, tokens=5, tokens_per_second=50)
    sign_in(page, stack, token)
    send(page, "my own chat")
    expect(page.locator("#sessions .session")).to_have_count(1)
    own = page.locator("#sessions .session").first.get_attribute("data-session-id")
    assert own != other_session

    page.goto(f"{stack.base_url}/#session/{other_session}")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#messages .turn")).to_have_count(0)
    assert page.locator(f'[data-session-id="{other_session}"]').count() == 0


def test_phone_width_layout_works_by_keyboard(browser: Browser, stack: Stack) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740})
    try:
        page = context.new_page()
        _, token = new_user(stack)
        offline_replies(page, tokens=120, tokens_per_second=200)
        sign_in(page, stack, token)
        send(page, "hello from a phone")
        expect(last_turn(page)).to_have_attribute("data-status", "completed")
        page.locator("#input").fill("a\nmessage\nof\nmany\nlines")
        # Only the conversation scrolls: the page itself fits the screen both ways.
        size = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        assert size == [360, 740], size

        expect(page.locator("#sidebar")).to_be_hidden()
        page.locator("#toggle-sidebar").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#sidebar")).to_be_visible()
        expect(page.locator("#new-chat")).to_be_focused()
        page.keyboard.press("Escape")
        expect(page.locator("#sidebar")).to_be_hidden()
        expect(page.locator("#toggle-sidebar")).to_be_focused()
    finally:
        context.close()
