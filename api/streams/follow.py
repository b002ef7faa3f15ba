"""One request's events as batches, for the adapters that render them in another protocol (AI SDK, OpenAI).

Unlike the native routes these streams have no Last-Event-ID for the client to resume with, so a
mailbox overflow (a slow client) is caught up from Redis here instead of ending the response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from api.streams.relay import _observe
from common.platform.metrics import PROTOCOL_STREAMS
from common.streams.hub import DRAIN, HEARTBEAT, Entry, Hub, batches

Item = Entry | object  # an Entry of the request, HEARTBEAT or DRAIN


async def request_batches(hub: Hub, key: str, after: tuple[int, int], request_id: str) -> AsyncIterator[list[Item]]:
    """The request's entries after `after`, in batches, until its `done` (included) or DRAIN (last item)."""
    wanted = request_id.encode()
    while True:
        async for batch in batches(hub, key, after):
            _observe(batch)
            out: list[Item] = []
            for item in batch:
                if isinstance(item, Entry):
                    after = item.id
                    if item.request_id != wanted:
                        continue
                    out.append(item)
                    if item.type == b"done":
                        yield out
                        return
                elif item is HEARTBEAT:
                    out.append(item)
                elif item is DRAIN:
                    out.append(item)
                    yield out
                    return
            if out:
                yield out
        # Only OVERFLOW ends `batches` here: catch up from the last entry seen, then follow live again.


class Renderer(Protocol):
    """Turns a request's events into one protocol's frames; sets `ended` (how the stream ended) on its last one."""

    ended: str | None

    def opening(self) -> bytes: ...

    def render(self, item: Item) -> bytes: ...


async def rendered(
    hub: Hub, key: str, after: tuple[int, int], request_id: str, renderer: Renderer, protocol: str
) -> AsyncIterator[bytes]:
    """The request's stream in `renderer`'s protocol, counted per protocol and ending (a client that left too)."""
    try:
        yield renderer.opening()
        async for batch in request_batches(hub, key, after, request_id):
            out = []
            for item in batch:
                out.append(renderer.render(item))
                if renderer.ended:
                    break
            if chunk := b"".join(out):
                yield chunk
            if renderer.ended:
                return
    finally:
        PROTOCOL_STREAMS.labels(protocol, "ended", renderer.ended or "disconnected").inc()
