"""A run's events from its session stream, as LangGraph SSE, and the wait for its outcome.

The relay reads the run's entries from its first one, so what it knows (the attempt a retry
started) never depends on where the client resumes; it sends only the entries after `skip_until`.
Draining ends the response cleanly with no `end`: LangGraph clients then ask the run's status
and, while it runs, reconnect to `Location` with `Last-Event-ID`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from api.langgraph.events import HEARTBEAT, Renderer, frames, metadata
from common.platform.metrics import RELAY
from common.streams.hub import DRAIN, OVERFLOW, Entry, Hub, batches
from common.streams.hub import HEARTBEAT as HUB_HEARTBEAT

Fallback = Callable[[], Awaitable[list[tuple[str, Any]]]]


async def run_frames(
    hub: Hub, key: str, after: tuple[int, int], skip_until: tuple[int, int], renderer: Renderer, *, metadata_first: bool
) -> AsyncIterator[bytes]:
    """SSE of one run from `after` (just before its first entry), ending after its `end`."""
    wanted = renderer.view.run_id.encode()
    if metadata_first:
        yield frames([metadata(renderer.view.run_id)], None)
    async for batch in batches(hub, key, after):
        out: list[bytes] = []
        for item in batch:
            if item is HUB_HEARTBEAT:
                out.append(HEARTBEAT)
            elif item is DRAIN or item is OVERFLOW:
                break
            elif isinstance(item, Entry) and item.request_id == wanted:
                # `end` even when resumed past it: a client that asks again gets a stream that ends.
                events = await renderer.events(item, emit=item.id > skip_until or item.type == b"done")
                if events:
                    RELAY.relayed(1)
                    out.append(frames(events, item.raw_id))
                if item.type == b"done":
                    yield b"".join(out)
                    return
        if out:
            yield b"".join(out)


async def outcome_body(
    hub: Hub, key: str, after: tuple[int, int], run_id: str, result: Callable[[], Awaitable[dict[str, Any]]]
) -> AsyncIterator[bytes]:
    """A JSON body that waits for the run to end: newlines keep idle proxies from closing it (JSON
    parsers skip them), then the result. A draining gateway answers an error the SDK raises."""
    wanted = run_id.encode()
    async for batch in batches(hub, key, after):
        for item in batch:
            if item is HUB_HEARTBEAT:
                yield b"\n"
            elif item is DRAIN or item is OVERFLOW:
                yield orjson.dumps(
                    {
                        "__error__": {
                            "error": "Unavailable",
                            "message": "the gateway is shutting down; the run goes on: join it again",
                        }
                    }
                )
                return
            elif isinstance(item, Entry) and item.request_id == wanted and item.type == b"done":
                yield orjson.dumps(await result(), default=str)
                return
