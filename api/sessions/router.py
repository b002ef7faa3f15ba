"""/api/v1/sessions: create, read, list, end and history (the stream route is in `api.streams`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import Conflict, Invalid, NotFound, responses
from api.sessions import service
from api.sessions.schemas import RequestPage, SessionCreate, SessionOut, SessionPage
from common.platform.credentials import SCOPE_SESSIONS
from common.sessions import repository as session_repo

router = APIRouter(prefix="/api/v1", tags=["sessions"], responses=responses(NotFound, Conflict, Invalid))

_SESSIONS = [Depends(require_scope(SCOPE_SESSIONS))]


@router.get("/me")
async def me(who: PrincipalDep) -> dict[str, Any]:
    return {"tenant_id": who.tenant_id, "user_id": who.user_id, "kind": who.kind, "scopes": sorted(who.scopes)}


@router.post("/sessions", status_code=201, response_model=SessionOut, dependencies=_SESSIONS)
async def create_session(body: SessionCreate, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await service.create(gw, who, body)


@router.get("/sessions", response_model=SessionPage, dependencies=_SESSIONS)
async def list_sessions(
    gw: GatewayDep,
    who: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Annotated[str | None, Query(pattern="^(active|inactive|expired|archived)$")] = None,
) -> dict[str, Any]:
    items = await session_repo.list_for(gw.db, who, limit + 1, offset, status)
    more = len(items) > limit
    return {"items": items[:limit], "next_offset": offset + limit if more else None}


@router.get("/sessions/{session_id}", response_model=SessionOut, dependencies=_SESSIONS)
async def get_session(session_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await service.owned(gw, who, session_id)


@router.post("/sessions/{session_id}/end", response_model=SessionOut, dependencies=_SESSIONS)
async def end_session(session_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await service.end(gw, who, session_id)


@router.get("/sessions/{session_id}/requests", response_model=RequestPage, dependencies=_SESSIONS)
async def session_requests(
    session_id: str, gw: GatewayDep, who: PrincipalDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> dict[str, Any]:
    return {"items": await service.history(gw, who, session_id, limit)}
