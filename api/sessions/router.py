"""/api/v1/sessions: create, read, list, end, history and the resumable SSE stream."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from starlette.responses import StreamingResponse

from api.deps import GatewayDep, PrincipalDep
from api.errors import ApiError
from api.requests.service import cancel_many
from api.sessions import service
from api.sessions.schemas import RequestPage, SessionCreate, SessionOut, SessionPage
from api.streams.relay import session_frames
from api.streams.sse import resume_point, sse_response
from common.keys import stream_key
from common.streams import parse_id

router = APIRouter(prefix="/api/v1", tags=["sessions"])


@router.get("/me")
async def me(who: PrincipalDep) -> dict[str, Any]:
    return {"tenant_id": who.tenant_id, "user_id": who.user_id, "kind": who.kind, "scopes": sorted(who.scopes)}


@router.post("/sessions", status_code=201, response_model=SessionOut)
async def create_session(body: SessionCreate, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await service.create(gw.db, who, who.user_id, body, gw.settings.session_ttl_seconds)


@router.get("/sessions", response_model=SessionPage)
async def list_sessions(
    gw: GatewayDep, who: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Annotated[str | None, Query(pattern="^(active|inactive|expired|archived)$")] = None,
) -> dict[str, Any]:
    items = await service.list_for(gw.db, who, limit + 1, offset, status)
    more = len(items) > limit
    return {"items": items[:limit], "next_offset": offset + limit if more else None}


async def _owned(gw: GatewayDep, who: PrincipalDep, session_id: str) -> dict[str, Any]:
    session = await service.get(gw.db, who, session_id)
    if session is None:
        raise ApiError(404, "session not found")
    return session


@router.get("/sessions/{session_id}", response_model=SessionOut)
async def get_session(session_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await _owned(gw, who, session_id)


@router.post("/sessions/{session_id}/end", response_model=SessionOut)
async def end_session(session_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    session = await _owned(gw, who, session_id)
    async with gw.db.acquire() as conn, conn.transaction():
        unfinished = await service.end(conn, who, session["session_id"])
    if unfinished:
        await cancel_many(gw, session["session_id"], unfinished, "session ended")
    return await _owned(gw, who, session_id)


@router.get("/sessions/{session_id}/requests", response_model=RequestPage)
async def session_requests(
    session_id: str, gw: GatewayDep, who: PrincipalDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> dict[str, Any]:
    session = await _owned(gw, who, session_id)
    return {"items": await service.requests_of(gw.db, who, session["session_id"], limit)}


@router.get("/sessions/{session_id}/stream", response_class=StreamingResponse)
async def session_stream(
    session_id: str, gw: GatewayDep, who: PrincipalDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
) -> StreamingResponse:
    """SSE of every event of the session; resume with Last-Event-ID (or ?from=) with no gap."""
    session = await _owned(gw, who, session_id)
    sid = session["session_id"]
    key = stream_key(sid, gw.settings.stream_buckets)
    after = resume_point(last_event_id if last_event_id is not None else from_)
    if after is None:
        after = parse_id(await gw.hub.last_id(key))

    async def snapshot() -> tuple[list[dict[str, Any]], str | None]:
        requests = await service.requests_of(gw.db, who, sid, 50)
        return requests, await service.checkpoint_of_running(gw.db, sid)

    return sse_response(session_frames(gw.hub, key, after, snapshot))
