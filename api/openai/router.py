"""OpenAI-compatible `GET /v1/models` and `POST /v1/chat/completions` (Open WebUI, LibreChat, the `openai` SDKs)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from starlette.responses import Response

from api.deps import GatewayDep, PrincipalDep, require_scope
from api.openai import service
from api.openai.errors import OpenAIRoute
from api.openai.schemas import CompletionRequest
from common.platform.credentials import SCOPE_REQUESTS

router = APIRouter(
    prefix="/v1", tags=["openai"], route_class=OpenAIRoute, dependencies=[Depends(require_scope(SCOPE_REQUESTS))]
)

SessionHeader = Annotated[str | None, Header(alias="X-Session-Id", max_length=64)]
ChatHeader = Annotated[str | None, Header(alias="X-Chat-Id", min_length=1, max_length=255)]


@router.get("/models")
async def list_models(gw: GatewayDep) -> dict[str, Any]:
    """The agents, as models (`id` = agent id)."""
    return {"object": "list", "data": [service.model(a) for a in gw.agents.agents]}


@router.get("/models/{model_id}")
async def get_model(model_id: str, gw: GatewayDep) -> dict[str, Any]:
    return service.model(service.agent_for(gw, model_id))


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: CompletionRequest,
    gw: GatewayDep,
    who: PrincipalDep,
    session_id: SessionHeader = None,
    chat_id: ChatHeader = None,
) -> Response:
    """`model` is an agent id; `X-Session-Id` continues a session, `X-Chat-Id` names one (Open WebUI: `{{CHAT_ID}}`)."""
    return await service.complete(gw, who, body, session_id or None, chat_id or None)
