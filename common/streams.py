"""The session stream protocol (DESIGN §2): keys, ids, events and the writer."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline

from common.keys import bucket, fence_key, intake_key, stream_key

EventType = Literal[
    "request.accepted",
    "run.started",
    "token",
    "message",
    "tool.call",
    "tool.result",
    "tool.approval_required",
    "run.retrying",
    "run.cancelled",
    "run.failed",
    "run.completed",
    "task.started",
    "task.completed",
    "task.failed",
    "task.retrying",
    "delivery.succeeded",
    "delivery.failed",
    "stream.reset",
    "done",
]


def parse_id(entry_id: str | bytes) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence) numbers, never as text."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def id_before(entry: tuple[int, int]) -> tuple[int, int]:
    """The largest id that sorts before `entry`: resuming after it includes `entry`."""
    return (entry[0], entry[1] - 1) if entry[1] else (entry[0] - 1, 2**64 - 1)


def format_id(parsed: tuple[int, int]) -> str:
    return f"{parsed[0]}-{parsed[1]}"


def valid_id(entry_id: str) -> bool:
    try:
        ms, seq = parse_id(entry_id)
    except ValueError:
        return False
    return ms >= 0 and seq >= 0


class Event(BaseModel):
    """One stream entry. `data` is free-form per type; everything else is fixed."""

    type: EventType
    request_id: str
    attempt: int = 1
    seq: int = 0
    ts: float = Field(default_factory=time.time)
    data: dict[str, Any] = Field(default_factory=dict)

    def fields(self) -> dict[str, str]:
        return {
            "type": self.type,
            "request_id": self.request_id,
            "attempt": str(self.attempt),
            "seq": str(self.seq),
            "ts": f"{self.ts:.6f}",
            "data": orjson.dumps(self.data).decode(),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> Event:
        f = {_text(k): _text(v) for k, v in fields.items()}
        return cls(
            type=f["type"],  # type: ignore[arg-type]
            request_id=f["request_id"],
            attempt=int(f["attempt"]),
            seq=int(f["seq"]),
            ts=float(f["ts"]),
            data=orjson.loads(f["data"]),
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_NAME = re.compile(rb"[0-9A-Za-z._:-]{1,100}\Z")
_NUMBER = re.compile(rb"\d{1,20}(?:\.\d{1,9})?\Z")


def event_json(fields: Mapping[bytes, bytes]) -> bytes:
    """Serialise a raw entry for clients without re-parsing its `data` payload.

    This runs once per entry in the gateway, so the common case is plain byte formatting,
    taken only when every field is a bare name or number that needs no JSON escaping.
    """
    kind, request_id, attempt, seq, ts = (fields[b"type"], fields[b"request_id"], fields[b"attempt"],
                                          fields[b"seq"], fields[b"ts"])
    if (_NAME.match(kind) and _NAME.match(request_id) and _NUMBER.match(attempt) and _NUMBER.match(seq)
            and _NUMBER.match(ts)):
        return b'{"type":"%s","request_id":"%s","attempt":%s,"seq":%s,"ts":%s,"data":%s}' % (
            kind, request_id, attempt, seq, ts, fields[b"data"])
    return orjson.dumps(
        {
            "type": fields[b"type"].decode(),
            "request_id": fields[b"request_id"].decode(),
            "attempt": int(fields[b"attempt"]),
            "seq": int(fields[b"seq"]),
            "ts": float(fields[b"ts"]),
            "data": orjson.Fragment(fields[b"data"]),
        }
    )


StreamsRedis = Redis | RedisCluster


class WaitingRedisCluster(RedisCluster):
    """A Redis Cluster client whose calls wait for a free connection instead of failing.

    redis-py's cluster client raises MaxConnectionsError as soon as one node's `max_connections` are
    busy, where a single server's BlockingConnectionPool waits: a burst (a worker flushing the streams
    of many buckets at once, a gateway opening many streams) would fail. Calls in flight are bounded by
    `max_connections` here, and each uses at most one connection per node, so no node's pool runs out.
    """

    def __init__(self, *args: Any, max_connections: int = 2**31, **kwargs: Any) -> None:
        super().__init__(*args, max_connections=max_connections, **kwargs)
        self.calls = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.calls:
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        super().pipeline(transaction, shard_hint)  # refuses what a cluster pipeline cannot do
        return _WaitingPipeline(self)  # type: ignore[abstract]  # typed abstract, complete at runtime


class _WaitingPipeline(ClusterPipeline):
    """A cluster pipeline that takes one of its client's call slots while it executes."""

    _client: WaitingRedisCluster

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self._client.calls:
            return await super().execute(raise_on_error, allow_redirections)


