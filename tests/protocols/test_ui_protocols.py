"""The AI SDK and OpenAI routes in-process: the real routes, stores and hub, with this test writing the
events a worker would (no worker serves the in-process agents), so every ending can be staged exactly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import REGISTRY

from api.aisdk.chunks import DRAINED, RESUME_PREFIX
from common.streams.protocol import Event
from tests.support.app import App

HELLO_CHAT = {
    "id": "c1",
    "trigger": "submit-message",
    "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
}
HELLO_COMPLETION = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def newest_request(app: App, client: httpx.AsyncClient, *, besides: str | None = None) -> tuple[str, str]:
    """(request id, session id) of the caller's newest stored request other than `besides`, once there is one."""
    me = (await client.get("/api/v1/me")).json()
    for _ in range(250):
        row = await app.gateway.db.fetchrow(
            "SELECT request_id::text, session_id::text FROM request_logs WHERE tenant_id = $1 AND user_id = $2"
            " ORDER BY id DESC LIMIT 1",
            me["tenant_id"],
            me["user_id"],
        )
        if row and row["request_id"] != besides:
            return row["request_id"], row["session_id"]
        await asyncio.sleep(0.02)
    raise AssertionError("the call stored no request")


async def newest_id(app: App, client: httpx.AsyncClient) -> str | None:
    me = (await client.get("/api/v1/me")).json()
    found: str | None = await app.gateway.db.fetchval(
        "SELECT request_id::text FROM request_logs WHERE tenant_id = $1 AND user_id = $2 ORDER BY id DESC LIMIT 1",
        me["tenant_id"],
        me["user_id"],
    )
    return found


def worker_events(request_id: str, *texts: str, attempt: int = 1, status: str = "completed") -> list[Event]:
    """What a worker writes for one attempt."""
    events = [Event(type="run.started", request_id=request_id, attempt=attempt, data={"agent_id": "assistant"})]
    events += [Event(type="token", request_id=request_id, attempt=attempt, data={"text": t}) for t in texts]
    if status == "completed":
        events += [
            Event(type="message", request_id=request_id, attempt=attempt, data={"content": "".join(texts)}),
            Event(
                type="run.completed",
                request_id=request_id,
                attempt=attempt,
                data={"processing_time_ms": 5, "output_chunks": len(texts)},
            ),
        ]
    elif status == "failed":
        events.append(
            Event(
                type="run.failed",
                request_id=request_id,
                attempt=attempt,
                data={"error": "model provider error (X): api_key=sk-abcdefghijkl12345 bad"},
            )
        )
    elif status == "cancelled":
        events.append(
            Event(type="run.cancelled", request_id=request_id, attempt=attempt, data={"reason": "stopped by user"})
        )
    if status != "open":
        events.append(
            Event(
                type="done", request_id=request_id, attempt=attempt, data={"request_id": request_id, "status": status}
            )
        )
    return events


