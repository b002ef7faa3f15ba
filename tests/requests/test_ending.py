"""Streams end exactly once: a Redis error or a dead writer part-way through ending a request never
leaves it without `done`, and nothing ends it twice."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from common.queue import enqueue as queue
from common.requests.ending import closing_events, end_elsewhere
from common.streams.protocol import Event
from tests.support.app import App
from workers.maintenance import repair_endings_once
from workers.runner import WorkerRuntime


async def _types(app: App, session_id: str, request_id: str) -> list[str]:
    entries = await app.gateway.streams.xrange(app.gateway.writer.key(session_id))
    return [Event.from_fields(f).type for _, f in entries if f[b"request_id"] == request_id.encode()]


def _runtime(app: App, arq: Any) -> WorkerRuntime:
    gw = app.gateway
    return WorkerRuntime(
        settings=app.settings, db=gw.db, streams=gw.streams, queue=arq, writer=gw.writer, agents=gw.agents
    )


async def test_a_cancel_whose_stream_write_fails_is_ended_by_the_sweep_once(app: App) -> None:
    gw = app.gateway
    async with app.client() as client:
        first = (await client.post("/api/v1/requests/web", json={"content": "one"})).json()
        second = (
            await client.post("/api/v1/requests/web", json={"content": "two", "session_id": first["session_id"]})
        ).json()
        key = gw.writer.key(first["session_id"])
        saved = await gw.streams.dump(key)
        await gw.streams.delete(key)
        await gw.streams.set(key, "not a stream")  # every append to it now fails
        assert (await client.post(f"/api/v1/requests/{second['request_id']}/cancel")).status_code == 202
        assert (await client.get(f"/api/v1/requests/{second['request_id']}")).json()["status"] == "cancelled"
        assert await gw.db.fetchval("SELECT done_pending FROM request_logs WHERE request_id = $1", second["request_id"])
        await gw.streams.delete(key)
        await gw.streams.restore(key, 0, saved)
    arq = await queue.connect(app.settings.queue_redis_url)
    try:
        await gw.db.execute(
            "UPDATE request_logs SET completed_at = now() - interval '1 minute' WHERE request_id = $1",
            second["request_id"],
        )
        assert await repair_endings_once(_runtime(app, arq)) >= 1
        assert await repair_endings_once(_runtime(app, arq)) == 0
    finally:
        await arq.aclose()
    assert (await _types(app, first["session_id"], second["request_id"]))[-2:] == ["run.cancelled", "done"]


async def test_a_request_that_became_terminal_without_its_done_is_ended_exactly_once(app: App) -> None:
    """A worker killed between its commit and its `done`: the sweep writes the ending from the row,
    once however many workers sweep, and its late retry adds nothing."""
    gw = app.gateway
    async with app.client() as client:
        accepted = (await client.post("/api/v1/requests/web", json={"content": "hello"})).json()
    request_id, session_id = accepted["request_id"], accepted["session_id"]
    await gw.db.execute(
        "UPDATE request_logs SET status = 'completed', response_content = 'the reply', done_pending = true, "
        "completed_at = now() - interval '1 minute' WHERE request_id = $1",
        request_id,
    )
    arq = await queue.connect(app.settings.queue_redis_url)
    try:
        swept = await asyncio.gather(*(repair_endings_once(_runtime(app, arq)) for _ in range(3)))
        assert sum(swept) >= 1
    finally:
        await arq.aclose()
    events = [
        Event.from_fields(f)
        for _, f in await gw.streams.xrange(gw.writer.key(session_id))
        if f[b"request_id"] == request_id.encode()
    ]
    assert [e.type for e in events] == ["request.accepted", "message", "run.completed", "done"]
    assert events[1].data["content"] == "the reply"
    assert not await gw.db.fetchval("SELECT done_pending FROM request_logs WHERE request_id = $1", request_id)
    late = closing_events(request_id, 1, "failed", error="late", seq=9)
    assert not await gw.writer.end(session_id, late)
    assert len(await _types(app, session_id, request_id)) == 4


async def test_a_superseded_attempt_can_write_nothing(app: App) -> None:
    """Once attempt 2 has written, attempt 1's tokens and ending are refused by the stream fence."""
    gw = app.gateway
    session_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    token = [Event(type="token", request_id=request_id, attempt=1, seq=1, data={"text": "a"})]
    assert not (await gw.writer.append_many([(session_id, token)])).refused[0]
    retry = [Event(type="run.retrying", request_id=request_id, attempt=2, seq=1, data={"attempt": 2})]
    assert not (await gw.writer.append_many([(session_id, retry)])).refused[0]
    late = [Event(type="token", request_id=request_id, attempt=1, seq=2, data={"text": "b"})]
    assert (await gw.writer.append_many([(session_id, late)])).refused == [True]
    assert not await gw.writer.end(session_id, closing_events(request_id, 1, "completed", reply="a", seq=3))
    assert await gw.writer.end(session_id, closing_events(request_id, 2, "completed", reply="c", seq=2))
    assert await _types(app, session_id, request_id) == ["token", "run.retrying", "message", "run.completed", "done"]


