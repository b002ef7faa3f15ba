"""The real `langgraph-sdk` client against a real gateway and workers: threads, runs, resume, join, cancel, wait."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import AuthenticationError, ConflictError, NotFoundError
from langgraph_sdk.schema import StreamPart

from common.platform.credentials import create_api_key
from common.streams.protocol import parse_id
from tests.conftest import Stack
from tests.support.proxy import CuttableProxy
from tests.support.streams import offline
from workers.offline_model import compose_reply

MODES = ["values", "messages-tuple", "updates"]


async def _key(stack: Stack, tenant: str, user: str) -> str:
    conn = await asyncpg.connect(stack.infra.database_url)
    try:
        return (await create_api_key(conn, tenant_id=tenant, user_id=user))[1]
    finally:
        await conn.close()


async def _client(
    stack: Stack, tenant: str | None = None, user: str | None = None, *, url: str | None = None
) -> LangGraphClient:
    """An SDK client as its users make one: the gateway's URL plus `/langgraph` and an API key (`x-api-key`)."""
    key = await _key(stack, tenant or f"t-{uuid.uuid4().hex[:8]}", user or f"u-{uuid.uuid4().hex[:8]}")
    return get_client(url=f"{url or stack.base_url}/langgraph", api_key=key)


def _say(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _reply(prompt: str, tokens: int) -> str:
    return "".join(compose_reply(prompt, tokens))


def _text(parts: list[StreamPart]) -> str:
    return "".join(p.data[0]["content"] for p in parts if p.event == "messages")


def _assert_gapless(parts: list[StreamPart]) -> None:
    """Stream order throughout (a replay after a reconnect would step back), `metadata` once, `end` last.

    Events an entry renders to several share its id; the callers compare the text to the reply,
    which a repeated or a missed token would change."""
    ids = [parse_id(p.id) for p in parts if p.id]
    assert ids == sorted(ids)
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "end" and events.count("metadata") == 1, events


async def _wait_status(client: LangGraphClient, thread_id: str, run_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        run: dict[str, Any] = dict(await client.runs.get(thread_id, run_id))
        if run["status"] in statuses or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.05)


async def test_stream_a_run_then_read_the_thread(stack: Stack) -> None:
    client = await _client(stack)
    assert (await client.assistants.get("assistant"))["graph_id"] == "assistant"
    assert {a["assistant_id"] for a in await client.assistants.search()} >= {"assistant", "it-support"}
    thread = await client.threads.create(metadata={"project": "atlas"})
    tid = thread["thread_id"]
    parts = [
        p
        async for p in client.runs.stream(
            tid, "assistant", input=_say("hello graph"), stream_mode=MODES, metadata=offline(20, 0)
        )
    ]
    _assert_gapless(parts)
    run_id = parts[0].data["run_id"]
    reply = _reply("hello graph", 20)
    assert _text(parts) == reply
    human = {"type": "human", "content": "hello graph"}
    values = [p.data["messages"] for p in parts if p.event == "values"]
    assert [{k: m[k] for k in human} for m in values[0]] == [human]
    assert [(m["type"], m["content"]) for m in values[-1]] == [("human", "hello graph"), ("ai", reply)]
    [update] = [p.data for p in parts if p.event == "updates"]
    assert update["assistant"]["messages"][0]["content"] == reply
    chunk, meta = next(p.data for p in parts if p.event == "messages")
    assert chunk["type"] == "AIMessageChunk" and meta["run_id"] == run_id

    state = await client.threads.get_state(tid)
    assert state["values"]["messages"] == values[-1]
    got = await client.threads.get(tid)
    assert got["status"] == "idle" and got["metadata"] == {
        "project": "atlas",
        "graph_id": "assistant",
        "assistant_id": "assistant",
    }
    assert (await client.runs.get(tid, run_id))["status"] == "success"
    found = await client.threads.search(metadata={"graph_id": "assistant", "project": "atlas"})
    assert [t["thread_id"] for t in found] == [tid]

    answer = await client.runs.wait(tid, "assistant", input=_say("and again"), metadata=offline(5, 0))
    conversation = [("human", "hello graph"), ("ai", reply), ("human", "and again"), ("ai", _reply("and again", 5))]
    assert [(m["type"], m["content"]) for m in answer["messages"]] == conversation  # type: ignore[index]
    second = (await client.runs.list(tid))[0]["run_id"]
    replayed = [p async for p in client.runs.join_stream(tid, second, last_event_id="-1")]
    first_values = next(p.data["messages"] for p in replayed if p.event == "values")
    assert [(m["type"], m["content"]) for m in first_values] == conversation[:3]  # the thread before, plus the turn


async def test_a_cut_connection_is_resumed_by_the_sdk_with_no_gap(stack: Stack) -> None:
    proxy = CuttableProxy("127.0.0.1", stack.port)
    try:
        client = await _client(stack, url=f"http://127.0.0.1:{proxy.port}")
        tid = (await client.threads.create())["thread_id"]
        parts: list[StreamPart] = []
        async for part in client.runs.stream(
            tid,
            "assistant",
            input=_say("survive a cut"),
            stream_mode=["messages-tuple", "values"],
            metadata=offline(120, 60),
        ):
            parts.append(part)
            if sum(p.event == "messages" for p in parts) == 5:
                before = proxy.connections
                await asyncio.to_thread(proxy.drop)
        assert proxy.connections > before  # the SDK reconnected by itself (Location + Last-Event-ID)
        _assert_gapless(parts)
        assert _text(parts) == _reply("survive a cut", 120)
    finally:
        proxy.close()


async def test_join_a_run_in_progress_live_or_from_its_start(stack: Stack) -> None:
    client = await _client(stack)
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(
        tid, "assistant", input=_say("join me"), stream_mode=["messages-tuple", "values"], metadata=offline(150, 60)
    )
    assert run["status"] == "pending"
    await _wait_status(client, tid, run["run_id"], {"running"})
    live = [p async for p in client.runs.join_stream(tid, run["run_id"])]
    reply = _reply("join me", 150)
    assert live[0].event == "metadata" and live[-1].event == "end"
    assert _text(live) and reply.endswith(_text(live))
    assert live[-2].event == "values" and live[-2].data["messages"][-1]["content"] == reply
    replayed = [p async for p in client.runs.join_stream(tid, run["run_id"], last_event_id="-1")]
    _assert_gapless(replayed)
    assert _text(replayed) == reply
    assert (await client.runs.join(tid, run["run_id"]))["messages"][-1]["content"] == reply


async def test_cancel_interrupts_the_run(stack: Stack) -> None:
    client = await _client(stack)
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "assistant", input=_say("stop me"), metadata=offline(600, 40))
    await _wait_status(client, tid, run["run_id"], {"running"})
    cancelled = await client.runs.cancel(tid, run["run_id"], wait=True)
    assert cancelled["status"] == "interrupted"  # type: ignore[index]
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    events = [p.event async for p in client.runs.join_stream(tid, run["run_id"], last_event_id="-1")]
    assert events[0] == "metadata" and events[-1] == "end" and "error" not in events
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_multitask_strategies_on_a_busy_thread(stack: Stack) -> None:
    client = await _client(stack)
    tid = (await client.threads.create())["thread_id"]
    busy = await client.runs.create(tid, "assistant", input=_say("long one"), metadata=offline(600, 40))
    await _wait_status(client, tid, busy["run_id"], {"running"})
    assert (await client.threads.get(tid))["status"] == "busy"
    with pytest.raises(ConflictError):
        await client.runs.create(tid, "assistant", input=_say("rejected"), multitask_strategy="reject")
    with pytest.raises(ConflictError):  # LangGraph's default strategy is reject
        await client.runs.create(tid, "assistant", input=_say("rejected too"))
    queued = await client.runs.create(
        tid, "assistant", input=_say("queued"), multitask_strategy="enqueue", metadata=offline(5, 0)
    )
    assert queued["status"] == "pending"
    newest = await client.runs.wait(
        tid, "assistant", input=_say("interrupting"), multitask_strategy="interrupt", metadata=offline(5, 0)
    )
    assert (await client.runs.get(tid, busy["run_id"]))["status"] == "interrupted"
    assert (await client.runs.get(tid, queued["run_id"]))["status"] == "interrupted"
    assert newest["messages"][-1]["content"] == _reply("interrupting", 5)  # type: ignore[index]


