"""A small SSE reader over httpx for the CLI and the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass
class SseParser:
    """Feed lines; a blank line completes an event. Comments (heartbeats) are skipped."""

    _id: str | None = None
    _event: str = "message"
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            done = SseEvent(self._id, self._event, "\n".join(self._data)) if self._data else None
            self._id, self._event, self._data = None, "message", []
            return done
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def iter_events(response: httpx.Response) -> Iterator[SseEvent]:
    parser = SseParser()
    for line in response.iter_lines():
        if (event := parser.feed(line)) is not None:
            yield event


async def aiter_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    parser = SseParser()
    async for line in response.aiter_lines():
        if (event := parser.feed(line)) is not None:
            yield event
