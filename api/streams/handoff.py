"""SSE bodies streamed after the app's layers have returned, so an idle stream holds little beyond its socket.

A response passes through a dozen ASGI layers (CORS, tracing, the access log, FastAPI's routing,
dependencies and exception handling), each a suspended coroutine frame with its locals for as
long as the response goes on: for an idle SSE stream that was most of its memory. `SseResponse`
sends its headers through those layers (they add theirs and record the status), then hands its
body to `StreamHandoff`, the outermost layer, which streams it once they have returned, straight
to the server's `send`: every layer acts on the response start only, so the body skips their send
wrappers (and their closures, which held each layer's request state). The access log line and the
trace span of a stream therefore end at its headers. One small task per stream watches for the
client leaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from common.platform.logging import correlation_id

Release = Callable[[], None]
HANDOFF = "relaygate.handoff"  # scope key of the request's _Handoff
# The keys of an ASGI HTTP scope that the server sets; the server's connection holds the scope for as long
# as the stream, so what the app's layers added (FastAPI's route, endpoint, context, exit stacks) is dropped.
_SERVER_KEYS = frozenset(
    (
        "type asgi http_version method scheme path raw_path query_string root_path "
        "headers client server state extensions"
    ).split()
)


@dataclass(slots=True)
class _Handoff:
    """What `SseResponse` leaves for `StreamHandoff`: the body, its release and the log context."""

    body: AsyncIterator[bytes] | None = None
    release: Release | None = None
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
        if handoff.body is not None:
            _compact(scope)
            correlation_id.set(handoff.correlation_id)
            await stream_body(handoff.body, receive, send, handoff.release)


def _compact(scope: Scope) -> None:
    """Cut the scope back to the server's keys, in a table sized for them (a dict never shrinks in place)."""
    kept = {k: v for k, v in scope.items() if k in _SERVER_KEYS}
    scope.clear()
    scope.update(kept)


class SseResponse(StreamingResponse):
    """A `text/event-stream` response whose body `StreamHandoff` streams (or itself, without one)."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str], release: Release | None = None) -> None:
        self.body_iterator = self.frames = body
        self.release = release
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        handoff: _Handoff | None = scope.get(HANDOFF)
        if handoff is None:
            await stream_body(self.frames, receive, send, self.release)
            return
        handoff.body, handoff.release, handoff.correlation_id = self.frames, self.release, correlation_id.get()


async def stream_body(body: AsyncIterator[bytes], receive: Receive, send: Send, release: Release | None) -> None:
    """Send `body` to its end, or stop it (closed at once, so its subscription is freed) when the client leaves;
    then `release` what the stream held."""
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
            try:
                aclose = getattr(body, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if release is not None:
                    release()
    except asyncio.CancelledError:
        if not gone or task.uncancel() > 0:
            raise
