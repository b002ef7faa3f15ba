"""Reader tasks that read the streams clients watch and fan their entries out to bounded per-client
mailboxes.

A reader holds one blocking connection however many clients watch. While it watches few keys its
`XREAD` names them all, each with the last id it delivered. Past `notice_keys` that would cost every
wake the whole list, so it waits on a notice stream instead: every append also writes the keys it
touched there (common.platform.keys.notify_key), and the reader reads just the watched streams a
notice named, from their cursors: a wake then costs what moved. Subscribing to a new key wakes the
reader at once through its private wake stream. A client whose mailbox fills up is cut off (it
resumes with Last-Event-ID) instead of buffering without bound.

Notices only say where to look; the per-key cursors are what make delivery exact. A reader on
notices reads every key it watches (a sweep) when it starts on them, every `sweep_seconds`, and when
notices it has not seen may have been trimmed: they live NOTICE_WINDOW_MS, and a lost notice L after
the reader's cursor C was trimmed by an append A with A.ms > L.ms + window >= C.ms + window, which the
reader then reads (an `XREAD` without COUNT returns everything after C): newest.ms - C.ms > window.

On a single server one notice stream serves every stream and one reader per process reads it. On a
Redis Cluster a multi-key `XREAD` must stay within one slot, so there is a notice stream per stream
bucket (the `{b<n>}` hash tag every key of a session carries) and a reader per bucket that has
watchers, connected to the node that owns it: connections are bounded by buckets, not clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import ConnectionPool, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from common.platform import metrics
from common.platform.batching import pipelined
from common.platform.keys import NOTICE_WINDOW_MS, hub_wake_key, notify_key
from common.platform.outages import REDIS_ERRORS
from common.streams.protocol import StreamsRedis, event_json, format_id, parse_id

log = logging.getLogger(__name__)

ZERO = (0, 0)
HUB_READER_NAME = "relaygate-hub-reader"  # CLIENT SETNAME of reader connections


@dataclass(slots=True)
class Entry:
    """A stream entry, rendered once and shared by every subscriber."""

    id: tuple[int, int]
    raw_id: bytes
    type: bytes
    request_id: bytes
    attempt: int
    json: bytes


HEARTBEAT = object()
OVERFLOW = object()
DRAIN = object()  # the process is shutting down: the client should reconnect (to another replica)
QueueItem = Entry | object


@dataclass(eq=False, slots=True)
class Subscription:
    """A client's mailbox: the hub appends without waiting, the client takes everything ready."""

    key: str
    limit: int
    items: list[QueueItem] = field(default_factory=list)
    waiter: asyncio.Future[None] | None = None
    catchup_until: tuple[int, int] = ZERO
    closed: bool = False

    def push(self, item: QueueItem) -> None:
        if self.closed:
            return
        if len(self.items) >= self.limit:
            self.closed = True
            self.items = [OVERFLOW]
        else:
            self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def finish(self, item: QueueItem) -> None:
        """Deliver `item` after what is already queued, and nothing after it."""
        if self.closed:
            return
        self.items.append(item)
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[QueueItem]:
        """Everything pushed since the last call, waiting for at least one item."""
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items, self.items = self.items, []
        return items