async def test_another_users_thread_and_run_are_not_found(stack: Stack) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    owner, other = await _client(stack, tenant, "owner"), await _client(stack, tenant, "other")
    tid = (await owner.threads.create())["thread_id"]
    run = await owner.runs.wait(tid, "assistant", input=_say("mine"), metadata=offline(3, 0))
    rid = (await owner.runs.list(tid))[0]["run_id"]
    assert run["messages"][-1]["type"] == "ai"  # type: ignore[index]
    for attempt in (
        other.threads.get(tid),
        other.threads.get_state(tid),
        other.runs.get(tid, rid),
        other.threads.delete(tid),
        other.runs.cancel(tid, rid),
        other.runs.create(tid, "assistant", input=_say("theirs")),
    ):
        with pytest.raises(NotFoundError):
            await attempt
    with pytest.raises(httpx.HTTPStatusError) as joined:  # `join` raises httpx's own error type
        await other.runs.join(tid, rid)
    assert joined.value.response.status_code == 404
    with pytest.raises(NotFoundError):
        [p async for p in other.runs.stream(tid, "assistant", input=_say("theirs"))]
    with pytest.raises(NotFoundError):
        [p async for p in other.runs.join_stream(tid, rid, last_event_id="-1")]
    assert tid not in {t["thread_id"] for t in await other.threads.search(limit=100)}
    assert (await owner.threads.get(tid))["values"]["messages"][0]["content"] == "mine"


