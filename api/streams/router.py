"""GET /api/v1/sessions/{id}/stream: every event of a session, resumable with Last-Event-ID."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from starlette.responses import StreamingResponse

from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import BadRequest, Invalid, NotFound, responses
from api.sessions import service as session_service
from api.streams.relay import session_frames
from api.streams.sse import open_stream, resume_point
from common.platform.credentials import SCOPE_SESSIONS
from common.platform.keys import stream_key
from common.streams.protocol import parse_id

router = APIRouter(
    prefix="/api/v1",
    tags=["sessions"],
    dependencies=[Depends(require_scope(SCOPE_SESSIONS))],
    responses=responses(BadRequest, NotFound, Invalid),
)


@router.get("/sessions/{session_id}/stream", response_class=StreamingResponse)
async def session_stream(
    session_id: str,
    gw: GatewayDep,
    who: PrincipalDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
) -> StreamingResponse:
    """SSE of every event of the session; resume with Last-Event-ID (or ?from=) with no gap."""
    session = await session_service.owned(gw, who, session_id)
    sid = session["session_id"]
    key = stream_key(sid, gw.settings.stream_buckets)
    after = resume_point(last_event_id if last_event_id is not None else from_)
    if after is None:
        after = parse_id(await gw.hub.last_id(key))

    async def snapshot() -> tuple[list[dict[str, Any]], str | None]:
        return await session_service.snapshot(gw, who, sid)

    return await open_stream(gw, who, session_frames(gw.hub, key, after, snapshot))
