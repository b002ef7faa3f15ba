"""Streams always end: a Redis error part-way through cancelling or sweeping never leaves a request without `done`."""

from __future__ import annotations

import uuid
from typing import Any

from common import queue
from common.streams import Event
from tests.gateway.conftest import App
from workers.maintenance import _end_stream
from workers.runner import Runtime


async def _types(app: App, session_id: str, request_id: str) -> list[str]:
    entries = await app.gateway.streams.xrange(app.gateway.writer.key(session_id))
    return [Event.from_fields(f).type for _, f in entries if f[b"request_id"] == request_id.encode()]


async def test_cancel_that_cannot_end_the_stream_cancels_nothing(app: App) -> None:
    async with app.client() as client:
        first = (await client.post("/api/v1/requests/web", json={"content": "one"})).json()
        second = (await client.post("/api/v1/requests/web", json={"content": "two", "session_id": first["session_id"]})
                  ).json()
        key = app.gateway.writer.key(first["session_id"])
        saved = await app.gateway.streams.dump(key)
        await app.gateway.streams.delete(key)
        await app.gateway.streams.set(key, "not a stream")  # every append to it now fails
        refused = await client.post(f"/api/v1/requests/{second['request_id']}/cancel")
        assert refused.status_code == 503
        assert (await client.get(f"/api/v1/requests/{second['request_id']}")).json()["status"] == "queued"
        await app.gateway.streams.delete(key)
        await app.gateway.streams.restore(key, 0, saved)
        assert (await client.post(f"/api/v1/requests/{second['request_id']}/cancel")).status_code == 202
        assert (await client.get(f"/api/v1/requests/{second['request_id']}")).json()["status"] == "cancelled"
    assert (await _types(app, first["session_id"], second["request_id"]))[-2:] == ["run.cancelled", "done"]


async def test_sweep_ends_every_stream_though_one_append_fails(app: App) -> None:
    gw = app.gateway
    arq = await queue.connect(app.settings.queue_redis_url)
    rt = Runtime(settings=app.settings, db=gw.db, streams=gw.streams, queue=arq, writer=gw.writer, agents=gw.agents)
    rows: list[dict[str, Any]] = [{"session_id": str(uuid.uuid4()), "request_id": str(uuid.uuid4()), "attempt": 1}
                                  for _ in range(3)]
    await gw.streams.set(gw.writer.key(rows[0]["session_id"]), "not a stream")
    try:
        failure = None
        try:
            await _end_stream(rt, rows, "timed out")  # type: ignore[arg-type]
        except Exception as exc:
            failure = exc
        assert failure is not None  # reported, so the sweep's loop logs it
        for row in rows[1:]:
            assert await _types(app, row["session_id"], row["request_id"]) == ["run.failed", "done"]
    finally:
        await arq.aclose()


async def test_an_idempotency_race_leaves_no_phantom_turn(app: App) -> None:
    import asyncio

    async with app.client() as client:
        first = (await client.post("/api/v1/requests/web", json={"content": "first"})).json()
        body = {"content": "only once", "session_id": first["session_id"]}
        answers = await asyncio.gather(*(client.post("/api/v1/requests/web", json=body,
                                                     headers={"Idempotency-Key": "race-1"}) for _ in range(6)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["request_id"] for a in answers}) == 1
    entries = await app.gateway.streams.xrange(app.gateway.writer.key(first["session_id"]))
    events = [Event.from_fields(f) for _, f in entries]
    assert [e.type for e in events] == ["request.accepted", "request.accepted"]
    assert not any(e.data.get("error") == "the request was not stored" for e in events)


async def test_a_request_announced_but_never_stored_gets_its_stream_ended(app: App) -> None:
    from common.keys import intake_key
    from common.streams import intake_member
    from workers.maintenance import end_unstored_once

    gw = app.gateway
    async with app.client() as client:
        stored = (await client.post("/api/v1/requests/web", json={"content": "kept"})).json()
    # A gateway that died between announcing a request and storing it left only this behind.
    orphan_session, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    await gw.writer.announce(orphan_session, orphan, [Event(type="request.accepted", request_id=orphan)])
    arq = await queue.connect(app.settings.queue_redis_url)
    rt = Runtime(settings=app.settings, db=gw.db, streams=gw.streams, queue=arq, writer=gw.writer, agents=gw.agents)
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
