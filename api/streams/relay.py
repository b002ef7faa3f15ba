"""Turns a subscription into SSE frames: catch-up from Redis, then live, with no gap or duplicate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from common.platform.metrics import RELAY
from common.streams.hub import DRAIN, HEARTBEAT, OVERFLOW, Entry, Hub, batches
from common.streams.protocol import StreamsRedis, format_id, id_before, parse_id

Snapshot = Callable[[], Awaitable[tuple[list[dict[str, Any]], str | None]]]

KEEPALIVE = b": keepalive\n\n"
# The gateway is shutting down: reconnect at once (with Last-Event-ID; the frame has no id of its own).
RECONNECT = b'retry: 0\nevent: reconnect\ndata: {"type":"reconnect","reason":"gateway shutting down"}\n\n'
RECONNECT_COMPAT = b'data: {"type":"reconnect","reason":"gateway shutting down"}\n\n'
DONE_COMPAT = b"data: [DONE]\n\n"
_TERMINAL = (b"run.completed", b"run.failed", b"run.cancelled")


def _observe(batch: list[Any]) -> None:
    """Count a batch's events and sample its newest one's lag (one clock read per batch)."""
    entries = [i for i in batch if isinstance(i, Entry)]
    if not entries:
        return
    RELAY.relayed(len(entries))
    lag = time.time() - int(entries[-1].raw_id.split(b"-", 1)[0]) / 1000
    if 0 <= lag < 60:
        RELAY.lag(lag)


def sse_frame(entry: Entry) -> bytes:
    return b"id: " + entry.raw_id + b"\nevent: " + entry.type + b"\ndata: " + entry.json + b"\n\n"


def compat_frame(entry: Entry) -> bytes:
    return b"data: " + entry.json + b"\n\n"


@dataclass
class Reset:
    reason: str
    resume_from: tuple[int, int]


async def check_resume(redis: StreamsRedis, key: str, after: tuple[int, int]) -> Reset | None:
    """A resume point older than what the stream still holds needs a `stream.reset`."""
    try:
        info = await redis.xinfo_stream(key)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None if after == (0, 0) else Reset("expired", (0, 0))
        raise
    trimmed = int(info.get("entries-added") or 0) > int(info.get("length") or 0)
    first = info.get("first-entry")
    oldest_held = parse_id(first[0]) if first else parse_id(info.get("last-generated-id") or b"0-0")
    deleted = parse_id(info.get("max-deleted-entry-id") or b"0-0")
    if (trimmed and after < oldest_held) or after < deleted:
        return Reset("trimmed", max(deleted, id_before(oldest_held)) if first else oldest_held)
    return None


async def reset_frame(reset: Reset, snapshot: Snapshot) -> tuple[bytes, tuple[int, int]]:
    """The reply so far from Postgres, and the id to continue from."""
    requests, checkpoint = await snapshot()
    resume = reset.resume_from
    if checkpoint and parse_id(checkpoint) >= resume:
        resume = parse_id(checkpoint)
    body = orjson.dumps(
        {
            "type": "stream.reset",
            "request_id": "",
            "attempt": 0,
            "seq": 0,
            "ts": 0,
            "data": {"reason": reset.reason, "requests": requests},
        },
        default=str,
    )
    frame = b"id: " + format_id(resume).encode() + b"\nevent: stream.reset\ndata: " + body + b"\n\n"
    return frame, resume


async def session_frames(hub: Hub, key: str, after: tuple[int, int], snapshot: Snapshot) -> AsyncIterator[bytes]:
    reset = await check_resume(hub.redis, key, after)
    if reset is not None:
        frame, after = await reset_frame(reset, snapshot)
        yield frame
    async for batch in batches(hub, key, after):
        _observe(batch)
        chunk = b"".join(
            sse_frame(i) if isinstance(i, Entry) else RECONNECT if i is DRAIN else KEEPALIVE
            for i in batch
            if i is not OVERFLOW
        )
        if chunk:
            yield chunk


async def request_frames(
    hub: Hub, key: str, after: tuple[int, int], request_id: str, *, compat: bool = False
) -> AsyncIterator[bytes]:
    """One request's events from `after` on, ending after its `done` (or `data: [DONE]`)."""
    wanted = request_id.encode()
    render = compat_frame if compat else sse_frame
    async for batch in batches(hub, key, after):
        _observe(batch)
        frames: list[bytes] = []
        for item in batch:
            if item is HEARTBEAT:
                frames.append(KEEPALIVE)
            elif item is DRAIN:
                frames.append(RECONNECT_COMPAT if compat else RECONNECT)
                yield b"".join(frames)
                return
            elif isinstance(item, Entry) and item.request_id == wanted:
                if item.type == b"done":
                    frames.append(DONE_COMPAT if compat else sse_frame(item))
                    yield b"".join(frames)
                    return
                frames.append(render(item))
        if frames:
            yield b"".join(frames)


async def wait_for_result(hub: Hub, key: str, after: tuple[int, int], request_id: str) -> dict[str, Any] | None:
    """Collect one request's outcome from its stream; None if the stream was cut first."""
    wanted = request_id.encode()
    outcome: dict[str, Any] = {}
    async for batch in batches(hub, key, after):
        for item in batch:
            if item is OVERFLOW or item is DRAIN:
                return None
            if not isinstance(item, Entry) or item.request_id != wanted:
                continue
            event = orjson.loads(item.json)
            if item.type == b"message":
                outcome["response"] = event["data"].get("content")
                outcome["agent_id"] = event["data"].get("agent_id")
            elif item.type in _TERMINAL:
                outcome["status"] = item.type.decode().removeprefix("run.")
                outcome["terminal"] = event["data"]
            elif item.type == b"done":
                return outcome
    return None