async def test_sweep_ends_every_stream_though_one_append_fails(app: App) -> None:
    gw = app.gateway
    arq = await queue.connect(app.settings.queue_redis_url)
    rows: list[dict[str, Any]] = [
        {
            "session_id": str(uuid.uuid4()),
            "request_id": str(uuid.uuid4()),
            "attempt": 1,
            "status": "failed",
            "error": "timed out",
            "response_content": None,
            "agent_id": None,
            "processing_time_ms": None,
        }
        for _ in range(3)
    ]
    await gw.streams.set(gw.writer.key(rows[0]["session_id"]), "not a stream")
    try:
        await end_elsewhere(_runtime(app, arq), rows)  # type: ignore[arg-type]
        for row in rows[1:]:
            assert await _types(app, row["session_id"], row["request_id"]) == ["run.failed", "done"]
    finally:
        await arq.aclose()


async def test_an_idempotency_race_leaves_no_phantom_turn(app: App) -> None:
    async with app.client() as client:
        first = (await client.post("/api/v1/requests/web", json={"content": "first"})).json()
        body = {"content": "only once", "session_id": first["session_id"]}
        answers = await asyncio.gather(
            *(client.post("/api/v1/requests/web", json=body, headers={"Idempotency-Key": "race-1"}) for _ in range(6))
        )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["request_id"] for a in answers}) == 1
    entries = await app.gateway.streams.xrange(app.gateway.writer.key(first["session_id"]))
    events = [Event.from_fields(f) for _, f in entries]
    assert [e.type for e in events] == ["request.accepted", "request.accepted"]
    assert not any(e.data.get("error") == "the request was not stored" for e in events)


async def test_a_request_announced_but_never_stored_gets_its_stream_ended(app: App) -> None:
    from common.platform.keys import intake_key
    from common.streams.protocol import intake_member
    from workers.maintenance import end_unstored_once

    gw = app.gateway
    async with app.client() as client:
        stored = (await client.post("/api/v1/requests/web", json={"content": "kept"})).json()
    # A gateway that died between announcing a request and storing it left only this behind.
    orphan_session, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    await gw.writer.announce(orphan_session, orphan, [Event(type="request.accepted", request_id=orphan)])
    arq = await queue.connect(app.settings.queue_redis_url)
    rt = _runtime(app, arq)
    try:
        assert await end_unstored_once(rt, older_than_seconds=-5) >= 1
        assert await end_unstored_once(rt, older_than_seconds=-5) == 0  # each is ended once
    finally:
        await arq.aclose()
    assert await _types(app, orphan_session, orphan) == ["request.accepted", "run.failed", "done"]
    assert await _types(app, stored["session_id"], stored["request_id"]) == ["request.accepted"]
    buckets = app.settings.stream_buckets
    for session, request in ((orphan_session, orphan), (stored["session_id"], stored["request_id"])):
        assert await gw.streams.zscore(intake_key(session, buckets), intake_member(session, request)) is None
