"""The gateway's stream hub against a real Valkey, and a real Valkey Cluster: fan-out, wake-up,
catch-up, slow clients and the connections it holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from redis import Redis as SyncRedis
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import SlotNotCoveredError

from common.platform.keys import NOTICE_WINDOW_MS, bucket, stream_key
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
    _xread,
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
    server, _, mode = request.param.partition("-")
    if server == "cluster":
        cluster: EmbeddedValkeyCluster = request.getfixturevalue("valkey_cluster")
        redis = connect(cluster.url, cluster=True, max_connections=64)
        assert isinstance(redis, RedisCluster)
        readers = ClusterConnections(redis, client_name=client_name)
    else:
        redis = connect(infra.redis_url, cluster=False, max_connections=64)
        readers = ServerConnections(ConnectionPool.from_url(infra.redis_url, client_name=client_name))
    # "notices": every reader reads notices however few keys it watches.
    h = Hub(redis, readers, block_ms=block_ms, queue_size=50, heartbeat_seconds=0.2, notice_keys=0 if mode else 32)
    h.start()
    try:
        yield h
    finally:
        await h.stop()
        await redis.aclose()


MODES = ["server", "cluster", "server-notices", "cluster-notices"]


@pytest.fixture(params=MODES)
async def hub(request: pytest.FixtureRequest, infra: Infra) -> AsyncIterator[Hub]:
    """One reader on one server, or one reader per bucket on a three-node cluster; readers naming
    their keys, or reading notices."""
    async with _started_hub(request, infra, block_ms=5000, client_name=READER_NAME) as h:
        yield h


@pytest.fixture(params=MODES)
async def unwoken_hub(request: pytest.FixtureRequest, infra: Infra) -> AsyncIterator[Hub]:
    """A hub whose XREAD blocks longer than any test may run: a reader sees a new key only when woken."""
    async with _started_hub(request, infra, block_ms=3_600_000, client_name=f"{READER_NAME}-unwoken") as h:
        yield h


@asynccontextmanager
async def _server_hub(infra: Infra, connections: ReaderConnections | None = None, **options: Any) -> AsyncIterator[Hub]:
    """A started hub on the shared single server (options as `Hub` takes them)."""
    redis = connect(infra.redis_url, cluster=False, max_connections=8)
    readers = connections or ServerConnections(ConnectionPool.from_url(infra.redis_url))
    hub = Hub(redis, readers, **{"block_ms": 5000, "queue_size": 50, "heartbeat_seconds": 5, **options})
    hub.start()
    try:
        yield hub
    finally:
        await hub.stop()
        await redis.aclose()


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
        assert len(connections) == len(hub.readers) == 1
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
    pack = Redis().connection_pool.make_connection().pack_command
    keys, ids = [b"rg:{b0}:s0", b"rg:{b2}:s2"], [b"0-0", b"7-7"]
    assert _xread(keys, ids, count=500) == b"".join(pack("XREAD", "COUNT", 500, "STREAMS", *keys, *ids))
    assert _xread(keys, ids, block_ms=5000) == b"".join(pack("XREAD", "BLOCK", 5000, "STREAMS", *keys, *ids))
    assert _xread(keys[:1], ids[:1]) == b"".join(pack("XREAD", "STREAMS", keys[0], ids[0]))


class _Recording:
    """Reader connections that keep every command their readers send."""

    def __init__(self, inner: ReaderConnections) -> None:
        self.inner, self.sent = inner, list[bytes]()

    async def open(self, key: bytes, *, after_error: bool) -> AbstractConnection:
        conn = await self.inner.open(key, after_error=after_error)
        send = conn.send_packed_command

        async def recorded(command: bytes | list[bytes], check_health: bool = True) -> None:
            self.sent.append(command if isinstance(command, bytes) else b"".join(command))
            await send(command, check_health=check_health)

        conn.send_packed_command = recorded  # type: ignore[method-assign]
        return conn


async def test_a_wake_reads_only_the_streams_that_moved(infra: Infra) -> None:
    """What a reader sends per append does not grow with the keys it watches."""
    recording = _Recording(ServerConnections(ConnectionPool.from_url(infra.redis_url)))
    async with _server_hub(infra, recording) as hub:
        sessions = [str(uuid.uuid4()) for _ in range(200)]
        subs = [await hub.subscribe(stream_key(s, 256)) for s in sessions]
        # Once this arrives the subscriptions' own reads (and the first sweep) are behind the reader.
        await _writer(hub).append(sessions[50], [Event(type="token", request_id="warm", data={})])
        assert (await _next_entry(subs[50])).request_id == b"warm"
        recording.sent.clear()
        for n in (0, 99, 199):
            await _writer(hub).append(sessions[n], [Event(type="token", request_id=str(n), data={})])
            assert (await _next_entry(subs[n])).request_id == str(n).encode()
        watched = [stream_key(s, 256).encode() for s in sessions]
        named = [sum(key in command for key in watched) for command in recording.sent]
        assert max(named) == 1 and sum(named) == 3  # each stream read once, alone
        for sub in subs:
            hub.unsubscribe(sub)


async def test_a_reader_names_few_keys_and_reads_notices_for_many(infra: Infra) -> None:
    recording = _Recording(ServerConnections(ConnectionPool.from_url(infra.redis_url)))
    sessions = [str(uuid.uuid4()) for _ in range(10)]
    subs: list[Subscription] = []

    async def relayed(hub: Hub, expect_notices: bool) -> None:
        writer = _writer(hub)
        for n, sub in enumerate(subs):
            await writer.append(sessions[n], [Event(type="token", request_id=sessions[n], data={})])
            assert (await _next_entry(sub)).request_id == sessions[n].encode()
        (reader,) = hub.readers
        assert reader.noticing is expect_notices
        # What the reader sent last: its wait on the notice stream (with the reads), or naming every key.
        assert (b"rg:notify" in recording.sent[-1]) is expect_notices

    async with _server_hub(infra, recording, notice_keys=4) as hub:
        subs += [await hub.subscribe(stream_key(s, 256)) for s in sessions[:3]]
        await relayed(hub, expect_notices=False)
        subs += [await hub.subscribe(stream_key(s, 256)) for s in sessions[3:]]
        await relayed(hub, expect_notices=True)
        for sub in subs[1:]:
            hub.unsubscribe(sub)
        del subs[1:]
        await relayed(hub, expect_notices=False)


async def test_a_stream_with_more_than_a_page_is_read_on_at_once(infra: Infra) -> None:
    """One notice for 1,200 entries: the reader reads 500 at a time and wakes itself for the rest,
    where waiting for the next notice would wait out its hour-long block."""
    async with _server_hub(infra, block_ms=3_600_000, queue_size=5000, notice_keys=0) as hub:
        session = str(uuid.uuid4())
        sub = await hub.subscribe(stream_key(session, 256))
        await asyncio.sleep(0.2)
        await _writer(hub).append(session, [Event(type="token", request_id="r", seq=n, data={}) for n in range(1200)])
        got: list[Entry] = []
        while len(got) < 1200:
            got += [item for item in await asyncio.wait_for(sub.take(), 3) if isinstance(item, Entry)]
        assert [orjson.loads(e.json)["seq"] for e in got] == list(range(1200))
        hub.unsubscribe(sub)


async def test_a_sweep_finds_what_no_notice_named(infra: Infra) -> None:
    """Entries written without a notice (not by relaygate's scripts) still arrive, at the next sweep."""
    async with _server_hub(infra, block_ms=100, notice_keys=0, sweep_seconds=0.3) as hub:
        key = stream_key(str(uuid.uuid4()), 256)
        sub = await hub.subscribe(key)
        await asyncio.sleep(0.1)
        await hub.redis.xadd(key, Event(type="token", request_id="unannounced", data={}).fields())
        assert (await _next_entry(sub)).request_id == b"unannounced"
        hub.unsubscribe(sub)


def test_notices_that_may_have_been_trimmed_make_the_reader_read_every_key() -> None:
    reader = _Reader(Redis(), ServerConnections(ConnectionPool()), b"rg:notify", b"rg:wake:x", 5000, 0, 15)
    reader.noticing = True
    for key in (b"rg:{b0}:a", b"rg:{b1}:b", b"rg:{b2}:c"):
        reader.watch(key, b"0-0")
    reader.dirty.clear()
    start = 1_000_000
    cursor = reader._note([[b"%d-0" % (start + 5), [b"k", b"rg:{b1}:b", b"k", b"rg:{b9}:unwatched"]]], b"%d-0" % start)
    assert cursor == b"%d-0" % (start + 5) and reader.dirty == {b"rg:{b1}:b"}
    reader.dirty.clear()
    # A notice newer than the cursor by more than the window: ones in between may be gone.
    late = b"%d-0" % (start + 5 + NOTICE_WINDOW_MS + 1)
    trimmed = {"reason": "trimmed"}
    before = REGISTRY.get_sample_value("relaygate_hub_sweeps_total", trimmed) or 0
    assert reader._note([[late, [b"k", b"rg:{b1}:b"]]], cursor) == late
    assert reader.dirty == set(reader.cursors)
    assert REGISTRY.get_sample_value("relaygate_hub_sweeps_total", trimmed) == before + 1


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
    flaky = _FlakyConnections(ServerConnections(ConnectionPool.from_url(infra.redis_url)), failures=2)
    async with _server_hub(infra, flaky) as hub:
        session = str(uuid.uuid4())
        sub = await hub.subscribe(stream_key(session, 256))
        await _writer(hub).append(session, [Event(type="token", request_id="eventually", data={})])
        assert (await _next_entry(sub)).request_id == b"eventually"
        assert flaky.failures == 0 and flaky.retried == 1
