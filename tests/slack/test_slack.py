"""Slack end to end: signed events, commands and buttons into the gateway; replies streamed into the
thread by a real dispatcher through the real slack-sdk client, against a fake Slack Web API."""

from __future__ import annotations

import json
import secrets
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
from slack_sdk.signature import SignatureVerifier

from tests.conftest import Stack, sql
from tests.fakes.slack_api import Call, FakeSlack
from tests.support.delivery import Dispatchers, full_logs, wait_for

EDITS_PER_MINUTE = 4


@dataclass
class Workspace:
    team: str
    tenant: str
    secret: str
    token: str


@pytest.fixture(scope="module")
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def workspace(stack: Stack) -> Workspace:
    ws = Workspace(
        team=f"T{uuid.uuid4().hex[:8].upper()}",
        tenant=f"slack-{uuid.uuid4().hex[:6]}",
        secret=secrets.token_hex(16),
        token="xoxb-" + secrets.token_hex(12),
    )
    sql(
        stack,
        "INSERT INTO slack_installations (team_id, tenant_id, bot_token, signing_secret, bot_user_id)"
        " VALUES ($1, $2, $3, $4, 'UBOT')",
        ws.team,
        ws.tenant,
        ws.token,
        ws.secret,
    )
    return ws


@pytest.fixture(scope="module")
def slack_stack(stack: Stack, fake_slack: FakeSlack, workspace: Workspace) -> Iterator[Dispatchers]:
    """A worker that writes slowly enough for edits to show, and a dispatcher pointed at the fake."""
    worker = stack.start_worker("slack", OFFLINE_MODEL_TOKENS="40", OFFLINE_MODEL_TOKENS_PER_SECOND="20")
    d = Dispatchers(
        stack,
        {
            "SLACK_API_URL": fake_slack.api_url,
            "SLACK_EDIT_INTERVAL_SECONDS": "0.3",
            "SLACK_EDITS_PER_MINUTE": str(EDITS_PER_MINUTE),
            "DELIVERY_JOB_TIMEOUT_SECONDS": "4",
            "DELIVERY_RETRY_DELAY_SCALE": "0.01",
        },
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()
        worker.send_signal(signal.SIGTERM)
        worker.wait(15)


def signed(ws: Workspace, body: bytes, *, age: int = 0, secret: str | None = None) -> dict[str, str]:
    ts = str(int(time.time()) - age)
    sig = SignatureVerifier(secret or ws.secret).generate_signature(timestamp=ts, body=body)
    assert sig is not None
    return {"x-slack-request-timestamp": ts, "x-slack-signature": sig}


def post_event(
    stack: Stack, ws: Workspace, event: dict[str, Any], *, event_id: str | None = None, retry: int = 0, age: int = 0
) -> httpx.Response:
    body = json.dumps(
        {"type": "event_callback", "team_id": ws.team, "event_id": event_id or f"Ev{uuid.uuid4().hex}", "event": event}
    ).encode()
    headers = {**signed(ws, body, age=age), "content-type": "application/json"}
    if retry:
        headers.update({"x-slack-retry-num": str(retry), "x-slack-retry-reason": "http_timeout"})
    return httpx.post(f"{stack.base_url}/slack/events", content=body, headers=headers)


def post_dm(stack: Stack, ws: Workspace, user: str, dm: str, text: str, ts: str | None = None) -> httpx.Response:
    """A person's direct message to the bot, as Slack's Events API posts it (`ts` now unless given)."""
    event = {"type": "message", "channel_type": "im", "user": user, "channel": dm, "text": text}
    return post_event(stack, ws, {**event, "ts": ts or f"{time.time():.6f}"})


def slash(stack: Stack, ws: Workspace, command: str, text: str, user: str, channel: str) -> httpx.Response:
    """A signed slash command as Slack posts it; the gateway's answer is checked to be its ephemeral 200."""
    body = urlencode(
        {
            "command": command,
            "text": text,
            "team_id": ws.team,
            "user_id": user,
            "channel_id": channel,
            "trigger_id": uuid.uuid4().hex,
        }
    ).encode()
    r = httpx.post(
        f"{stack.base_url}/slack/commands",
        content=body,
        headers={**signed(ws, body), "content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.json()["response_type"] == "ephemeral", r.text
    return r


def finished(fake: FakeSlack, channel: str, ts: str | None = None) -> list[Call]:
    """Waits for the final update of the message in `channel` (it carries the New conversation button)."""

    def final() -> list[Call]:
        return [
            c
            for c in fake.of("chat.update", channel)
            if (ts is None or c.args["ts"] == ts) and "rg_new" in json.dumps(c.args.get("blocks"))
        ]

    return list(wait_for(final, 60))


def reply_of(stack: Stack, ws: Workspace, user: str) -> list[asyncpg.Record]:
    """The user's requests once none is queued or running: a reply's final Slack edit follows its stream,
    and the row is written a moment later."""

    def rows() -> list[asyncpg.Record]:
        return sql(
            stack,
            "SELECT request_id::text, session_id::text, response_content, status FROM request_logs"
            " WHERE tenant_id = $1 AND user_id = $2 ORDER BY id",
            ws.tenant,
            user,
        )

    deadline = time.monotonic() + 30
    found = rows()
    while any(r["status"] in ("queued", "running") for r in found) and time.monotonic() < deadline:
        time.sleep(0.1)
        found = rows()
    return found


def test_url_verification(stack: Stack, workspace: Workspace) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "x"}).encode()
    r = httpx.post(f"{stack.base_url}/slack/events", content=body, headers=signed(workspace, body))
    assert r.status_code == 200 and r.json() == {"challenge": "abc123"}


def test_bad_or_stale_signature_is_401_and_no_work(stack: Stack, workspace: Workspace, fake_slack: FakeSlack) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    body = json.dumps(
        {
            "type": "event_callback",
            "team_id": workspace.team,
            "event_id": "EvBad",
            "event": {"type": "app_mention", "user": user, "channel": channel, "text": "hi", "ts": "1.1"},
        }
    ).encode()
    for headers in (
        signed(workspace, body, secret="wrong"),
        signed(workspace, body, age=400),
        {"x-slack-request-timestamp": str(int(time.time()))},
    ):
        r = httpx.post(f"{stack.base_url}/slack/events", content=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    tampered = signed(workspace, body)
    r = httpx.post(f"{stack.base_url}/slack/events", content=body + b" ", headers=tampered)
    assert r.status_code == 401
    assert reply_of(stack, workspace, user) == []
    assert fake_slack.of("chat.postMessage", channel) == []


def test_mention_streams_one_reply_in_its_thread_even_when_retried(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    event = {
        "type": "app_mention",
        "user": user,
        "channel": channel,
        "text": "<@UBOT> tell me a story",
        "ts": "1700000001.000100",
    }
    event_id = f"Ev{uuid.uuid4().hex}"
    # Slack signs each retry when it sends it: a later timestamp, so a new signature (not a replay).
    assert post_event(stack, workspace, event, event_id=event_id, age=5).status_code == 200
    assert post_event(stack, workspace, event, event_id=event_id, retry=1).json().get("duplicate") is True
    final = finished(fake_slack, channel)
    posts = fake_slack.of("chat.postMessage", channel)
    assert len(posts) == 1 and posts[0].args["thread_ts"] == "1700000001.000100"
    assert posts[0].token == workspace.token
    (row,) = reply_of(stack, workspace, user)
    assert row["status"] == "completed"
    assert final[-1].args["text"] == row["response_content"]
    assert "Answered by slack-bot" in json.dumps(final[-1].args["blocks"])
    updates = fake_slack.of("chat.update", channel)
    assert {u.args["ts"] for u in updates} == {final[-1].args["ts"]}
    # The budget is per minute window: a reply that streams across a window boundary gets two.
    # (A call is spent just before the fake receives it, hence the second's slack on the first.)
    windows = int(updates[-1].at // 60) - int((updates[0].at - 1) // 60) + 1
    assert len(updates) <= EDITS_PER_MINUTE * windows + 1  # the budget, plus the final text that always goes out
    partial = [u for u in updates[:-1] if u.args["text"] != row["response_content"]]
    assert partial and row["response_content"].startswith(partial[0].args["text"])
    query = "SELECT status, external_ref, follows FROM delivery_logs WHERE request_id = $1::uuid"
    wait_for(lambda: sql(stack, query, row["request_id"])[0]["status"] != "PENDING")
    delivered = sql(stack, query, row["request_id"])
    # `follows`: the delivery sweep leaves the thread to its follow job (dispatcher/repair.py).
    assert [(d["status"], d["external_ref"], d["follows"]) for d in delivered] == [
        ("SUCCESS", final[-1].args["ts"], True)
    ]
    assert workspace.token not in full_logs(stack) and workspace.secret not in full_logs(stack)


def test_thread_is_one_session_and_dms_continue(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, channel, dm = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}", f"D{uuid.uuid4().hex[:8]}"
    root = "1700000002.000100"
    post_event(stack, workspace, {"type": "app_mention", "user": user, "channel": channel, "text": "first", "ts": root})
    wait_for(lambda: len(finished(fake_slack, channel)) >= 1)
    post_event(
        stack,
        workspace,
        {
            "type": "app_mention",
            "user": user,
            "channel": channel,
            "text": "second",
            "ts": "1700000002.000200",
            "thread_ts": root,
        },
    )
    for text in ("dm one", "dm two"):
        post_dm(stack, workspace, user, dm, text)
    post_event(
        stack,
        workspace,
        {
            "type": "message",
            "channel_type": "im",
            "bot_id": "B1",
            "user": "UBOT",
            "channel": dm,
            "text": "a bot talking",
            "ts": "1.2",
        },
    )
    post_event(
        stack,
        workspace,
        {"type": "message", "channel_type": "im", "user": "UBOT", "channel": dm, "text": "myself", "ts": "1.3"},
    )

    def all_done() -> list[asyncpg.Record] | None:
        found = reply_of(stack, workspace, user)
        return found if len(found) == 4 and all(x["status"] == "completed" for x in found) else None

    rows = wait_for(all_done, 60)
    sessions = [r["session_id"] for r in rows]
    assert sessions[0] == sessions[1] and sessions[2] == sessions[3] and sessions[0] != sessions[2]
    assert all(p.args["thread_ts"] == root for p in fake_slack.of("chat.postMessage", channel))
    assert all(p.args.get("thread_ts") is None for p in fake_slack.of("chat.postMessage", dm))
    assert len(reply_of(stack, workspace, "UBOT")) == 0


def test_slash_command(stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    slash(stack, workspace, "/ask", "what is up", user, channel)
    final = finished(fake_slack, channel)
    (row,) = reply_of(stack, workspace, user)
    assert final[-1].args["text"] == row["response_content"]
    assert fake_slack.of("chat.postMessage", channel)[0].args.get("thread_ts") is None


def test_cancel_button(stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    post_event(
        stack,
        workspace,
        {"type": "app_mention", "user": user, "channel": channel, "text": "long one", "ts": "1700000003.000100"},
    )
    (placeholder,) = wait_for(lambda: fake_slack.of("chat.postMessage", channel))
    button = placeholder.args["blocks"][1]["elements"][0]
    assert button["action_id"] == "rg_cancel"
    payload = {
        "type": "block_actions",
        "team": {"id": workspace.team},
        "user": {"id": user},
        "channel": {"id": channel},
        "actions": [{"action_id": "rg_cancel", "value": button["value"]}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    r = httpx.post(f"{stack.base_url}/slack/interactive", content=body, headers=signed(workspace, body))
    assert r.status_code == 200, r.text
    final = finished(fake_slack, channel)
    assert "ancelled" in final[-1].args["text"]
    (row,) = reply_of(stack, workspace, user)
    assert row["status"] == "cancelled"


def test_requests_slack_route(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    body = json.dumps(
        {
            "user_id": user,
            "content": "Hello",
            "channel_id": channel,
            "thread_id": "1700000004.1",
            "slack_user_id": user,
            "slack_team_id": workspace.team,
        }
    ).encode()
    assert httpx.post(f"{stack.base_url}/api/v1/requests/slack", content=body).status_code == 401
    r = httpx.post(
        f"{stack.base_url}/api/v1/requests/slack",
        content=body,
        headers={**signed(workspace, body), "content-type": "application/json"},
    )
    assert r.status_code == 202, r.text
    final = finished(fake_slack, channel)
    assert fake_slack.of("chat.postMessage", channel)[0].args["thread_ts"] == "1700000004.1"
    assert final[-1].args["text"] == reply_of(stack, workspace, user)[0]["response_content"]
    bad = json.dumps({"content": "no channel", "slack_team_id": workspace.team}).encode()
    r = httpx.post(
        f"{stack.base_url}/api/v1/requests/slack",
        content=bad,
        headers={**signed(workspace, bad), "content-type": "application/json"},
    )
    assert r.status_code == 422 and "body.channel_id" in [f["field"] for f in r.json()["detail"]]


def test_slack_is_on_by_default_where_installed(stack: Stack, workspace: Workspace) -> None:
    with stack.client("U1", workspace.tenant) as c:
        assert c.get("/api/v1/integration-defaults").json()["integration_defaults"]["SLACK"]["enabled"] is True
        schema = c.get("/api/v1/openapi.json").json()
    assert "/api/v1/requests/slack" in schema["paths"]
    assert not any(p.startswith("/slack/") for p in schema["paths"])
    assert workspace.secret not in json.dumps(schema)


def test_rate_limits_short_waited_long_rescheduled(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    fake_slack.fail_next("chat.postMessage", 429, {"Retry-After": "0"})
    fake_slack.fail_next("chat.update", 429, {"Retry-After": "6"})
    post_event(
        stack,
        workspace,
        {"type": "app_mention", "user": user, "channel": channel, "text": "busy slack", "ts": "1700000005.000100"},
    )
    final = finished(fake_slack, channel)
    (row,) = reply_of(stack, workspace, user)
    assert final[-1].args["text"] == row["response_content"]
    assert len(fake_slack.of("chat.postMessage", channel)) == 1  # the re-scheduled job edited, never re-posted
    assert "Slack delivery will be retried" in full_logs(stack)


def test_dispatcher_killed_mid_reply_edits_the_same_message(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    post_event(
        stack,
        workspace,
        {"type": "app_mention", "user": user, "channel": channel, "text": "survive this", "ts": "1700000006.000100"},
    )
    (placeholder,) = wait_for(lambda: fake_slack.of("chat.postMessage", channel))
    slack_stack.kill()
    slack_stack.start()
    final = finished(fake_slack, channel)
    (row,) = reply_of(stack, workspace, user)
    assert final[-1].args["text"] == row["response_content"]
    assert len(fake_slack.of("chat.postMessage", channel)) == 1
    assert {u.args["ts"] for u in fake_slack.of("chat.update", channel)} == {
        placeholder.args.get("ts") or final[-1].args["ts"]
    }
    query = "SELECT status FROM delivery_logs WHERE request_id = $1::uuid"
    wait_for(lambda: sql(stack, query, row["request_id"])[0]["status"] != "PENDING")
    assert [d["status"] for d in sql(stack, query, row["request_id"])] == ["SUCCESS"]


def streamed_text(calls: list[Call]) -> str:
    text = ""
    for call in calls:
        text += call.args.get("markdown_text") or ""
        chunks = call.args.get("chunks") or []
        if isinstance(chunks, str):
            chunks = json.loads(chunks)
        text += "".join(c.get("text", "") for c in chunks if c.get("type") == "markdown_text")
    return text


def test_native_streaming_behind_a_setting(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    with slack_stack.replaced_with(SLACK_NATIVE_STREAMING="true"):
        user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
        root = "1700000007.000100"
        post_event(
            stack, workspace, {"type": "app_mention", "user": user, "channel": channel, "text": "stream it", "ts": root}
        )
        (stop,) = wait_for(lambda: fake_slack.of("chat.stopStream", channel), 60)
        (start,) = fake_slack.of("chat.startStream", channel)
        assert start.args["thread_ts"] == root and start.args["recipient_user_id"] == user
        assert start.args["recipient_team_id"] == workspace.team
        calls = [
            c
            for c in fake_slack.calls
            if c.method in ("chat.startStream", "chat.appendStream", "chat.stopStream")
            and c.args.get("channel") == channel
        ]
        (row,) = reply_of(stack, workspace, user)
        assert streamed_text(calls) == row["response_content"]
        assert fake_slack.of("chat.postMessage", channel) == [] and fake_slack.of("chat.update", channel) == []
        assert "rg_new" in json.dumps(stop.args.get("blocks"))


def test_user_slack_settings_are_honoured(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, dm = f"U{uuid.uuid4().hex[:8]}", f"D{uuid.uuid4().hex[:8]}"
    with stack.client(user, workspace.tenant) as c:
        r = c.put(
            f"/api/v1/users/{user}/integrations/SLACK",
            json={"config": {"thread_replies": True, "mention_user": True, "include_agent_info": False}},
        )
        assert r.status_code == 200, r.text
    post_dm(stack, workspace, user, dm, "thread me", ts="1700000008.000100")
    final = finished(fake_slack, dm)
    assert fake_slack.of("chat.postMessage", dm)[0].args["thread_ts"] == "1700000008.000100"
    (row,) = reply_of(stack, workspace, user)
    assert final[-1].args["text"] == f"<@{user}> {row['response_content']}"
    assert "Answered by" not in json.dumps(final[-1].args["blocks"])


def test_other_requests_reach_a_slack_channel_by_override(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    override = {"config": {"channel_id": channel, "team_id": workspace.team}}
    with stack.client(user, workspace.tenant) as c:
        r = c.put(f"/api/v1/users/{user}/integrations/SLACK", json=override)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.channel_id", r.text
        post_event(
            stack,
            workspace,
            {"type": "app_mention", "user": user, "channel": channel, "text": "hi there", "ts": "1700000011.000100"},
        )
        finished(fake_slack, channel)
        r = c.put(f"/api/v1/users/{user}/integrations/SLACK", json=override)
        assert r.status_code == 200, r.text
        r = c.post(
            "/api/v1/requests/web",
            json={"content": "from the web <!here> & <https://x.example|y>", "new_session": True},
        )
        assert r.status_code == 202, r.text
    (post,) = wait_for(
        lambda: [p for p in fake_slack.of("chat.postMessage", channel) if not p.args.get("thread_ts")], 60
    )
    row = reply_of(stack, workspace, user)[-1]
    assert "<!here>" in row["response_content"]  # the offline model echoes the question
    escaped = row["response_content"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert post.args["text"].endswith(escaped) and "<" not in post.args["text"]
    assert post.token == workspace.token


def test_override_naming_another_tenants_workspace_posts_nothing(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    """Refused when saved; and a row that got past the save (written before the rule) is refused by the dispatcher."""
    other = Workspace(
        team=f"T{uuid.uuid4().hex[:8].upper()}",
        tenant=f"other-{uuid.uuid4().hex[:6]}",
        secret=secrets.token_hex(16),
        token="xoxb-" + secrets.token_hex(12),
    )
    sql(
        stack,
        "INSERT INTO slack_installations (team_id, tenant_id, bot_token, signing_secret) VALUES ($1, $2, $3, $4)",
        other.team,
        other.tenant,
        other.token,
        other.secret,
    )
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    config = {"channel_id": channel, "team_id": other.team}
    with stack.client(user, workspace.tenant) as c:
        r = c.put(f"/api/v1/users/{user}/integrations/SLACK", json={"config": config})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.team_id", r.text
        sql(
            stack,
            "INSERT INTO user_integration_configs (tenant_id, user_id, integration_type, config)"
            " VALUES ($1, $2, 'SLACK', $3::jsonb)",
            workspace.tenant,
            user,
            json.dumps(config),
        )
        r = c.post("/api/v1/requests/web", json={"content": "leak me", "new_session": True})
        assert r.status_code == 202, r.text
        query = "SELECT status, error_message FROM delivery_logs WHERE request_id = $1::uuid"
        (row,) = wait_for(
            lambda: [d for d in sql(stack, query, r.json()["request_id"]) if d["status"] != "PENDING"], 60
        )
    assert row["status"] == "FAILED" and "config.team_id" in row["error_message"]
    assert fake_slack.of("chat.postMessage", channel) == []
    assert not [call for call in fake_slack.calls if call.token == other.token]


def test_user_and_model_text_is_escaped_for_mrkdwn(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    post_event(
        stack,
        workspace,
        {
            "type": "app_mention",
            "user": user,
            "channel": channel,
            "text": "<@UBOT> ping <!channel> <https://evil.example|your bank> & bye",
            "ts": "1700000012.000100",
        },
    )
    final = finished(fake_slack, channel)
    (row,) = reply_of(stack, workspace, user)
    assert "<!channel> <https://evil.example|your bank> & bye" in row["response_content"]
    shown = final[-1].args["text"]
    assert "&lt;!channel&gt; &lt;https://evil.example|your bank&gt; &amp; bye" in shown
    assert "<" not in shown and "<" not in json.dumps(final[-1].args["blocks"][0])
    assert all("<!channel>" not in (p.args.get("text") or "") for p in fake_slack.of("chat.postMessage", channel))


def test_long_reply_continues_in_thread_follow_ups(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    with slack_stack.replaced_with(SLACK_MESSAGE_CHARS="60"):
        user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
        root = "1700000009.000100"
        post_event(
            stack, workspace, {"type": "app_mention", "user": user, "channel": channel, "text": "go long", "ts": root}
        )
        final = finished(fake_slack, channel)
        (row,) = reply_of(stack, workspace, user)
        reply = row["response_content"]
        posts = wait_for(
            lambda: (
                (p := fake_slack.of("chat.postMessage", channel))
                and " ".join([final[-1].args["text"], *(x.args["text"] for x in p[1:])]).split() == reply.split()
                and p
            ),
            30,
        )
        assert len(posts) > 2 and all(p.args["thread_ts"] == root for p in posts)
        assert all(len(p.args["text"]) <= 60 for p in posts[1:]) and len(final[-1].args["text"]) <= 60


def dm_and_wait(stack: Stack, ws: Workspace, user: str, dm: str, text: str, count: int) -> list[asyncpg.Record]:
    """Send `text` as a DM and wait until the user's `count`-th request has completed."""
    post_dm(stack, ws, user, dm, text)
    return list(
        wait_for(
            lambda: (
                (rows := reply_of(stack, ws, user))
                and len(rows) == count
                and rows[-1]["status"] == "completed"
                and rows
            ),
            60,
        )
    )


def test_new_conversation_button_starts_a_new_dm_session(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, dm = f"U{uuid.uuid4().hex[:8]}", f"D{uuid.uuid4().hex[:8]}"
    dm_and_wait(stack, workspace, user, dm, "one", 1)
    rows = dm_and_wait(stack, workspace, user, dm, "two", 2)
    assert rows[0]["session_id"] == rows[1]["session_id"]
    payload = {
        "type": "block_actions",
        "team": {"id": workspace.team},
        "user": {"id": user},
        "channel": {"id": dm},
        "message": {"ts": "1.1"},
        "actions": [{"action_id": "rg_new", "value": "new"}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    assert (
        httpx.post(f"{stack.base_url}/slack/interactive", content=body, headers=signed(workspace, body)).status_code
        == 200
    )
    rows = dm_and_wait(stack, workspace, user, dm, "three", 3)
    assert rows[2]["session_id"] != rows[1]["session_id"]


def test_a_dm_whose_session_ended_continues_in_a_new_one(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, dm = f"U{uuid.uuid4().hex[:8]}", f"D{uuid.uuid4().hex[:8]}"
    first = dm_and_wait(stack, workspace, user, dm, "one", 1)[0]
    sql(stack, "UPDATE request_sessions SET status = 'expired' WHERE session_id = $1", first["session_id"])
    rows = dm_and_wait(stack, workspace, user, dm, "two", 2)  # the intake refuses the ended session
    assert rows[1]["session_id"] != first["session_id"]


def test_reply_outlasting_one_job_continues_in_the_next(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    """DELIVERY_JOB_TIMEOUT_SECONDS is 4 here and this reply takes about 5 s: a continuation job finishes it."""
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    body = json.dumps(
        {
            "user_id": user,
            "content": "slow one",
            "channel_id": channel,
            "thread_id": "1700000010.1",
            "slack_user_id": user,
            "slack_team_id": workspace.team,
            "metadata": {"offline": {"tokens": 100, "tokens_per_second": 20}},
        }
    ).encode()
    r = httpx.post(
        f"{stack.base_url}/api/v1/requests/slack",
        content=body,
        headers={**signed(workspace, body), "content-type": "application/json"},
    )
    assert r.status_code == 202, r.text
    final = finished(fake_slack, channel)
    (row,) = reply_of(stack, workspace, user)
    assert final[-1].args["text"] == row["response_content"]
    assert len(fake_slack.of("chat.postMessage", channel)) == 1
    query = "SELECT status FROM delivery_logs WHERE request_id = $1::uuid"
    wait_for(lambda: sql(stack, query, row["request_id"])[0]["status"] != "PENDING")
    assert [d["status"] for d in sql(stack, query, row["request_id"])] == ["SUCCESS"]
    assert f"{row['request_id']}:SLACK:follow_slack ● 'continued'" in full_logs(stack)


def test_slash_command_schedules_a_run_that_replies_in_the_channel(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers
) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"

    def command(text: str) -> str:
        return str(slash(stack, workspace, "/relaygate", text, user, channel).json()["text"])

    made = command('schedule "0 9 * * 1-5" tz=Europe/Berlin summarise open tickets')
    assert made.startswith("Scheduled `"), made
    schedule_id = made.split("`")[1]
    assert schedule_id in command("schedule list")
    assert command('schedule "every morning" summarise').startswith("Could not schedule that")
    sql(stack, "UPDATE schedules SET next_run_at = now() WHERE schedule_id = $1::uuid", schedule_id)
    final = finished(fake_slack, channel)
    (row,) = reply_of(stack, workspace, user)
    assert "summarise open tickets" in row["response_content"]
    assert final[-1].args["text"] == row["response_content"]
    assert command(f"schedule delete {schedule_id}") == f"Deleted `{schedule_id}`."
    assert command("schedule list") == "No schedules."


@pytest.fixture(scope="module")
def tools_worker(stack: Stack) -> Iterator[Stack]:
    """A worker for the `tools-ui` agent: the demo MCP server, its calculator behind a person's approval."""
    with stack.serving("tools-ui") as served:
        yield served


def ask_tools(stack: Stack, ws: Workspace, user: str, channel: str) -> None:
    """A Slack request to the `tools-ui` agent: the clock runs, the calculator waits for approval."""
    body = json.dumps(
        {
            "user_id": user,
            "content": '/tool demo.now\n/tool demo.calculate {"expression": "6*7"}',
            "agent_id": "tools-ui",
            "channel_id": channel,
            "thread_id": "1700000020.1",
            "slack_user_id": user,
            "slack_team_id": ws.team,
        }
    ).encode()
    r = httpx.post(
        f"{stack.base_url}/api/v1/requests/slack",
        content=body,
        headers={**signed(ws, body), "content-type": "application/json"},
    )
    assert r.status_code == 202, r.text


def press(stack: Stack, ws: Workspace, user: str, channel: str, button: dict[str, Any]) -> None:
    payload = {
        "type": "block_actions",
        "team": {"id": ws.team},
        "user": {"id": user},
        "channel": {"id": channel},
        "trigger_id": uuid.uuid4().hex,  # unique per press in Slack's payloads, so two presses never sign alike
        "actions": [{"action_id": button["action_id"], "value": button["value"], "action_ts": f"{time.time():.6f}"}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    r = httpx.post(f"{stack.base_url}/slack/interactive", content=body, headers=signed(ws, body))
    assert r.status_code == 200, r.text


def decision_buttons(fake: FakeSlack, channel: str) -> dict[str, dict[str, Any]]:
    """The Approve and Deny buttons of the reply once it shows them, by action_id."""

    def shown() -> dict[str, dict[str, Any]]:
        for call in reversed(fake.of("chat.update", channel) + fake.of("chat.postMessage", channel)):
            for block in call.args.get("blocks") or []:
                elements = block.get("elements") or []
                if block["type"] == "actions" and elements[0]["action_id"] == "rg_approve":
                    return {e["action_id"]: e for e in elements}
        return {}

    found: dict[str, dict[str, Any]] = wait_for(shown, 60)
    return found


def step_lines(call: Call) -> list[str]:
    return [
        b["elements"][0]["text"]
        for b in call.args["blocks"]
        if b["type"] == "context" and "Answered by" not in b["elements"][0]["text"]
    ]


def ephemeral_to(fake: FakeSlack, channel: str, user: str) -> list[Call]:
    return list(wait_for(lambda: [c for c in fake.of("chat.postEphemeral", channel) if c.args["user"] == user]))


def test_tool_steps_and_approval_buttons_in_the_thread(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers, tools_worker: Stack
) -> None:
    user, other, channel = f"U{uuid.uuid4().hex[:8]}", f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    ask_tools(stack, workspace, user, channel)
    buttons = decision_buttons(fake_slack, channel)
    assert buttons["rg_approve"]["text"]["text"] == "Approve demo.calculate" and "rg_deny" in buttons
    [row] = reply_of(stack, workspace, user)
    assert row["status"] == "waiting"

    press(stack, workspace, other, channel, buttons["rg_approve"])
    [refusal] = ephemeral_to(fake_slack, channel, other)
    assert refusal.args["text"] == "Only the person who asked can approve or deny this tool call."
    assert reply_of(stack, workspace, user)[0]["status"] == "waiting", "another user's press decides nothing"

    press(stack, workspace, user, channel, buttons["rg_approve"])
    final = finished(fake_slack, channel)[-1]
    lines = step_lines(final)
    assert len(lines) == 2, lines  # the steps the retried attempt replays update their lines
    assert lines[0].startswith(":wrench: `demo.now` {} → ") and lines[1] == (
        ':wrench: `demo.calculate` {"expression":"6*7"} → 42'
    )
    assert "rg_approve" not in json.dumps(final.args["blocks"])
    assert "demo.calculate returned: 42" in final.args["text"]
    assert reply_of(stack, workspace, user)[0]["status"] == "completed"

    press(stack, workspace, user, channel, buttons["rg_approve"])  # a second press of the same button
    [late] = ephemeral_to(fake_slack, channel, user)
    assert late.args["text"].startswith("This tool call was already decided")


def test_deny_button_feeds_the_denial_to_the_model(
    stack: Stack, workspace: Workspace, fake_slack: FakeSlack, slack_stack: Dispatchers, tools_worker: Stack
) -> None:
    user, channel = f"U{uuid.uuid4().hex[:8]}", f"C{uuid.uuid4().hex[:8]}"
    ask_tools(stack, workspace, user, channel)
    press(stack, workspace, user, channel, decision_buttons(fake_slack, channel)["rg_deny"])
    final = finished(fake_slack, channel)[-1]
    assert step_lines(final)[1] == (
        ':warning: `demo.calculate` {"expression":"6*7"} failed:'
        " a person denied this call to demo.calculate: denied in Slack"
    )
    assert reply_of(stack, workspace, user)[0]["status"] == "completed"
