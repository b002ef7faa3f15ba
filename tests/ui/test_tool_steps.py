"""Tool steps in the browser chat UI: real Chromium, the real gateway and a worker running the `tools-ui`
agent (the demo MCP server over stdio, its calculator behind a person's approval) with the offline model."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import Stack
from tests.ui.test_chat_ui import (
    last_turn,
    new_user,
    offline_replies,
    request_id_of,
    send,
    sign_in,
    stored_request,
    wait_stored_terminal,
)

pytestmark = pytest.mark.timeout(180)

ASK = '/tool demo.now\n/tool demo.calculate {"expression": "6*7"}'
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")  # the demo clock's answer


@pytest.fixture(scope="module")
def tools_worker(stack: Stack) -> Iterator[Stack]:
    with stack.serving("tools-ui") as served:
        yield served


def ask_for_tools(page: Page, stack: Stack) -> str:
    """Sign a new user in, ask for a free tool and one that needs approval; returns the user's token."""
    _, token = new_user(stack)
    offline_replies(page, tokens=5, tokens_per_second=50, agent_id="tools-ui")
    sign_in(page, stack, token)
    send(page, ASK)
    return token


def test_steps_show_and_approve_continues_the_reply(page: Page, tools_worker: Stack) -> None:
    token = ask_for_tools(page, tools_worker)
    turn = last_turn(page)
    now, calculate = turn.locator(".tool-step").nth(0), turn.locator(".tool-step").nth(1)
    expect(calculate).to_have_attribute("data-state", "awaiting")
    expect(turn).to_have_attribute("data-status", "waiting")
    expect(turn.locator(".reply-status")).to_have_text("Waiting for your approval of a tool call…")
    expect(now).to_have_attribute("data-state", "ok")
    expect(now.locator(".tool-name")).to_have_text("demo.now")
    # A finished step is collapsed; opening it shows its arguments and result.
    expect(now.locator(".tool-result")).to_be_hidden()
    now.locator("summary").click()
    expect(now.locator(".tool-result")).to_be_visible()
    expect(now.locator(".tool-result")).to_have_text(ISO_UTC)
    # The call awaiting approval is open: the person sees what they approve.
    expect(calculate.locator(".tool-args")).to_be_visible()
    assert '"expression": "6*7"' in calculate.locator(".tool-args").text_content()  # type: ignore[operator]
    rid = request_id_of(page)
    waiting = stored_request(tools_worker, token, rid)
    assert waiting["status"] == "waiting"
    # The session's history carries the steps too (what a page opened later, or a stream.reset, shows).
    history = httpx.get(
        f"{tools_worker.base_url}/api/v1/sessions/{waiting['session_id']}/requests",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()["items"]
    assert [(s["tool"], s["status"]) for s in history[-1]["steps"]] == [
        ("demo.now", "ok"),
        ("demo.calculate", "awaiting"),
    ]

    calculate.get_by_role("button", name="Approve").click()
    expect(turn).to_have_attribute("data-status", "completed")
    expect(turn.locator(".tool-step")).to_have_count(2)  # the replayed step updates its step, never adds one
    expect(calculate).to_have_attribute("data-state", "ok")
    expect(calculate.locator(".tool-result")).to_have_text("42")
    expect(calculate.get_by_role("button", name="Approve")).to_be_hidden()
    expect(turn.locator(".reply-body")).to_contain_text("demo.calculate returned: 42")
    stored = wait_stored_terminal(tools_worker, token, rid)
    assert [(s["tool"], s["status"]) for s in stored["steps"]] == [("demo.now", "ok"), ("demo.calculate", "ok")]

    page.reload()  # rebuilt from the stream's replay: still one step per call
    expect(last_turn(page).locator(".tool-step")).to_have_count(2)
    expect(last_turn(page).locator(".tool-step").nth(1)).to_have_attribute("data-state", "ok")


def test_deny_is_shown_as_the_steps_error(page: Page, tools_worker: Stack) -> None:
    token = ask_for_tools(page, tools_worker)
    turn = last_turn(page)
    calculate = turn.locator(".tool-step").nth(1)
    expect(calculate).to_have_attribute("data-state", "awaiting")
    deny = calculate.get_by_role("button", name="Deny")
    deny.focus()
    page.keyboard.press("Enter")  # keyboard only
    expect(turn).to_have_attribute("data-status", "completed")
    expect(calculate).to_have_attribute("data-state", "error")
    expect(calculate.locator(".tool-result")).to_have_text(
        "a person denied this call to demo.calculate: denied in the web UI"
    )
    stored = wait_stored_terminal(tools_worker, token, request_id_of(page))
    assert [s["status"] for s in stored["steps"]] == ["ok", "error"]


def test_a_reset_snapshot_brings_back_the_steps_and_the_decision(page: Page, stack: Stack) -> None:
    """Events were missed (a trimmed stream): the snapshot's steps stand in for them, and a call that
    waits for a person still offers Approve and Deny."""
    page.goto(stack.base_url + "/")
    shown = page.evaluate(
        """async () => {
            const { Conversation } = await import('/chat.js');
            const list = document.createElement('div');
            document.body.append(list);
            const decided = [];
            const chat = new Conversation(list, {
                scroller: list, onCancel: async () => {},
                onDecide: async (requestId, callId, approve) => { decided.push([requestId, callId, approve]); },
            });
            const step = (call_id, tool, status, output) =>
                ({ call_id, step: 0, tool, arguments: { expression: '6*7' }, status, output, error: null, attempt: 1 });
            chat.applyEvent({ id: '5-0', event: 'stream.reset', data: { type: 'stream.reset', request_id: '',
                attempt: 0, data: { reason: 'trimmed', requests: [
                    { request_id: 'r1', content: 'tools', status: 'waiting', response: '', attempt: 1, error: null,
                      steps: [step('c1', 'demo.now', 'ok', 'then'), step('c2', 'demo.calculate', 'awaiting', null)] },
                ] } } });
            await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
            const turn = list.querySelector('.turn');
            const steps = [...turn.querySelectorAll('.tool-step')];
            const offered = !steps[1].querySelector('.tool-approval').hidden;
            steps[1].querySelector('.tool-approve').click();
            await new Promise((done) => setTimeout(done, 0));
            return {
                states: steps.map((s) => s.dataset.state),
                note: turn.querySelector('.reply-status').textContent,
                offered,
                decided,
            };
        }"""
    )
    assert shown == {
        "states": ["ok", "awaiting"],
        "note": "Waiting for your approval of a tool call…",
        "offered": True,
        "decided": [["r1", "c2", True]],
    }
