"""AI SDK UI message streams: `POST /api/chat`, resume `GET /api/chat/{id}/stream`, `POST /api/chat/{id}/stop`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from starlette.responses import Response, StreamingResponse

from api.aisdk import service
from api.aisdk.schemas import CHAT_ID_PATTERN, ChatRequest
from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import (
    Conflict,
    Invalid,
    NotFound,
    TooManyRequests,
    responses,
)
from api.responses import JSONResponse
from common.platform.credentials import SCOPE_REQUESTS

router = APIRouter(
    prefix="/api/chat",
    tags=["ai-sdk"],
    dependencies=[Depends(require_scope(SCOPE_REQUESTS))],
    responses=responses(NotFound, Conflict, Invalid, TooManyRequests),
)

ChatId = Annotated[str, Path(pattern=CHAT_ID_PATTERN)]


@router.post("", response_class=StreamingResponse)
async def chat(body: ChatRequest, gw: GatewayDep, who: PrincipalDep) -> StreamingResponse:
    """`useChat`'s request: the last user message is the turn; the reply streams as UI message chunks."""
    return await service.chat(gw, who, body)


@router.get(
    "/{chat_id}/stream",
    response_class=StreamingResponse,
    responses={204: {"description": "the chat has no reply in progress"}},
)
async def resume(chat_id: ChatId, gw: GatewayDep, who: PrincipalDep) -> Response:
    """`resumeStream()`: the reply in progress from its start (same message id), then live."""
    return await service.resume(gw, who, chat_id)


@router.post("/{chat_id}/stop", status_code=202, responses={204: {"description": "nothing was in progress"}})
async def stop(chat_id: ChatId, gw: GatewayDep, who: PrincipalDep) -> Response:
    """Cancel the chat's reply in progress: its stream ends with `finish`, and a resume then answers 204."""
    stopped = await service.stop(gw, who, chat_id)
    if not stopped:
        return Response(status_code=204)
    return JSONResponse({"chat_id": chat_id, "status": "cancelling", "request_ids": stopped}, status_code=202)