def chunks(body: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded (`[DONE]` kept as the string)."""
    frames = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    return [f if f == "[DONE]" else json.loads(f) for f in frames]


async def staged(
    app: App,
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    stage: Callable[[str, str], Any],
    **kwargs: Any,
) -> httpx.Response:
    """POST `body`, then let `stage(request_id, session_id)` play the worker (or the gateway's drain)."""
    before = await newest_id(app, client)
    call = asyncio.create_task(client.post(path, json=body, **kwargs))
    request_id, session_id = await newest_request(app, client, besides=before)
    await stage(request_id, session_id)
    return await asyncio.wait_for(call, 10)


async def test_a_reply_as_ui_message_chunks(app: App) -> None:
    async with app.client() as client:

        async def play(rid: str, sid: str) -> None:
            await app.gateway.writer.append(sid, worker_events(rid, "Hel", "lo"))

        response = await staged(app, client, "/api/chat", HELLO_CHAT, play)
        rid, sid = await newest_request(app, client)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1" and response.headers["x-session-id"] == sid
    assert "event:" not in response.text and "id:" not in response.text, "data: lines only"
    assert chunks(response.text) == [
        {"type": "start", "messageId": rid, "messageMetadata": {"request_id": rid, "session_id": sid}},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Hel"},
        {"type": "text-delta", "id": "text-1", "delta": "lo"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]


async def test_ui_message_endings(app: App) -> None:
    async with app.client() as client:

        async def fail(rid: str, sid: str) -> None:
            await app.gateway.writer.append(sid, worker_events(rid, "par", status="failed"))

        failed = chunks((await staged(app, client, "/api/chat", HELLO_CHAT, fail)).text)

        async def cancel(rid: str, sid: str) -> None:
            await app.gateway.writer.append(sid, worker_events(rid, "par", status="cancelled"))

        cancelled = chunks((await staged(app, client, "/api/chat", HELLO_CHAT, cancel)).text)

        async def retry(rid: str, sid: str) -> None:
            await app.gateway.writer.append(
                sid, worker_events(rid, "first", status="open") + worker_events(rid, "second", attempt=2)
            )

        retried = chunks((await staged(app, client, "/api/chat", HELLO_CHAT, retry)).text)
    assert failed[-2]["type"] == "error" and failed[-1] == "[DONE]"
    assert "[redacted]" in failed[-2]["errorText"] and "sk-abcdefghijkl12345" not in failed[-2]["errorText"]
    assert [c if isinstance(c, str) else c["type"] for c in cancelled[-5:]] == [
        "text-end",
        "finish-step",
        "abort",
        "finish",
        "[DONE]",
    ]
    assert cancelled[-2]["finishReason"] == "other" and not any(c["type"] == "error" for c in cancelled[:-1])
    assert [c["delta"] for c in retried if isinstance(c, dict) and c["type"] == "text-delta"] == ["first"]
    assert retried[-2]["type"] == "error" and retried[-2]["errorText"].startswith(RESUME_PREFIX)


async def test_resume_replays_only_the_latest_attempt_and_stop_cancels(app: App) -> None:
    async with app.client() as client:
        assert (await client.get("/api/chat/c1/stream")).status_code == 204, "a chat never used"
        first = asyncio.create_task(client.post("/api/chat", json=HELLO_CHAT))
        rid, sid = await newest_request(app, client)
        await app.gateway.db.execute(
            "UPDATE request_logs SET attempt = 2, status = 'running' WHERE request_id = $1", rid
        )
        await app.gateway.writer.append(
            sid, worker_events(rid, "first", status="open") + worker_events(rid, "sec", attempt=2, status="open")
        )

        async def rest() -> None:
            await asyncio.sleep(0.2)
            await app.gateway.writer.append(sid, [Event(type="token", request_id=rid, attempt=2, data={"text": "ond"})])
            stop = await client.post("/api/chat/c1/stop")
            assert stop.status_code == 202 and stop.json()["request_ids"] == [rid]
            await app.gateway.writer.append(sid, worker_events(rid, status="cancelled", attempt=2)[1:])

        resumed, _ = await asyncio.gather(client.get("/api/chat/c1/stream"), rest())
        await asyncio.wait_for(first, 10)
        await app.gateway.db.execute("UPDATE request_logs SET status = 'cancelled' WHERE request_id = $1", rid)
        after = await client.get("/api/chat/c1/stream")
    async with app.client() as other_user:
        unknown_to_them = await other_user.get("/api/chat/c1/stream")
    replay = chunks(resumed.text)
    assert replay[0]["messageId"] == rid
    assert [c["delta"] for c in replay if isinstance(c, dict) and c["type"] == "text-delta"] == ["sec", "ond"]
    assert replay[-2] == {"type": "finish", "finishReason": "other"}
    assert after.status_code == 204 and unknown_to_them.status_code == 204


async def test_completion_chunks_and_usage(app: App) -> None:
    async with app.client() as client:

        async def play(rid: str, sid: str) -> None:
            await app.gateway.writer.append(sid, worker_events(rid, "Hel", "lo"))

        body = {**HELLO_COMPLETION, "stream": True, "stream_options": {"include_usage": True}}
        response = await staged(app, client, "/v1/chat/completions", body, play)
        rid, _ = await newest_request(app, client)
    frames = chunks(response.text)
    assert frames[-1] == "[DONE]"
    assert {f["id"] for f in frames[:-1]} == {f"chatcmpl-{rid}"}
    assert [f["choices"][0]["delta"] for f in frames[:4]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert frames[3]["choices"][0]["finish_reason"] == "stop"
    assert frames[4]["choices"] == [] and frames[4]["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 2,
        "total_tokens": 2,
    }


async def test_completion_endings_are_error_frames(app: App) -> None:
    async with app.client() as client:
        endings = {}
        for status in ("failed", "cancelled"):

            async def play(rid: str, sid: str, status: str = status) -> None:
                await app.gateway.writer.append(sid, worker_events(rid, "par", status=status))

            endings[status] = chunks(
                (await staged(app, client, "/v1/chat/completions", {**HELLO_COMPLETION, "stream": True}, play)).text
            )

        async def retry(rid: str, sid: str) -> None:
            await app.gateway.writer.append(
                sid, worker_events(rid, "first", status="open") + worker_events(rid, "second", attempt=2)
            )

        retried = chunks(
            (await staged(app, client, "/v1/chat/completions", {**HELLO_COMPLETION, "stream": True}, retry)).text
        )

        async def quiet_retry(rid: str, sid: str) -> None:
            await app.gateway.writer.append(
                sid, worker_events(rid, status="open") + worker_events(rid, "second", attempt=2)
            )

        whole = await staged(app, client, "/v1/chat/completions", HELLO_COMPLETION, quiet_retry)
    assert endings["failed"][-2]["error"]["code"] == "run_failed"
    assert "sk-abcdefghijkl12345" not in endings["failed"][-2]["error"]["message"]
    assert endings["cancelled"][-2]["error"]["code"] == "cancelled"
    assert retried[-2]["error"]["code"] == "reply_retried"
    assert [f["choices"][0]["delta"].get("content") for f in retried[1:-2]] == ["first"]
    assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"] == "second"


async def test_drain_ends_each_protocol_the_way_its_client_understands(make_app: Callable[..., Any]) -> None:
    drained = {
        p: count("relaygate_protocol_streams_total", protocol=p, stage="ended", kind="drained")
        for p in ("aisdk", "openai")
    }
    async with make_app() as app, app.client() as client:
        calls = [
            ("/api/chat", HELLO_CHAT),
            ("/v1/chat/completions", {**HELLO_COMPLETION, "stream": True}),
            ("/v1/chat/completions", HELLO_COMPLETION),
        ]
        tasks = []
        for path, body in calls:
            before = await newest_id(app, client)
            tasks.append(asyncio.create_task(client.post(path, json=body)))
            await newest_request(app, client, besides=before)
        await asyncio.sleep(0.2)
        app.gateway.hub.drain()
        ui, streamed, whole = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for response in (ui, streamed):
        assert "reconnect" not in response.text, "no relaygate-only frame these clients would choke on"
    assert chunks(ui.text)[-2] == {"type": "error", "errorText": DRAINED} and chunks(ui.text)[-1] == "[DONE]"
    assert chunks(streamed.text)[-2]["error"]["code"] == "gateway_shutting_down"
    assert whole.status_code == 503 and whole.json()["error"]["code"] == "gateway_shutting_down"
    assert whole.headers["retry-after"] == "1"
    assert (
        count("relaygate_protocol_streams_total", protocol="aisdk", stage="ended", kind="drained")
        == drained["aisdk"] + 1
    )
    assert (
        count("relaygate_protocol_streams_total", protocol="openai", stage="ended", kind="drained")
        == drained["openai"] + 2
    )


async def test_auth_scopes_and_limits_in_each_protocols_shape(make_app: Callable[..., Any]) -> None:
    async with make_app(rate_limit_user_per_minute=1) as app:
        async with app.client(headers={}) as anonymous:
            assert (await anonymous.post("/api/chat", json=HELLO_CHAT)).status_code == 401
            openai_401 = await anonymous.get("/v1/models")
        async with app.client(scopes=["sessions"]) as sessions_only:
            ui_403 = await sessions_only.post("/api/chat", json=HELLO_CHAT)
            openai_403 = await sessions_only.post("/v1/chat/completions", json=HELLO_COMPLETION)
        async with app.client() as client:
            bad = await client.post("/v1/chat/completions", json={"model": "assistant", "messages": "hi"})
            ui_bad = await client.post("/api/chat", json={"id": "a/b", "messages": []})
            first = asyncio.create_task(client.post("/api/chat", json=HELLO_CHAT))
            await newest_request(app, client)
            ui_429 = await client.post("/api/chat", json={**HELLO_CHAT, "id": "c2"})
            openai_429 = await client.post("/v1/chat/completions", json=HELLO_COMPLETION)
            app.gateway.hub.drain()
            await asyncio.wait_for(first, 10)
    assert openai_401.status_code == 401
    assert openai_401.json()["error"]["code"] == "invalid_api_key" and openai_401.json()["error"]["message"]
    assert ui_403.status_code == 403 and ui_403.json()["error"] == "forbidden"
    assert openai_403.status_code == 403 and openai_403.json()["error"]["type"] == "permission_error"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    assert ui_bad.status_code == 422
    assert ui_429.status_code == 429 and int(ui_429.headers["retry-after"]) >= 1
    assert ui_429.json()["error"] == "rate_limited"
    assert openai_429.status_code == 429 and int(openai_429.headers["retry-after"]) >= 1
    assert openai_429.json()["error"]["code"] == "rate_limit_exceeded"


async def test_a_slow_reader_is_caught_up_not_cut(make_app: Callable[..., Any]) -> None:
    """These clients cannot resume by themselves: a mailbox overflow is caught up from Redis instead."""
    async with make_app(sse_client_queue=4) as app, app.client() as client:
        texts = [f"t{i} " for i in range(40)]

        async def flood(rid: str, sid: str) -> None:
            await asyncio.sleep(0.2)  # subscribed by now: the 40 entries land in a 4-item mailbox at once
            await app.gateway.writer.append(sid, worker_events(rid, *texts))

        response = await staged(app, client, "/api/chat", HELLO_CHAT, flood)
    deltas = [c["delta"] for c in chunks(response.text) if isinstance(c, dict) and c["type"] == "text-delta"]
    assert deltas == texts and chunks(response.text)[-2] == {"type": "finish", "finishReason": "stop"}
