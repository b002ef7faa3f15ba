"""SSE bodies streamed after the app's layers have returned, so an idle stream holds little beyond its socket.

A response passes through a dozen ASGI layers (CORS, tracing, the access log, FastAPI's routing,
dependencies and exception handling), each a suspended coroutine frame with its locals for as
long as the response goes on: for an idle SSE stream that was most of its memory. `SseResponse`
sends its headers through those layers (they add theirs and record the status), then hands its
body and the layered `send` to `StreamHandoff`, the outermost layer, which streams the body once
they have returned. The access log line and the trace span of a stream therefore end at its
headers. One small task per stream watches for the client leaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from common.platform.logging import correlation_id

HANDOFF = "relaygate.handoff"  # scope key of the request's _Handoff


@dataclass(slots=True)
class _Handoff:
    """What `SseResponse` leaves for `StreamHandoff`: the body, the layered send, the log context."""

    body: AsyncIterator[bytes] | None = None
    send: Send | None = None
    correlation_id: str = ""


class StreamHandoff:
    """Outermost ASGI layer: streams a handed-off SSE body after the inner layers returned."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handoff = scope[HANDOFF] = _Handoff()
        await self.app(scope, receive, send)
        if handoff.body is not None and handoff.send is not None:
            _drop_exit_stacks(scope)
            correlation_id.set(handoff.correlation_id)
            await stream_body(handoff.body, receive, handoff.send)


def _drop_exit_stacks(scope: Scope) -> None:
    """FastAPI leaves its request's exit stacks (closed once the layers returned) in the scope, which lives on."""
    for key in [k for k, v in scope.items() if isinstance(v, AsyncExitStack)]:
        del scope[key]


class SseResponse(StreamingResponse):
    """A `text/event-stream` response whose body `StreamHandoff` streams (or itself, without one)."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        self.body_iterator = self.frames = body
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        handoff: _Handoff | None = scope.get(HANDOFF)
        if handoff is None:
            await stream_body(self.frames, receive, send)
            return
        handoff.body, handoff.send, handoff.correlation_id = self.frames, send, correlation_id.get()


async def stream_body(body: AsyncIterator[bytes], receive: Receive, send: Send) -> None:
    """Send `body` to its end, or stop it (closed at once, so its subscription is freed) when the client leaves."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        try:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
    except asyncio.CancelledError:
        if not gone or task.uncancel() > 0:
            raise
