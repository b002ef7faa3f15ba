"""An SSE body handed off past the app's layers: only the response start goes through them, the scope
keeps the server's keys, and what the stream held is released once, at its end or when its client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from api.streams.handoff import SseResponse, StreamHandoff

SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": "/s"}


class Layered:
    """A layer as the app's are: it grows the scope and wraps `send`, recording what passes through it."""

    def __init__(self, response: SseResponse) -> None:
        self.response = response
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"], scope["fastapi_astack"] = object(), AsyncExitStack()

        async def layered_send(message: Message) -> None:
            self.seen.append(message["type"])
            await send(message)

        await self.response(scope, receive, layered_send)


async def _serve(app: Layered, receive: Receive) -> tuple[dict[str, Any], list[Message]]:
    scope, sent = dict(SCOPE), []

    async def server_send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(StreamHandoff(app)(scope, receive, server_send), 5)
    return scope, sent


async def _never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError


async def test_the_body_goes_past_the_layers_and_the_scope_keeps_the_servers_keys() -> None:
    released: list[int] = []

    async def frames() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    app = Layered(SseResponse(frames(), {}, lambda: released.append(1)))
    scope, sent = await _serve(app, _never)
    assert app.seen == ["http.response.start"]
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 3
    assert [m["body"] for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert scope == SCOPE, "what the layers added is dropped"
    assert released == [1]


async def test_a_client_that_leaves_closes_the_body_and_releases_once() -> None:
    released: list[int] = []
    closed = asyncio.Event()
    first_sent = asyncio.Event()

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            first_sent.set()
            await asyncio.Event().wait()
            yield b"never"
        finally:
            closed.set()

    async def leaves() -> Message:
        await first_sent.wait()
        return {"type": "http.disconnect"}

    app = Layered(SseResponse(frames(), {}, lambda: released.append(1)))
    _, sent = await _serve(app, leaves)
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n"]
    assert closed.is_set() and released == [1]
