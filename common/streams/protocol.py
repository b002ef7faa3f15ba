"""The session stream protocol (DESIGN §2): keys, ids, events and the writer."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline

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
    kind, request_id, attempt, seq, ts = (
        fields[b"type"],
        fields[b"request_id"],
        fields[b"attempt"],
        fields[b"seq"],
        fields[b"ts"],
    )
    if (
        _NAME.match(kind)
        and _NAME.match(request_id)
        and _NUMBER.match(attempt)
        and _NUMBER.match(seq)
        and _NUMBER.match(ts)
    ):
        return b'{"type":"%s","request_id":"%s","attempt":%s,"seq":%s,"ts":%s,"data":%s}' % (
            kind,
            request_id,
            attempt,
            seq,
            ts,
            fields[b"data"],
        )
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


def connect(
    url: str, *, cluster: bool, max_connections: int, pool_timeout: float | None = 5, **options: Any
) -> StreamsRedis:
    """The streams Redis: one server, or a Redis Cluster (every key of a session shares a slot).

    On one server the pool waits for a free connection instead of failing under a burst
    (`pool_timeout` None: as long as it takes, for workers whose writes must never be dropped); on a
    cluster calls wait for a free slot of `max_connections` (WaitingRedisCluster).
    """
    if cluster:
        cluster_client: RedisCluster = WaitingRedisCluster.from_url(url, max_connections=max_connections, **options)
        return cluster_client
    return Redis(
        connection_pool=BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout, **options
        )
    )


def intake_member(session_id: str, request_id: str) -> str:
    return f"{session_id} {request_id}"