def connect(url: str, *, cluster: bool, max_connections: int, pool_timeout: float | None = 5,
            **options: Any) -> StreamsRedis:
    """The streams Redis: one server, or a Redis Cluster (every key of a session shares a slot).

    On one server the pool waits for a free connection instead of failing under a burst
    (`pool_timeout` None: as long as it takes, for workers whose writes must never be dropped); on a
    cluster calls wait for a free slot of `max_connections` (WaitingRedisCluster).
    """
    if cluster:
        cluster_client: RedisCluster = WaitingRedisCluster.from_url(url, max_connections=max_connections, **options)
        return cluster_client
    return Redis(connection_pool=BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **options))


# XADD every event, then refresh the TTL, as one atomic step (a script also runs on a cluster,
# where MULTI pipelines do not). KEYS[1] the stream, KEYS[2] (optional) its bucket's intake set;
# ARGV: maxlen, ttl, the intake member, then 6 values per event. With an intake set, the announced
# request is noted there in the same step: it is never on a stream without a way to find it again.
_APPEND = """
local ids = {}
for i = 4, #ARGV, 6 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'type', ARGV[i], 'request_id', ARGV[i + 1], 'attempt', ARGV[i + 2], 'seq', ARGV[i + 3],
    'ts', ARGV[i + 4], 'data', ARGV[i + 5])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if #KEYS > 1 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[3])
end
return ids
"""


# Many streams in one call: KEYS are the stream keys, then one fence key per stream (common.keys
# .fence_key; a batch that is not fenced passes its stream key there), then keys to read (cancel
# flags). ARGV: maxlen, ttl, number of streams, dedupe (1/0), then per stream its event count,
# whether it is fenced (1/0) and 6 values per event; a batch holds the events of one attempt.
# A fenced batch is refused whole when its request's fence names a newer attempt or `done`;
# otherwise it raises the fence to its attempt, or to `done` when it carries the `done` event.
# With dedupe (a retry after a lost reply), events of the stream's last request/attempt up to its
# last seq are skipped. Returns {last id per stream, value per read, refused (1/0) per stream}.
_APPEND_MANY = """
local n = tonumber(ARGV[3])
local dedupe = ARGV[4] == '1'
local ttl = ARGV[2]
local last, refused = {}, {}
local i = 5
for k = 1, n do
  local count = tonumber(ARGV[i])
  local fenced = ARGV[i + 1] == '1'
  i = i + 2
  local admit, fence = true, false
  if fenced and count > 0 then
    fence = redis.call('GET', KEYS[n + k])
    if fence == 'done' or (fence and tonumber(fence) > tonumber(ARGV[i + 2])) then admit = false end
  end
  local written = -1
  if admit and dedupe and count > 0 then
    local tail = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
    if #tail > 0 then
      local f = tail[1][2]
      if f[4] == ARGV[i + 1] and f[6] == ARGV[i + 2] then written = tonumber(f[8]) end
    end
  end
  local id, ends = false, false
  local attempt = ARGV[i + 2]
  for _ = 1, count do
    if admit and tonumber(ARGV[i + 3]) > written then
      id = redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[1], '*',
        'type', ARGV[i], 'request_id', ARGV[i + 1], 'attempt', ARGV[i + 2], 'seq', ARGV[i + 3],
        'ts', ARGV[i + 4], 'data', ARGV[i + 5])
    end
    if ARGV[i] == 'done' then ends = true end
    i = i + 6
  end
  if admit then
    redis.call('EXPIRE', KEYS[k], ttl)
    if fenced and count > 0 then
      if ends then redis.call('SET', KEYS[n + k], 'done', 'EX', ttl)
      elseif fence ~= attempt then redis.call('SET', KEYS[n + k], attempt, 'EX', ttl) end
    end
  end
  last[k] = id
  refused[k] = admit and 0 or 1
end
local values = {}
for j = 2 * n + 1, #KEYS do
  values[j - 2 * n] = redis.call('GET', KEYS[j])
end
return {last, values, refused}
"""


@dataclass(frozen=True)
class Appended:
    """What one `append_many` call did, in input order: the last entry id written per batch (None when
    nothing was), the value per read key, and whether each batch was refused by its request's fence."""

    ids: list[str | None]
    values: list[bytes | None]
    refused: list[bool]


def intake_member(session_id: str, request_id: str) -> str:
    return f"{session_id} {request_id}"


