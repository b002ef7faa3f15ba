"""The session stream protocol (DESIGN §2): keys, ids, events and the writer."""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from redis.asyncio import Redis

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
    "delivery.sent",
    "delivery.failed",
    "stream.reset",
    "done",
]


def bucket(name: str, buckets: int) -> int:
    """Stable bucket of a session (or run) id; the Redis Cluster hash tag of its keys."""
    return zlib.crc32(name.encode()) % buckets


def stream_key(session_id: str, buckets: int) -> str:
    return f"rg:{{b{bucket(session_id, buckets)}}}:{session_id}"


def cancel_key(session_id: str, request_id: str, buckets: int) -> str:
    return f"rg:{{b{bucket(session_id, buckets)}}}:cancel:{request_id}"


def start_key(session_id: str, buckets: int) -> str:
    return f"rg:{{b{bucket(session_id, buckets)}}}:start:{session_id}"


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


class StreamWriter:
    """Appends events to a session stream; TTL and MAXLEN apply from the first entry."""

    def __init__(self, redis: Redis, *, buckets: int, maxlen: int, ttl_seconds: int) -> None:
        self.redis = redis
        self.buckets = buckets
        self.maxlen = maxlen
        self.ttl = ttl_seconds

    def key(self, session_id: str) -> str:
        return stream_key(session_id, self.buckets)

    async def append(self, session_id: str, events: Iterable[Event]) -> list[str]:
        key = self.key(session_id)
        pipe = self.redis.pipeline(transaction=True)
        count = 0
        for event in events:
            pipe.xadd(key, event.fields(), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            count += 1
        pipe.expire(key, self.ttl)
        results = await pipe.execute()
        return [_text(r) for r in results[:count]]
