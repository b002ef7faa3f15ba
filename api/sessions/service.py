"""Session rules: ownership, creation and ending. SQL lives in `common.sessions.repository`."""

from __future__ import annotations

from typing import Any

import asyncpg

from api.deps import Gateway
from api.errors import Conflict, NotFound
from api.sessions.schemas import SessionCreate
from common.agents import tool_steps
from common.platform import sink
from common.platform.credentials import Principal
from common.requests import repository as request_repo
from common.requests.cancelling import cancel_many
from common.sessions import repository as session_repo


async def create(gw: Gateway, who: Principal, body: SessionCreate) -> dict[str, Any]:
    try:
        session = await session_repo.create(gw.db, who, who.user_id, body.model_dump(), gw.settings.session_ttl_seconds)
    except asyncpg.UniqueViolationError:
        raise Conflict("a session with this external_session_id already exists") from None
    sink.emit("session.created", session["session_id"], {"user_id": who.user_id}, tenant_id=who.tenant_id)
    return session


async def owned(gw: Gateway, who: Principal, session_id: str) -> dict[str, Any]:
    session = await session_repo.get(gw.db, who, session_id)
    if session is None:
        raise NotFound("session not found")
    return session


async def end(gw: Gateway, who: Principal, session_id: str) -> dict[str, Any]:
    """Mark the session inactive and cancel what it still has queued or running."""
    session = await owned(gw, who, session_id)
    sid = session["session_id"]
    async with gw.db.acquire() as conn, conn.transaction():
        await session_repo.mark_inactive(conn, who, sid)
        unfinished = await request_repo.unfinished_in_session(conn, who, sid)
    sink.emit("session.ended", sid, {"status": "inactive"}, tenant_id=who.tenant_id)
    if unfinished:
        await cancel_many(gw, sid, unfinished, "session ended")
    return await owned(gw, who, session_id)


async def history(gw: Gateway, who: Principal, session_id: str, limit: int) -> list[dict[str, Any]]:
    session = await owned(gw, who, session_id)
    return await _with_steps(gw, await request_repo.of_session(gw.db, who, session["session_id"], limit))


async def snapshot(gw: Gateway, who: Principal, session_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """The session's recent requests and the running one's checkpoint: what a `stream.reset` carries."""
    requests = await _with_steps(gw, await request_repo.of_session(gw.db, who, session_id, 50))
    return requests, await request_repo.checkpoint_of_running(gw.db, who, session_id)


async def _with_steps(gw: Gateway, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each request with its tool steps: a client that missed their events (or opens the chat later)
    still shows them, and a call that waits for a person still offers the decision."""
    steps = await tool_steps.of_requests(gw.db, [r["request_id"] for r in requests])
    for request in requests:
        request["steps"] = steps.get(request["request_id"], [])
    return requests
