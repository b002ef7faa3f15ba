"""One XREAD loop per reader task fanning stream entries out to bounded per-client mailboxes.

A process (a gateway, a dispatcher) holds `hub_readers` blocking Redis connections however many clients
watch: every watched key is assigned to one reader, which re-issues a single multi-key
`XREAD` with the last id it delivered for each key. Subscribing to a new key wakes the
reader at once through a private wake stream. A client whose mailbox fills up is cut off
(it resumes with Last-Event-ID) instead of buffering without bound.

On a Redis Cluster a multi-key `XREAD` must stay within one slot, so there is one reader per
stream bucket (the `{b<n>}` hash tag every key of a session carries) that has watchers,
connected to the node that owns the bucket: connections are bounded by buckets, not clients.
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

from common.platform.batching import pipelined
from common.platform.keys import hub_bucket_wake_key, hub_wake_key
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


@dataclass(eq=False)
class _Reader:
    """One blocking connection and the keys it watches.

    The XREAD is packed by hand from per-key RESP fragments kept up to date as cursors move:
    the command names every watched key on every call, and redis-py's generic packing of
    hundreds of arguments per call was the largest cost of relaying an event.
    """

    connections: ReaderConnections
    wake_key: bytes
    block_ms: int
    # Keyed by the encoded stream key; `_key_frags` and `_id_frags` share the order of `cursors`.
    cursors: dict[bytes, bytes] = field(default_factory=dict)
    subs: dict[bytes, set[Subscription]] = field(default_factory=dict)
    has_keys: asyncio.Event = field(default_factory=asyncio.Event)
    wake_pending: bool = False
    _key_frags: dict[bytes, bytes] = field(default_factory=dict)
    _id_frags: dict[bytes, bytes] = field(default_factory=dict)
    _keys_packed: bytes | None = None
    # False while the reader cannot read (Redis unreachable, or restarting after a crash).
    up: bool = True

    def watch(self, key: bytes, cursor: bytes) -> None:
        self.cursors[key] = cursor
        self._key_frags[key] = _bulk(key)
        self._id_frags[key] = _bulk(cursor)
        self._keys_packed = None

    def unwatch(self, key: bytes) -> None:
        self.cursors.pop(key, None)
        self._key_frags.pop(key, None)
        self._id_frags.pop(key, None)
        self._keys_packed = None

    def _command(self, wake_cursor: bytes) -> bytes:
        if self._keys_packed is None:
            self._keys_packed = b"".join(self._key_frags.values())
        n = len(self._id_frags) + 1
        return b"".join(
            (
                b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$3\r\n500\r\n$5\r\nBLOCK\r\n%b$7\r\nSTREAMS\r\n"
                % (6 + 2 * n, _bulk(b"%d" % self.block_ms)),
                _bulk(self.wake_key),
                self._keys_packed,
                _bulk(wake_cursor),
                *self._id_frags.values(),
            )
        )

    async def run(self) -> None:
        wake_cursor = b"0-0"
        backoff = 0.1
        conn: AbstractConnection | None = None
        failed = False
        try:
            while True:
                if not self.cursors:
                    if conn is not None:  # an idle reader holds no connection
                        await conn.disconnect()
                        conn = None
                    self.has_keys.clear()
                    await self.has_keys.wait()
                # Keys subscribed from here on are not in this XREAD: they must wake it.
                self.wake_pending = False
                try:
                    if conn is None:
                        conn = await self.connections.open(self.wake_key, after_error=failed)
                    await conn.send_packed_command(self._command(wake_cursor), check_health=False)
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
                    else:
                        self._deliver(key, entries)
        finally:
            if conn is not None:
                # Cancelled mid-read: the connection may hold half a reply, so it is not reused.
                await conn.disconnect()

    def _deliver(self, key: bytes, raw: list[list[Any]]) -> None:
        subs = self.subs.get(key)
        if not subs:
            return
        for entry in to_entries(key, ((raw_id, _fields(flat)) for raw_id, flat in raw)):
            for sub in subs:
                sub.push(entry)
        last = raw[-1][0]
        self.cursors[key] = last
        self._id_frags[key] = _bulk(last)


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
    """Fan-out of stream entries to subscribers.

    `readers` fixed readers share the keys of a single server; `readers=None` (a Redis
    Cluster) starts one reader per bucket on its first subscriber.
    """

    def __init__(
        self,
        redis: StreamsRedis,
        connections: ReaderConnections,
        *,
        readers: int | None,
        block_ms: int,
        queue_size: int,
        heartbeat_seconds: float,
    ) -> None:
        self.redis = redis
        self.connections = connections
        self.block_ms = block_ms
        self.queue_size = queue_size
        self.heartbeat_seconds = heartbeat_seconds
        self._process = uuid.uuid4().hex[:12]
        self._fixed = [self._new_reader(hub_wake_key(self._process, i).encode()) for i in range(readers or 0)]
        self._by_bucket: dict[bytes, _Reader] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.draining = False

    def _new_reader(self, wake_key: bytes) -> _Reader:
        return _Reader(self.connections, wake_key, self.block_ms)

    @property
    def readers(self) -> list[_Reader]:
        return self._fixed or list(self._by_bucket.values())

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for r in self.readers for s in r.subs.values())

    def start(self) -> None:
        self._started = True
        for reader in self._fixed:
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
        if self._fixed:
            return self._fixed[hash(key) % len(self._fixed)]
        tag = _bucket_tag(key)
        reader = self._by_bucket.get(tag)
        if reader is None:
            # The wake stream carries the bucket's hash tag: it is read in the same XREAD.
            reader = self._by_bucket[tag] = self._new_reader(hub_bucket_wake_key(tag.decode(), self._process).encode())
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
                pipe = self.redis.pipeline(transaction=False)
                pipe.xadd(reader.wake_key, {"w": "1"}, maxlen=1)
                pipe.expire(reader.wake_key, 3600)
                try:
                    await pipe.execute()
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
