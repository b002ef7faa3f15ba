"""The gateway's stream hub against a real Valkey: fan-out, wake-up, catch-up and slow clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from api.streams.hub import HEARTBEAT, OVERFLOW, Entry, Hub, Subscription, _Reader
from api.streams.relay import batches
from common.streams import Event, StreamWriter, parse_id, stream_key
from tests.conftest import Infra

READER_NAME = f"test-hub-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def hub(infra: Infra) -> AsyncIterator[Hub]:
    redis = Redis.from_url(infra.redis_url)
    readers = [Redis.from_url(infra.redis_url, max_connections=1, client_name=READER_NAME) for _ in range(2)]
    h = Hub(redis, readers, block_ms=5000, queue_size=50, heartbeat_seconds=0.2)
    h.start()
    yield h
    await h.stop()
    for client in (redis, *readers):
        await client.aclose()


def _writer(hub: Hub) -> StreamWriter:
    return StreamWriter(hub.redis, buckets=256, maxlen=10_000, ttl_seconds=60)


async def _next_entry(sub: Subscription) -> Entry:
    while True:
        for item in await asyncio.wait_for(sub.take(), 3):
            if isinstance(item, Entry):
                return item


async def test_many_subscribers_share_the_reader_connections(hub: Hub) -> None:
    writer = _writer(hub)
    sessions = [str(uuid.uuid4()) for _ in range(50)]
    subs = [await hub.subscribe(stream_key(s, 256)) for s in sessions]
    for s in sessions:
        await writer.append(s, [Event(type="token", request_id=s, data={"text": s[:4]})])
    for s, sub in zip(sessions, subs, strict=True):
        entry = await _next_entry(sub)
        assert entry.request_id == s.encode()
    readers = [c for c in await hub.redis.client_list() if c.get("name") == READER_NAME]
    assert len(readers) == len(hub.readers) == 2
    for sub in subs:
        hub.unsubscribe(sub)
    assert hub.subscriber_count == 0


async def test_a_new_subscription_wakes_the_reader_at_once(hub: Hub) -> None:
    writer = _writer(hub)
    first = await hub.subscribe(stream_key(str(uuid.uuid4()), 256))
    await asyncio.sleep(0.3)  # the readers are now blocked in XREAD (5 s) without the next key
    session = str(uuid.uuid4())
    sub = await hub.subscribe(stream_key(session, 256))
    started = time.monotonic()
    await writer.append(session, [Event(type="token", request_id="r", data={})])
    await _next_entry(sub)
    assert time.monotonic() - started < 1.0
    hub.unsubscribe(first)
    hub.unsubscribe(sub)


async def test_catch_up_then_live_without_gap_or_duplicate(hub: Hub) -> None:
    writer = _writer(hub)
    session = str(uuid.uuid4())
    ids = await writer.append(session, [Event(type="token", request_id="r", seq=i, data={}) for i in range(10)])
    got: list[tuple[int, int]] = []

    async def consume() -> None:
        async for batch in batches(hub, stream_key(session, 256), parse_id(ids[2])):
            got.extend(item.id for item in batch if isinstance(item, Entry))
            if len(got) >= 17:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    ids += await writer.append(session, [Event(type="token", request_id="r", seq=i, data={}) for i in range(10, 20)])
    await asyncio.wait_for(task, 5)
    assert got == [parse_id(i) for i in ids[3:]]


async def test_a_client_that_cannot_keep_up_is_cut_off(hub: Hub) -> None:
    writer = _writer(hub)
    session = str(uuid.uuid4())
    sub = await hub.subscribe(stream_key(session, 256))
    await writer.append(session, [Event(type="token", request_id="r", seq=i, data={}) for i in range(80)])
    deadline = time.monotonic() + 3
    while not sub.closed and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sub.closed
    assert sub.items == [OVERFLOW]
    hub.unsubscribe(sub)


async def test_idle_subscribers_get_heartbeats(hub: Hub) -> None:
    sub = await hub.subscribe(stream_key(str(uuid.uuid4()), 256))
    assert await asyncio.wait_for(sub.take(), 2) == [HEARTBEAT]
    hub.unsubscribe(sub)


def test_the_hand_packed_xread_is_the_command_redis_py_would_send() -> None:
    reader = _Reader(Redis(), b"rg:wake:x:0", 5000)
    for i in range(3):
        reader.watch(f"rg:{{b{i}}}:s{i}".encode(), f"{i}-0".encode())
    reader.unwatch(b"rg:{b1}:s1")
    reader.watch(b"rg:{b1}:s1", b"7-7")
    expected = Redis().connection_pool.make_connection().pack_command(
        "XREAD", "COUNT", 500, "BLOCK", 5000, "STREAMS",
        b"rg:wake:x:0", b"rg:{b0}:s0", b"rg:{b2}:s2", b"rg:{b1}:s1", b"0-0", b"0-0", b"2-0", b"7-7",
    )
    assert reader._command(b"0-0") == b"".join(expected)


async def test_readers_reconnect_after_their_connection_is_killed(hub: Hub) -> None:
    writer = _writer(hub)
    session = str(uuid.uuid4())
    sub = await hub.subscribe(stream_key(session, 256))
    await asyncio.sleep(0.2)
    killed = 0
    for client in await hub.redis.client_list():
        if client.get("name") == READER_NAME:
            killed += await hub.redis.client_kill_filter(_id=client["id"])
    assert killed >= 1  # the reader watching this key (an idle reader holds no connection)
    await writer.append(session, [Event(type="token", request_id="after-kill", data={})])
    entry = await _next_entry(sub)
    assert entry.request_id == b"after-kill"
    hub.unsubscribe(sub)
