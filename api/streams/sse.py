"""SSE responses: headers that keep proxies from buffering, and stream-id parsing."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from api.deps import Gateway
from api.errors import BadRequest, Invalid, ServiceUnavailable, refused
from api.streams.handoff import Release, SseResponse
from common.platform.credentials import Principal
from common.requests.limits import REFUSALS
from common.streams.protocol import id_before, parse_id, valid_id

MAX_ID_PART = 2**64 - 1

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse_response(frames: AsyncIterator[bytes], release: Release | None = None) -> SseResponse:
    return SseResponse(frames, SSE_HEADERS, release)


async def reserve_stream(gw: Gateway, who: Principal) -> str | None:
    """A slot under the stream limits, taken before anything else is done: 429 over a limit, 503 if Redis is down
    or the process is a reserve short of its descriptor limit.

    None when this gateway counts no streams. Pass the slot to `held_response` or `release_stream`.
    """
    if gw.hub.draining:
        raise ServiceUnavailable("this gateway is shutting down; reconnect", headers={"Retry-After": "1"})
    if gw.slots is None:
        return None
    if gw.capacity is not None and gw.capacity.full(gw.slots.count):
        REFUSALS.labels("file_descriptors").inc()
        # Connection: close frees the refused connection's descriptor at once.
        raise ServiceUnavailable(
            f"this gateway holds {gw.slots.count} streams, as many as its descriptor limit "
            f"({gw.capacity.limit}) allows; retry (another replica may take it)",
            headers={"Retry-After": "1", "Connection": "close"},
        )
    slot, refusal = await gw.slots.acquire(who.tenant_id, who.user_id)
    if refusal is not None:
        raise refused(refusal)
    return slot


def release_stream(gw: Gateway, slot: str | None) -> None:
    if gw.slots is not None and slot is not None:
        gw.slots.release(slot)


def held_response(gw: Gateway, slot: str | None, frames: AsyncIterator[bytes]) -> SseResponse:
    """The SSE response of a reserved slot, which is freed when the stream ends or its client leaves."""
    return sse_response(frames, functools.partial(release_stream, gw, slot))


async def open_stream(gw: Gateway, who: Principal, frames: AsyncIterator[bytes]) -> SseResponse:
    return held_response(gw, await reserve_stream(gw, who), frames)


def resume_point(value: str | None) -> tuple[int, int] | None:
    """Parse a Last-Event-ID / ?from= value; None means "from the end" (`$`)."""
    if value is None or value == "":
        return (0, 0)
    if value == "$":
        return None
    if not valid_id(value):
        raise Invalid(f"invalid stream id {value[:64]!r}: expected <milliseconds>-<sequence>")
    parsed = parse_id(value)
    if max(parsed) > MAX_ID_PART:
        raise BadRequest(f"stream id {value[:64]!r} is outside Redis' 64-bit id space")
    return parsed


def just_before(entry_id: str) -> tuple[int, int]:
    return id_before(parse_id(entry_id))