async def test_credentials_and_deleting_a_thread(stack: Stack) -> None:
    anonymous = get_client(url=f"{stack.base_url}/langgraph", api_key=None)
    with pytest.raises(AuthenticationError) as refused:
        await anonymous.threads.create()
    assert "credentials" in refused.value.message
    bearer = get_client(
        url=f"{stack.base_url}/langgraph",
        api_key=None,
        headers={"Authorization": f"Bearer {stack.mint('jwt-user', 'jwt-tenant')}"},
    )
    tid = (await bearer.threads.create())["thread_id"]
    assert (await bearer.threads.get(tid))["thread_id"] == tid
    run = await bearer.runs.create(tid, "assistant", input=_say("delete me"), metadata=offline(600, 40))
    await bearer.threads.delete(tid)
    with pytest.raises(NotFoundError):
        await bearer.threads.get(tid)
    with pytest.raises(NotFoundError):
        await bearer.runs.get(tid, run["run_id"])
    with stack.client("jwt-user", "jwt-tenant") as native:  # relaygate's own routes keep the history
        session = native.get(f"/api/v1/sessions/{tid}").json()
        assert session["status"] == "archived"
        [request] = native.get(f"/api/v1/sessions/{tid}/requests").json()["items"]
        deadline = time.monotonic() + 30
        while request["status"] != "cancelled" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            request = native.get(f"/api/v1/requests/{run['run_id']}").json()
        assert request["status"] == "cancelled"


async def test_a_draining_gateway_ends_the_stream_so_the_client_rejoins(new_stack: Stack) -> None:
    """SIGTERM ends the stream cleanly, without `end` and without relaygate's own `reconnect` frame; the run
    still runs, and joining after the last id seen (what newer SDKs do by themselves) continues gaplessly."""
    new_stack.start_gateway()
    new_stack.start_worker("load")
    client = await _client(new_stack)
    tid = (await client.threads.create())["thread_id"]
    parts: list[StreamPart] = []
    async for part in client.runs.stream(
        tid, "load", input=_say("drain me"), stream_mode=["messages-tuple"], metadata=offline(3000, 40)
    ):
        parts.append(part)
        if sum(p.event == "messages" for p in parts) == 3:
            assert new_stack.gateway is not None
            new_stack.gateway.send_signal(signal.SIGTERM)
    assert [p.event for p in parts if p.event not in ("messages", "metadata")] == []
    assert new_stack.gateway is not None and new_stack.gateway.wait(20) is not None
    new_stack.start_gateway()
    run_id = parts[0].data["run_id"]
    assert (await client.runs.get(tid, run_id))["status"] == "running"
    rest: list[StreamPart] = []
    async for part in client.runs.join_stream(tid, run_id, last_event_id=parts[-1].id):
        rest.append(part)
        if sum(p.event == "messages" for p in rest) == 5:
            await client.runs.cancel(tid, run_id)
    assert rest[0].event == "messages" and rest[-1].event == "end"
    _assert_gapless(parts + rest)
    text = _text(parts + rest)
    assert len(text) > len(_text(parts)) and _reply("drain me", 3000).startswith(text)
