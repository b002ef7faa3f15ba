"""The gateway's stream hub against a real Valkey, and a real Valkey Cluster: fan-out, wake-up,
catch-up, slow clients and the connections it holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import SlotNotCoveredError

from common.platform.keys import bucket, stream_key
from common.streams.hub import (
    HEARTBEAT,
    OVERFLOW,
    ClusterConnections,
    Entry,
    Hub,
    ReaderConnections,
    ServerConnections,
    Subscription,
    _Reader,
    batches,
)
from common.streams.protocol import Event, connect, parse_id
from common.streams.writer import StreamWriter
from tests.conftest import Infra
from tests.support.cluster import EmbeddedValkeyCluster

READER_NAME = f"test-hub-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def _started_hub(
    request: pytest.FixtureRequest, infra: Infra, *, block_ms: int, client_name: str
) -> AsyncIterator[Hub]:
    readers: ReaderConnections
    if request.param == "cluster":
        cluster: EmbeddedValkeyCluster = request.getfixturevalue("valkey_cluster")
        redis = connect(cluster.url, cluster=True, max_connections=64)
        assert isinstance(redis, RedisCluster)
        readers = ClusterConnections(redis, client_name=client_name)
    else:
        redis = connect(infra.redis_url, cluster=False, max_connections=64)
        readers = ServerConnections(ConnectionPool.from_url(infra.redis_url, client_name=client_name))
    h = Hub(
        redis,
        readers,
        readers=None if request.param == "cluster" else 2,
        block_ms=block_ms,
        queue_size=50,
        heartbeat_seconds=0.2,
    )
    h.start()
    try:
        yield h
    finally:
        await h.stop()
        await redis.aclose()


@pytest.fixture(params=["server", "cluster"])
async def hub(request: pytest.FixtureRequest, infra: Infra) -> AsyncIterator[Hub]:
    """Two fixed readers on one server, or one reader per bucket on a three-node cluster."""
    async with _started_hub(request, infra, block_ms=5000, client_name=READER_NAME) as h:
        yield h


@pytest.fixture(params=["server", "cluster"])
async def unwoken_hub(request: pytest.FixtureRequest, infra: Infra) -> AsyncIterator[Hub]:
    """A hub whose XREAD blocks longer than any test may run: a reader sees a new key only when woken."""
    async with _started_hub(request, infra, block_ms=3_600_000, client_name=f"{READER_NAME}-unwoken") as h:
        yield h


def _reader_connections(hub: Hub) -> list[tuple[int, dict[str, str]]]:
    """(port, CLIENT LIST entry) of every reader connection, on every server the hub reads."""
    if isinstance(hub.redis, RedisCluster):
        ports = [int(node.port) for node in hub.redis.get_primaries()]
    else:
        ports = [int(hub.redis.connection_pool.connection_kwargs["port"])]
    found = []
    for port in ports:
        with SyncRedis(port=port) as server:
            found += [(port, c) for c in server.client_list() if c.get("name") == READER_NAME]
    return found


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
    connections = _reader_connections(hub)
    if isinstance(hub.redis, RedisCluster):
        # One reader per watched bucket, each on the primary that owns the bucket's slot.
        buckets = {bucket(s, 256) for s in sessions}
        assert len(connections) == len(hub.readers) == len(buckets) < len(sessions)
        for port, _ in connections:
            assert port in {int(n.port) for n in hub.redis.get_primaries()}
        owners = {int(hub.redis.get_node_from_key(stream_key(s, 256)).port) for s in sessions}
        assert {port for port, _ in connections} == owners
    else:
        assert len(connections) == len(hub.readers) == 2
    for sub in subs:
        hub.unsubscribe(sub)
    assert hub.subscriber_count == 0


async def test_a_new_subscription_wakes_the_reader_at_once(unwoken_hub: Hub) -> None:
    hub = unwoken_hub
    writer = _writer(hub)
    first = await hub.subscribe(stream_key(str(uuid.uuid4()), 256))
    await asyncio.sleep(0.3)  # the readers are now blocked in XREAD (an hour) without the next key
    session = str(uuid.uuid4())
    sub = await hub.subscribe(stream_key(session, 256))
    await writer.append(session, [Event(type="token", request_id="r", data={})])
    # Without the wake the entry would wait out the hour-long block (and the test its timeout).
    assert (await _next_entry(sub)).type == b"token"
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
    reader = _Reader(ServerConnections(ConnectionPool()), b"rg:wake:x:0", 5000)
    for i in range(3):
        reader.watch(f"rg:{{b{i}}}:s{i}".encode(), f"{i}-0".encode())
    reader.unwatch(b"rg:{b1}:s1")
    reader.watch(b"rg:{b1}:s1", b"7-7")
    expected = (
        Redis()
        .connection_pool.make_connection()
        .pack_command(
            "XREAD",
            "COUNT",
            500,
            "BLOCK",
            5000,
            "STREAMS",
            b"rg:wake:x:0",
            b"rg:{b0}:s0",
            b"rg:{b2}:s2",
            b"rg:{b1}:s1",
            b"0-0",
            b"0-0",
            b"2-0",
            b"7-7",
        )
    )
    assert reader._command(b"0-0") == b"".join(expected)


async def test_readers_reconnect_after_their_connection_is_killed(hub: Hub) -> None:
    writer = _writer(hub)
    session = str(uuid.uuid4())
    sub = await hub.subscribe(stream_key(session, 256))
    await asyncio.sleep(0.2)
    killed = 0
    for port, client in _reader_connections(hub):
        with SyncRedis(port=port) as server:
            killed += server.client_kill_filter(_id=client["id"])
    assert killed >= 1  # the reader watching this key (an idle reader holds no connection)
    await writer.append(session, [Event(type="token", request_id="after-kill", data={})])
    entry = await _next_entry(sub)
    assert entry.request_id == b"after-kill"
    hub.unsubscribe(sub)


async def test_entries_that_are_not_relaygate_events_are_skipped(hub: Hub) -> None:
    writer = _writer(hub)
    session = str(uuid.uuid4())
    key = stream_key(session, 256)
    (first,) = await writer.append(session, [Event(type="token", request_id="before", data={})])
    await hub.redis.xadd(key, {"written-by": "someone else"})
    live = await hub.subscribe(key)
    await hub.redis.xadd(key, {"type": "token"})  # half an event
    await writer.append(session, [Event(type="token", request_id="after", data={})])
    assert (await _next_entry(live)).request_id == b"after"
    hub.unsubscribe(live)

    caught_up = []
    async for batch in batches(hub, key, parse_id(first)):
        caught_up += [item.request_id for item in batch if isinstance(item, Entry)]
        if caught_up:
            break
    assert caught_up == [b"after"]


class _FlakyConnections:
    """Fails its first opens the way a cluster whose slot map is being rebuilt does."""

    def __init__(self, inner: ReaderConnections, failures: int) -> None:
        self.inner, self.failures, self.retried = inner, failures, 0

    async def open(self, key: bytes, *, after_error: bool) -> AbstractConnection:
        if self.failures:
            self.failures -= 1
            raise SlotNotCoveredError("slot not covered")
        self.retried += after_error
        return await self.inner.open(key, after_error=after_error)


async def test_a_reader_survives_failing_to_open_its_connection(infra: Infra) -> None:
    redis = connect(infra.redis_url, cluster=False, max_connections=8)
    flaky = _FlakyConnections(ServerConnections(ConnectionPool.from_url(infra.redis_url)), failures=2)
    hub = Hub(redis, flaky, readers=1, block_ms=5000, queue_size=50, heartbeat_seconds=5)
    hub.start()
    try:
        session = str(uuid.uuid4())
        sub = await hub.subscribe(stream_key(session, 256))
        await _writer(hub).append(session, [Event(type="token", request_id="eventually", data={})])
        assert (await _next_entry(sub)).request_id == b"eventually"
        assert flaky.failures == 0 and flaky.retried == 1
    finally:
        await hub.stop()
        await redis.aclose()