def to_entry(raw_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    return Entry(
        id=parse_id(raw_id),
        raw_id=raw_id,
        type=fields[b"type"],
        request_id=fields[b"request_id"],
        attempt=int(fields[b"attempt"]),
        json=event_json(fields),
    )


def to_entries(key: bytes | str, pairs: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> list[Entry]:
    """Entries of `key`, skipping (and logging) any that something other than relaygate wrote."""
    entries = []
    for raw_id, fields in pairs:
        try:
            entries.append(to_entry(raw_id, fields))
        except (KeyError, ValueError):
            log.warning(
                "stream entry is not a relaygate event; skipped",
                extra={"key": key if isinstance(key, str) else key.decode(), "entry_id": raw_id.decode()},
            )
    return entries


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _xread(keys: list[bytes], ids: list[bytes], *, count: int | None = None, block_ms: int | None = None) -> bytes:
    """An `XREAD` packed by hand: redis-py's generic packing of many arguments costs more than the read."""
    options = b""
    if count is not None:
        options += b"$5\r\nCOUNT\r\n" + _bulk(b"%d" % count)
    if block_ms is not None:
        options += b"$5\r\nBLOCK\r\n" + _bulk(b"%d" % block_ms)
    head = b"*%d\r\n$5\r\nXREAD\r\n" % (2 + 2 * (count is not None) + 2 * (block_ms is not None) + 2 * len(keys))
    return b"".join((head, options, b"$7\r\nSTREAMS\r\n", *map(_bulk, keys), *map(_bulk, ids)))


def _ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


class ReaderConnections(Protocol):
    async def open(self, key: bytes, *, after_error: bool) -> AbstractConnection:
        """A new connection to the server that holds `key`, for one reader's exclusive use."""
        ...


@dataclass
class ServerConnections:
    """Readers of a single Redis server: connections made with the pool's settings."""

    pool: ConnectionPool

    async def open(self, key: bytes, *, after_error: bool) -> AbstractConnection:
        conn: AbstractConnection = self.pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()  # type: ignore[no-untyped-call]
        return conn


@dataclass
class ClusterConnections:
    """Readers of a Redis Cluster: a connection to the primary that owns the key's slot."""

    cluster: RedisCluster
    client_name: str

    async def open(self, key: bytes, *, after_error: bool) -> AbstractConnection:
        if after_error:
            # The slot may have moved (MOVED) or its node failed over: ask the cluster again.
            await self.cluster.nodes_manager.initialize()
        node = self.cluster.get_node_from_key(key.decode())
        if node is None:
            raise RedisError(f"no cluster node holds {key!r}")
        conn: AbstractConnection = node.connection_class(**{**node.connection_kwargs, "client_name": self.client_name})
        await conn.connect()  # type: ignore[no-untyped-call]
        return conn


PAGE = 500  # entries per stream per read; a stream with more is read again at once
FETCH_KEYS = 1000  # streams named per XREAD when reading many at once (a sweep)


@dataclass(eq=False)
class _Reader:
    """One blocking connection and the keys it watches.

    With few keys it names them all in its blocking `XREAD`; past `notice_keys` it blocks on the
    notice stream instead and reads the keys notices name (`noticing`), and back below half of it.
    """

    redis: StreamsRedis  # commands for the reader's wake stream
    connections: ReaderConnections
    notify_key: bytes
    wake_key: bytes
    block_ms: int
    notice_keys: int
    sweep_seconds: float
    cursors: dict[bytes, bytes] = field(default_factory=dict)  # the last id delivered, per watched key
    subs: dict[bytes, set[Subscription]] = field(default_factory=dict)
    dirty: set[bytes] = field(default_factory=set)  # watched keys that may hold entries after their cursor
    noticing: bool = False
    has_keys: asyncio.Event = field(default_factory=asyncio.Event)
    wake_pending: bool = False
    # False while the reader cannot read (Redis unreachable, or restarting after a crash).
    up: bool = True

    def watch(self, key: bytes, cursor: bytes) -> None:
        self.cursors[key] = cursor
        if self.noticing:
            self.dirty.add(key)  # a notice for it may have gone by before it was watched

    def unwatch(self, key: bytes) -> None:
        self.cursors.pop(key, None)
        self.dirty.discard(key)

    def sweep(self, reason: str) -> None:
        """Read every watched key from its cursor at the next read."""
        self.dirty = set(self.cursors)
        metrics.HUB_SWEEPS.labels(reason).inc()

    async def run(self) -> None:
        wake_cursor = notice_cursor = b"0-0"
        backoff = 0.1
        conn: AbstractConnection | None = None
        failed = False
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        try:
            while True:
                if not self.cursors:
                    if conn is not None:  # an idle reader holds no connection
                        await conn.disconnect()
                        conn = None
                    self.has_keys.clear()
                    await self.has_keys.wait()
                # Keys subscribed from here on are not read below: they must wake the XREAD.
                self.wake_pending = False
                try:
                    if conn is None:
                        conn = await self.connections.open(self.notify_key, after_error=failed)
                        self.noticing = False
                    watched = len(self.cursors)
                    if not self.noticing and watched > self.notice_keys:
                        notice_cursor = await self._newest_notice(conn)
                        self.noticing, next_sweep = True, loop.time() + self.sweep_seconds
                        self.sweep("start")  # what moved before
                    elif self.noticing and watched < self.notice_keys // 2:
                        self.noticing = False
                        self.dirty.clear()
                    replies = 0
                    if not self.noticing:
                        keys = [self.wake_key, *self.cursors]
                        command = _xread(
                            keys, [wake_cursor, *self.cursors.values()], count=PAGE, block_ms=self.block_ms
                        )
                    else:
                        if loop.time() >= next_sweep:
                            self.sweep("periodic")
                            next_sweep = loop.time() + self.sweep_seconds
                        # The dirty streams' reads go out in the same write as the wait for notices.
                        reads, replies = self._dirty_reads()
                        command = reads + _xread(
                            [self.wake_key, self.notify_key], [wake_cursor, notice_cursor], block_ms=self.block_ms
                        )
                    await conn.send_packed_command(command, check_health=False)
                    if replies and await self._deliver_reads(conn, replies):
                        await self.poke()  # a stream had more than a page: read on at once, not at the next notice
                    # BLOCK answers within block_ms; a silent server (a partition) must not hang the reader.
                    response = await conn.read_response(timeout=self.block_ms / 1000 + 5)
                    backoff, failed, self.up = 0.1, False, True
                except REDIS_ERRORS as exc:
                    log.warning("stream reader: redis unavailable, retrying", extra={"error": str(exc)})
                    self.up = False
                    if conn is not None:
                        await conn.disconnect()
                        conn = None
                    failed = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                for key, entries in _streams(response):
                    if key == self.wake_key:
                        wake_cursor = entries[-1][0]
                    elif key == self.notify_key:
                        notice_cursor = self._note(entries, notice_cursor)
                    else:
                        self._deliver(key, entries)
        finally:
            if conn is not None:
                # Cancelled mid-read: the connection may hold half a reply, so it is not reused.
                await conn.disconnect()

    async def _newest_notice(self, conn: AbstractConnection) -> bytes:
        await conn.send_command("XREVRANGE", self.notify_key, "+", "-", "COUNT", 1, check_health=False)
        newest = await conn.read_response(timeout=self.block_ms / 1000 + 5)
        return bytes(newest[0][0]) if newest else b"0-0"

    def _note(self, notices: list[list[Any]], cursor: bytes) -> bytes:
        """Mark the watched keys `notices` name; sweep when notices after `cursor` may have been trimmed."""
        newest: bytes = notices[-1][0]
        if _ms(newest) - _ms(cursor) > NOTICE_WINDOW_MS:
            self.sweep("trimmed")
            return newest
        cursors, dirty = self.cursors, self.dirty
        for _, flat in notices:
            for key in flat[1::2]:
                if key in cursors:
                    dirty.add(key)
        return newest

    def _dirty_reads(self) -> tuple[bytes, int]:
        """`XREAD`s of every dirty key from its cursor (at most FETCH_KEYS keys each), and how many."""
        keys = list(self.dirty)
        self.dirty = set()
        chunks = [keys[i : i + FETCH_KEYS] for i in range(0, len(keys), FETCH_KEYS)]
        return b"".join(_xread(chunk, [self.cursors[k] for k in chunk], count=PAGE) for chunk in chunks), len(chunks)

    async def _deliver_reads(self, conn: AbstractConnection, replies: int) -> bool:
        """Deliver the replies of `_dirty_reads`; True when a stream filled its page (it is dirty again)."""
        more = False
        for _ in range(replies):
            for key, entries in _streams(await conn.read_response(timeout=self.block_ms / 1000 + 5)):
                self._deliver(key, entries)
                if len(entries) >= PAGE and key in self.cursors:
                    self.dirty.add(key)
                    more = True
        return more

    async def poke(self) -> None:
        """Wake this reader's blocking `XREAD` through its wake stream."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1)
        pipe.expire(self.wake_key, 3600)
        await pipe.execute()

    def _deliver(self, key: bytes, raw: list[list[Any]]) -> None:
        subs = self.subs.get(key)
        if not subs:
            return
        for entry in to_entries(key, ((raw_id, _fields(flat)) for raw_id, flat in raw)):
            for sub in subs:
                sub.push(entry)
        self.cursors[key] = raw[-1][0]


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """[k1, v1, k2, v2, ...] as a dict; an odd trailing item is dropped (to_entries skips it)."""
    it = iter(flat)
    return dict(zip(it, it, strict=False))


def _streams(response: Any) -> Iterable[tuple[bytes, list[list[Any]]]]:
    """An XREAD reply as (key, entries) pairs: a list under RESP2, a map under RESP3."""
    if not response:
        return ()
    if isinstance(response, dict):
        return response.items()
    return response  # type: ignore[no-any-return]


def _bucket_tag(key: bytes) -> bytes:
    """The Redis Cluster hash tag of a stream key, `{b<n>}` in `rg:{b<n>}:<session>`."""
    start = key.index(b"{")
    return key[start : key.index(b"}", start) + 1]


class Hub:
    """Fan-out of stream entries to subscribers: one reader per notice stream with watchers, started
    on its first subscriber (one on a single server, one per bucket on a Redis Cluster)."""

    def __init__(
        self,
        redis: StreamsRedis,
        connections: ReaderConnections,
        *,
        block_ms: int,
        queue_size: int,
        heartbeat_seconds: float,
        notice_keys: int = 32,
        sweep_seconds: float = 15.0,
    ) -> None:
        self.redis = redis
        self.connections = connections
        self.block_ms = block_ms
        self.queue_size = queue_size
        self.heartbeat_seconds = heartbeat_seconds
        self.notice_keys = notice_keys
        self.sweep_seconds = sweep_seconds
        self._cluster = isinstance(redis, RedisCluster)
        self._process = uuid.uuid4().hex[:12]
        self._by_notice: dict[bytes, _Reader] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.draining = False

    @property
    def readers(self) -> list[_Reader]:
        return list(self._by_notice.values())

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for r in self.readers for s in r.subs.values())

    def start(self) -> None:
        self._started = True
        for reader in self.readers:
            self._run(reader)
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="hub-heartbeat"))

    def _run(self, reader: _Reader) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(reader), name=f"hub-reader-{reader.wake_key.decode()}"))

    async def _supervise(self, reader: _Reader) -> None:
        """Restart a reader that raised anything: it resumes from its cursors, so subscribers miss nothing."""
        backoff = 0.1
        while True:
            try:
                await reader.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                reader.up = False
                log.exception("stream reader crashed; restarting from its cursors")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    @property
    def readers_down(self) -> int:
        """Readers that cannot read right now (reported by /health)."""
        return sum(not r.up for r in self.readers)

    def drain(self) -> None:
        """End every subscription with DRAIN (and any later one at once): clients resume elsewhere."""
        self.draining = True
        for reader in self.readers:
            for subs in reader.subs.values():
                for sub in subs:
                    sub.finish(DRAIN)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for reader in self.readers:
            with contextlib.suppress(RedisError):
                await self.redis.delete(reader.wake_key)

    def _reader(self, key: bytes) -> _Reader:
        tag = _bucket_tag(key).decode() if self._cluster else None
        notify = notify_key(tag).encode()
        reader = self._by_notice.get(notify)
        if reader is None:
            wake = hub_wake_key(tag, self._process).encode()
            reader = self._by_notice[notify] = _Reader(
                self.redis, self.connections, notify, wake, self.block_ms, self.notice_keys, self.sweep_seconds
            )
            if self._started:
                self._run(reader)
        return reader

    async def last_id(self, key: str) -> bytes:
        newest = await pipelined(self.redis).command("XREVRANGE", key, "+", "-", "COUNT", 1)
        return newest[0][0] if newest else b"0-0"

    async def subscribe(self, key: str) -> Subscription:
        """Watch `key` from its current end; `catchup_until` is where live delivery starts."""
        end = await self.last_id(key)
        bkey = key.encode()
        reader = self._reader(bkey)
        sub = Subscription(key, self.queue_size)
        subs = reader.subs.setdefault(bkey, set())
        subs.add(sub)
        if bkey not in reader.cursors:
            reader.watch(bkey, end)
            reader.has_keys.set()
            if not reader.wake_pending:
                reader.wake_pending = True
                try:
                    await reader.poke()
                except RedisError:
                    reader.wake_pending = False
                    self.unsubscribe(sub)
                    raise
        sub.catchup_until = parse_id(reader.cursors[bkey])
        if self.draining:
            sub.finish(DRAIN)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        bkey = sub.key.encode()
        reader = self._reader(bkey)
        subs = reader.subs.get(bkey)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del reader.subs[bkey]
            reader.unwatch(bkey)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            for reader in self.readers:
                for subs in list(reader.subs.values()):
                    for sub in subs:
                        if not sub.items:
                            sub.push(HEARTBEAT)


Batch = list[Entry | object]


async def batches(hub: Hub, key: str, after: tuple[int, int]) -> AsyncIterator[Batch]:
    """Every entry after `after`, in order, then live ones, in batches of what is ready.

    HEARTBEAT, OVERFLOW and DRAIN markers pass through; OVERFLOW and DRAIN end the iteration. Batching lets
    a busy stream go out in one write instead of one per entry.
    """
    sub = await hub.subscribe(key)
    try:
        last = after
        while last < sub.catchup_until:
            page = await pipelined(hub.redis).command(
                "XRANGE", key, b"(" + format_id(last).encode(), format_id(sub.catchup_until).encode(), "COUNT", 500
            )
            if not page:
                break
            last = parse_id(page[-1][0])
            caught_up: Batch = [*to_entries(key, page)]
            if caught_up:
                yield caught_up
        while True:
            batch: Batch = []
            for item in await sub.take():
                if isinstance(item, Entry):
                    if item.id <= last:
                        continue
                    last = item.id
                batch.append(item)
            if batch:
                yield batch
                if batch[-1] is OVERFLOW or batch[-1] is DRAIN:
                    return
    finally:
        hub.unsubscribe(sub)