class StreamWriter:
    """Appends events to a session stream; TTL and MAXLEN apply from the first entry."""

    def __init__(self, redis: StreamsRedis, *, buckets: int, maxlen: int, ttl_seconds: int) -> None:
        self.redis = redis
        self.buckets = buckets
        self.maxlen = maxlen
        self.ttl = ttl_seconds
        self._append = redis.register_script(_APPEND)  # type: ignore[misc]  # typed for Redis; RedisCluster has it
        self._append_many = redis.register_script(_APPEND_MANY)  # type: ignore[misc]
        self._cluster = isinstance(redis, RedisCluster)

    def key(self, session_id: str) -> str:
        return stream_key(session_id, self.buckets)

    async def append(self, session_id: str, events: Iterable[Event]) -> list[str]:
        return await self.append_to(self.key(session_id), events)

    async def append_to(self, key: str, events: Iterable[Event]) -> list[str]:
        """Append to any stream key (a flow run's, for one), with the same TTL and trimming."""
        return await self._call_append([key], "", events)

    async def _call_append(self, keys: list[str], member: str, events: Iterable[Event]) -> list[str]:
        args: list[str | int] = [self.maxlen, self.ttl, member]
        for event in events:
            f = event.fields()
            args.extend((f["type"], f["request_id"], f["attempt"], f["seq"], f["ts"], f["data"]))
        ids = await self._append(keys=keys, args=args)
        return [_text(i) for i in ids]

    async def append_many(
        self, batches: list[tuple[str, list[Event]]], reads: list[tuple[str, str]] | None = None,
        *, dedupe: bool = False, fenced: bool = True,
    ) -> Appended:
        """Append the events of many sessions and GET keys of those sessions in one round trip.

        `batches` are (session id, events of one attempt); `reads` are (session id, key) so that on a
        Redis Cluster each key goes with its session's slot. On a cluster there is one call per bucket,
        all at once. `dedupe` makes a retry after a lost reply safe: what the first try wrote is not
        written again. `fenced` batches are refused once a newer attempt of their request wrote, or its
        `done` was written (common.keys.fence_key).
        """
        reads = reads or []
        if not self._cluster:
            return await self._call_many(batches, [key for _, key in reads], dedupe, fenced)
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for n, (session_id, _) in enumerate(batches):
            groups.setdefault(bucket(session_id, self.buckets), ([], []))[0].append(n)
        for n, (session_id, _) in enumerate(reads):
            groups.setdefault(bucket(session_id, self.buckets), ([], []))[1].append(n)
        results = await asyncio.gather(*(
            self._call_many([batches[i] for i in b], [reads[i][1] for i in r], dedupe, fenced)
            for b, r in groups.values()))
        merged = Appended([None] * len(batches), [None] * len(reads), [False] * len(batches))
        for (b, r), got in zip(groups.values(), results, strict=True):
            for i, entry_id, refused in zip(b, got.ids, got.refused, strict=True):
                merged.ids[i], merged.refused[i] = entry_id, refused
            for i, read in zip(r, got.values, strict=True):
                merged.values[i] = read
        return merged

    async def end(self, session_id: str, events: list[Event]) -> bool:
        """Write a request's closing events (ending with `done`) unless it already ended or a newer
        attempt took it over; False when refused. Safe to repeat: only the first ending is written."""
        return not (await self.append_many([(session_id, events)])).refused[0]

    async def _call_many(self, batches: list[tuple[str, list[Event]]], reads: list[str], dedupe: bool,
                         fenced: bool) -> Appended:
        args: list[str | int] = [self.maxlen, self.ttl, len(batches), int(dedupe)]
        fences = []
        for session_id, events in batches:
            args.extend((len(events), int(fenced)))
            for event in events:
                f = event.fields()
                args.extend((f["type"], f["request_id"], f["attempt"], f["seq"], f["ts"], f["data"]))
            request_id = events[0].request_id if events else ""
            fences.append(fence_key(session_id, request_id, self.buckets) if fenced and events
                          else self.key(session_id))
        keys = [self.key(session_id) for session_id, _ in batches] + fences + reads
        last, values, refused = await self._append_many(keys=keys, args=args)
        ids = [_text(i) if i else None for i in last] + [None] * (len(batches) - len(last))
        got = [v or None for v in values] + [None] * (len(reads) - len(values))
        return Appended(ids, got, [bool(r) for r in refused] + [False] * (len(batches) - len(refused)))

    async def announce(self, session_id: str, request_id: str, events: Iterable[Event]) -> list[str]:
        """Append a new request's first events and record it in the bucket's intake set, atomically."""
        return await self._call_append([self.key(session_id), intake_key(session_id, self.buckets)],
                                       intake_member(session_id, request_id), events)
