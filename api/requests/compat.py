"""`POST /stream?feature_id=X&chat_id=Y`: the original prototype's intake, relayed on the session streams."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from starlette.responses import StreamingResponse

from api.deps import Gateway, GatewayDep, PrincipalDep, require_scope
from api.errors import (
    Conflict,
    Invalid,
    NotFound,
    TooManyRequests,
    responses,
)
from api.requests import service
from api.requests.schemas import GenericRequest
from api.streams.relay import request_frames
from api.streams.sse import held_response, just_before, release_stream, reserve_stream
from common.platform.batching import pipelined
from common.platform.credentials import SCOPE_REQUESTS, Principal
from common.platform.keys import start_key, stream_key
from common.platform.logging import correlation_id
from common.requests import repository as request_repo
from common.sessions import repository as session_repo

router = APIRouter(
    tags=["streams"],
    dependencies=[Depends(require_scope(SCOPE_REQUESTS))],
    responses=responses(NotFound, Conflict, Invalid, TooManyRequests),
)

Name = Annotated[str, Query(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


def session_name(feature_id: str, chat_id: str) -> str:
    """The chat's external session id; the length prefix keeps ("a:b", "c") and ("a", "b:c") apart."""
    return f"compat:{len(feature_id)}:{feature_id}:{chat_id}"


@router.post("/stream", response_class=StreamingResponse)
async def compat_stream(
    feature_id: Name,
    chat_id: Name,
    gw: GatewayDep,
    who: PrincipalDep,
    content: Annotated[str | None, Body(embed=True, max_length=100_000)] = None,
) -> StreamingResponse:
    """Starts generation when the chat has none running, relays it, ends with `data: [DONE]`."""
    if content and "\x00" in content:
        raise Invalid("content may not contain NUL (\\u0000) characters")
    agent = next((a for a in gw.agents.agents if a.feature == feature_id), None)
    if agent is None:
        raise NotFound(f"no agent serves feature {feature_id!r}")
    slot = await reserve_stream(gw, who)
    try:
        return await _start_or_join(gw, who, feature_id, chat_id, content, agent.id, slot)
    except BaseException:
        release_stream(gw, slot)
        raise


async def _start_or_join(
    gw: Gateway, who: Principal, feature_id: str, chat_id: str, content: str | None, agent_id: str, slot: str | None
) -> StreamingResponse:
    """Start the chat's generation unless one is already claimed, then relay that one."""
    session_id, created = await session_repo.for_external_id(
        gw.db, who, session_name(feature_id, chat_id), gw.settings.session_ttl_seconds
    )
    claim = start_key(session_id, gw.settings.stream_buckets)
    # The claim names the request before it is stored: one write, and a joiner that finds no row yet retries.
    request_id = str(uuid.uuid4())
    if await pipelined(gw.streams).command("SET", claim, request_id, "EX", gw.settings.stream_ttl_seconds, "NX"):
        body = GenericRequest(
            integration_type="generic",
            session_id=session_id,
            agent_id=agent_id,
            content=content or f"Generate messages for chat {chat_id} of feature {feature_id}.",
        )
        try:
            accepted = await service.accept(
                gw,
                who,
                body,
                idempotency_key=None,
                correlation_id=correlation_id.get(),
                unseen_session=created,
                request_id=request_id,
            )
        except BaseException:
            await gw.streams.delete(claim)
            raise
        entry_id = accepted.stream_entry_id
    else:
        request_id = (await gw.streams.get(claim) or b"").decode()
        row = await request_repo.get(gw.db, who, request_id)
        if row is None:
            raise Conflict("generation for this chat is starting; retry in a moment")
        entry_id = row["stream_entry_id"]
    after = just_before(entry_id) if entry_id else (0, 0)
    key = stream_key(session_id, gw.settings.stream_buckets)
    return held_response(gw, slot, request_frames(gw.hub, key, after, request_id, compat=True))
