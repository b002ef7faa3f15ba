"""A lean streaming client for OpenAI-compatible Chat Completions endpoints (httpx, no litellm).

litellm builds pydantic objects for every streamed chunk, most of a worker's CPU per token. Here a
reply is one `POST {api_base}/chat/completions` with `stream: true`; its server-sent events are split
by hand and each `data:` line is parsed once with orjson. HTTP failures are `ProviderError`s whose
`transient` flag matches litellm's retry classes for the same status (408, 429, 500, 503, 504), and
connection failures are httpx's `TransportError`s, so retries and messages stay the same on both paths.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

# The statuses litellm maps to the errors workers retry (Timeout, RateLimitError, InternalServerError,
# ServiceUnavailableError); every other status fails the request at once.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 503, 504})
TIMEOUT = httpx.Timeout(600.0, connect=10.0)  # litellm's default request timeout; a dead host fails fast
_DONE = b"[DONE]"

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


class ProviderError(Exception):
    """The provider answered with an error: an HTTP status, or an `error` event inside the stream."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.transient = status in TRANSIENT_STATUSES


def _new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(max_connections=None, max_keepalive_connections=200))


def client() -> httpx.AsyncClient:
    """This event loop's connection pool (one per loop: an httpx client cannot move between loops)."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = _clients[loop] = _new_client()
    return found


async def prepare() -> None:
    """Build this loop's pool in a thread: the first one imports httpcore and loads the CA certificates,
    up to a second of CPU on a busy machine that would otherwise stall the loop at the first reply."""
    loop = asyncio.get_running_loop()
    if loop not in _clients:
        made = await asyncio.to_thread(_new_client)
        _clients.setdefault(loop, made)


def retryable(exc: BaseException) -> bool:
    """Worth another try before the first chunk: a transient status, or the connection failed."""
    return (isinstance(exc, ProviderError) and exc.transient) or isinstance(exc, httpx.TransportError)


def _message(status: int, body: bytes) -> str:
    """The provider's own error message (OpenAI's `{"error": {"message"}}`), else the body's start."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")[:300] or httpx.codes.get_reason_phrase(status)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return str(parsed)[:300]


class Stream:
    """One streamed completion: `open()` sends it and checks the status; `events()` yields parsed chunks."""

    def __init__(self, url: str, body: dict[str, Any], api_key: str) -> None:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.request = client().build_request("POST", url, content=orjson.dumps(body), headers=headers)
        self.response: httpx.Response | None = None

    async def open(self) -> None:
        response = self.response = await client().send(self.request, stream=True)
        if response.status_code >= 400:
            body = await response.aread()
            await response.aclose()
            raise ProviderError(response.status_code, _message(response.status_code, body))

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        """The stream's JSON events up to `[DONE]`, reading the body to its end (so the connection goes back
        to the pool); an `error` event raises `ProviderError`."""
        assert self.response is not None, "open() first"
        data: list[bytes] = []
        rest = b""
        done = False
        async for raw in self.response.aiter_bytes():
            if done:
                continue
            lines = (rest + raw).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.startswith(b"data:"):
                    data.append(line[5:].strip())
                elif not line.strip() and data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    if payload == _DONE:
                        done = True
                        break
                    event = orjson.loads(payload)
                    if not isinstance(event, dict):
                        continue
                    if event.get("error"):
                        error = event["error"]
                        message = error.get("message") if isinstance(error, dict) else error
                        raise ProviderError(None, str(message or error))
                    yield event

    async def close(self) -> None:
        """Release the connection: back to the pool if the body was read to its end, else closed."""
        if self.response is not None:
            await self.response.aclose()
