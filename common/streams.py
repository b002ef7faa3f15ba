"""The session stream protocol (DESIGN §2): keys, ids, events and the writer."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from common.keys import bucket, intake_key, stream_key

EventType = Literal[
    "request.accepted",
    "run.started",
    "token",
    "message",
    "tool.call",
    "tool.result",
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


def ended(request_id: str, attempt: int, status: Literal["failed", "cancelled"], data: dict[str, Any]) -> list[Event]:
    """The last two events of a request ended outside its worker: `run.<status>`, then `done`."""
    return [
        Event(type=f"run.{status}", request_id=request_id, attempt=attempt, data=data),  # type: ignore[arg-type]
        Event(type="done", request_id=request_id, attempt=attempt, data={"request_id": request_id, "status": status}),
    ]


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


def connect(url: str, *, cluster: bool, max_connections: int, pool_timeout: float | None = 5,
            **options: Any) -> StreamsRedis:
    """The streams Redis: one server, or a Redis Cluster (every key of a session shares a slot).

    On one server the pool waits for a free connection instead of failing under a burst
    (`pool_timeout` None: as long as it takes, for workers whose writes must never be dropped).
    """
    if cluster:
        cluster_client: RedisCluster = RedisCluster.from_url(url, max_connections=max_connections, **options)
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


# Many streams in one call: KEYS are the stream keys, then keys to read (cancel flags).
# ARGV: maxlen, ttl, number of streams, dedupe (1/0), then per stream its event count and 6
# values per event. With dedupe (a retry after a lost reply), events of the stream's last
# request/attempt up to its last seq are skipped. Returns {last id per stream, value per read}.
_APPEND_MANY = """
local n = tonumber(ARGV[3])
local dedupe = ARGV[4] == '1'
local last = {}
local i = 5
for k = 1, n do
  local count = tonumber(ARGV[i])
  i = i + 1
  local written = -1
  if dedupe and count > 0 then
    local tail = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
    if #tail > 0 then
      local f = tail[1][2]
      if f[4] == ARGV[i + 1] and f[6] == ARGV[i + 2] then written = tonumber(f[8]) end
    end
  end
  local id = false
  for _ = 1, count do
    if tonumber(ARGV[i + 3]) > written then
      id = redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[1], '*',
        'type', ARGV[i], 'request_id', ARGV[i + 1], 'attempt', ARGV[i + 2], 'seq', ARGV[i + 3],
        'ts', ARGV[i + 4], 'data', ARGV[i + 5])
    end
    i = i + 6
  end
  redis.call('EXPIRE', KEYS[k], ARGV[2])
  last[k] = id
end
local values = {}
for j = n + 1, #KEYS do
  values[j - n] = redis.call('GET', KEYS[j])
end
return {last, values}
"""


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
        *, dedupe: bool = False,
    ) -> tuple[list[str | None], list[bytes | None]]:
        """Append the events of many sessions and GET keys of those sessions in one round trip.

        `batches` are (session id, events); `reads` are (session id, key) so that on a Redis Cluster
        each key goes with its session's slot. Returns the last entry id per batch and the value
        per read, in input order. On a cluster there is one call per bucket, all at once.
        `dedupe` makes a retry after a lost reply safe: what the first try wrote is not written again.
        """
        reads = reads or []
        if not self._cluster:
            ids, values = await self._call_many(batches, [key for _, key in reads], dedupe)
            return ids, values
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for n, (session_id, _) in enumerate(batches):
            groups.setdefault(bucket(session_id, self.buckets), ([], []))[0].append(n)
        for n, (session_id, _) in enumerate(reads):
            groups.setdefault(bucket(session_id, self.buckets), ([], []))[1].append(n)
        results = await asyncio.gather(*(
            self._call_many([batches[i] for i in b], [reads[i][1] for i in r], dedupe) for b, r in groups.values()))
        all_ids: list[str | None] = [None] * len(batches)
        all_values: list[bytes | None] = [None] * len(reads)
        for (b, r), (ids, values) in zip(groups.values(), results, strict=True):
            for i, value in zip(b, ids, strict=True):
                all_ids[i] = value
            for i, got in zip(r, values, strict=True):
                all_values[i] = got
        return all_ids, all_values

    async def _call_many(self, batches: list[tuple[str, list[Event]]], reads: list[str], dedupe: bool
                         ) -> tuple[list[str | None], list[bytes | None]]:
        args: list[str | int] = [self.maxlen, self.ttl, len(batches), int(dedupe)]
        for _, events in batches:
            args.append(len(events))
            for event in events:
                f = event.fields()
                args.extend((f["type"], f["request_id"], f["attempt"], f["seq"], f["ts"], f["data"]))
        keys = [self.key(session_id) for session_id, _ in batches] + reads
        last, values = await self._append_many(keys=keys, args=args)
        ids = [_text(i) if i else None for i in last] + [None] * (len(batches) - len(last))
        got = [v or None for v in values] + [None] * (len(reads) - len(values))
        return ids, got
    async def announce(self, session_id: str, request_id: str, events: Iterable[Event]) -> list[str]:
        """Append a new request's first events and record it in the bucket's intake set, atomically."""
        return await self._call_append([self.key(session_id), intake_key(session_id, self.buckets)],
                                       intake_member(session_id, request_id), events)
