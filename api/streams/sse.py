"""SSE responses: headers that keep proxies from buffering, and stream-id parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from api.errors import ApiError
from common.streams import id_before, parse_id, valid_id

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse_response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


def resume_point(value: str | None) -> tuple[int, int] | None:
    """Parse a Last-Event-ID / ?from= value; None means "from the end" (`$`)."""
    if value is None or value == "":
        return (0, 0)
    if value == "$":
        return None
    if not valid_id(value):
        raise ApiError(422, f"invalid stream id {value!r}: expected <milliseconds>-<sequence>")
    return parse_id(value)


def just_before(entry_id: str) -> tuple[int, int]:
    return id_before(parse_id(entry_id))
