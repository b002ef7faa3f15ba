"""One XREAD loop per reader task fanning stream entries out to bounded per-client queues.

A gateway process holds `hub_readers` blocking Redis connections however many clients
watch: every watched key is assigned to one reader, which re-issues a single multi-key
`XREAD` with the last id it delivered for each key. Subscribing to a new key wakes the
reader at once through a private wake stream. A client whose queue fills up is cut off
(it resumes with Last-Event-ID) instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.streams import event_json, parse_id

log = logging.getLogger(__name__)

ZERO = (0, 0)


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
QueueItem = Entry | object


@dataclass(eq=False)
class Subscription:
    key: str
    queue: asyncio.Queue[QueueItem]
    catchup_until: tuple[int, int] = ZERO
    closed: bool = False

    def push(self, item: QueueItem) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.closed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(OVERFLOW)


def to_entry(raw_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    return Entry(
        id=parse_id(raw_id),
        raw_id=raw_id,
        type=fields[b"type"],
        request_id=fields[b"request_id"],
        attempt=int(fields[b"attempt"]),
        json=event_json(fields),
    )


@dataclass(eq=False)
class _Reader:
    redis: Redis
    wake_key: bytes
    block_ms: int
    # Keyed by the encoded stream key: the XREAD arguments are re-sent on every call.
    cursors: dict[bytes, bytes] = field(default_factory=dict)
    subs: dict[bytes, set[Subscription]] = field(default_factory=dict)
    has_keys: asyncio.Event = field(default_factory=asyncio.Event)
    wake_pending: bool = False

    async def run(self) -> None:
        wake_cursor = b"0-0"
        backoff = 0.1
        while True:
            if not self.cursors:
                self.has_keys.clear()
                await self.has_keys.wait()
            streams: dict[bytes, bytes] = {self.wake_key: wake_cursor}
            streams.update(self.cursors)
            # Keys subscribed from here on are not in this XREAD: they must wake it.
            self.wake_pending = False
            try:
                response = await self.redis.xread(streams, count=500, block=self.block_ms)  # type: ignore[arg-type]
                backoff = 0.1
            except RedisError as exc:
                log.warning("stream reader: redis unavailable, retrying", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for key, entries in response or ():
                if key == self.wake_key:
                    wake_cursor = entries[-1][0]
                    continue
                self._deliver(key, entries)

    def _deliver(self, key: bytes, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        subs = self.subs.get(key)
        if not subs:
            return
        for raw_id, fields in entries:
            entry = to_entry(raw_id, fields)
            for sub in subs:
                sub.push(entry)
        self.cursors[key] = entries[-1][0]


class Hub:
    def __init__(self, redis: Redis, reader_clients: list[Redis], *, block_ms: int, queue_size: int,
                 heartbeat_seconds: float) -> None:
        self.redis = redis
        self.queue_size = queue_size
        self.heartbeat_seconds = heartbeat_seconds
        process = uuid.uuid4().hex[:12]
        self.readers = [
            _Reader(client, f"rg:wake:{process}:{i}".encode(), block_ms) for i, client in enumerate(reader_clients)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for r in self.readers for s in r.subs.values())

    def start(self) -> None:
        self._tasks = [asyncio.create_task(r.run(), name=f"hub-reader-{i}") for i, r in enumerate(self.readers)]
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="hub-heartbeat"))

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
        return self.readers[hash(key) % len(self.readers)]

    async def last_id(self, key: str) -> bytes:
        newest = await self.redis.xrevrange(key, count=1)
        return newest[0][0] if newest else b"0-0"

    async def subscribe(self, key: str) -> Subscription:
        """Watch `key` from its current end; `catchup_until` is where live delivery starts."""
        end = await self.last_id(key)
        bkey = key.encode()
        reader = self._reader(bkey)
        sub = Subscription(key, asyncio.Queue(self.queue_size))
        subs = reader.subs.setdefault(bkey, set())
        subs.add(sub)
        if bkey not in reader.cursors:
            reader.cursors[bkey] = end
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
            reader.cursors.pop(bkey, None)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            for reader in self.readers:
                for subs in list(reader.subs.values()):
                    for sub in subs:
                        if sub.queue.empty():
                            sub.push(HEARTBEAT)
