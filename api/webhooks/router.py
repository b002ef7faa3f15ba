"""`/v1/webhook-configs` (tenant-scoped CRUD) and `POST /v1/webhooks/{id}` (signed, no bearer token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import (
    BadRequest,
    Conflict,
    NotFound,
    TooManyRequests,
    Unauthorized,
    responses,
)
from api.flows.runs.contract import ContractRoute
from api.flows.runs.schemas import RunAccepted
from api.responses import JSONResponse
from api.webhooks import service
from api.webhooks.schemas import WebhookConfigBody, WebhookConfigOut, WebhookConfigPage, WebhookConfigUpdate
from common.platform.credentials import SCOPE_RUNS
from common.platform.logging import correlation_id

configs = APIRouter(
    prefix="/v1/webhook-configs",
    tags=["webhooks"],
    route_class=ContractRoute,
    dependencies=[Depends(require_scope(SCOPE_RUNS))],
    responses=responses(BadRequest, NotFound, Conflict),
)
intake = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    route_class=ContractRoute,
    responses=responses(BadRequest, Unauthorized, NotFound, TooManyRequests, signed_in=False),
)


@configs.post("", status_code=201, response_model=WebhookConfigOut)
async def create_config(body: WebhookConfigBody, gw: GatewayDep, who: PrincipalDep) -> WebhookConfigOut:
    """The answer carries the signing secret; no later answer does."""
    return WebhookConfigOut(**await service.create(gw, who, body))


@configs.get("", response_model=WebhookConfigPage, response_model_exclude_none=True)
async def list_configs(
    gw: GatewayDep, who: PrincipalDep, flow_id: Annotated[str | None, Query(max_length=255)] = None
) -> WebhookConfigPage:
    return WebhookConfigPage(items=[WebhookConfigOut(**c) for c in await service.search(gw, who, flow_id)])


@configs.get("/{webhook_id}", response_model=WebhookConfigOut, response_model_exclude_none=True)
async def get_config(webhook_id: str, gw: GatewayDep, who: PrincipalDep) -> WebhookConfigOut:
    return WebhookConfigOut(**await service.get(gw, who, webhook_id))


@configs.put("/{webhook_id}", response_model=WebhookConfigOut, response_model_exclude_none=True)
async def update_config(
    webhook_id: str, body: WebhookConfigUpdate, gw: GatewayDep, who: PrincipalDep
) -> WebhookConfigOut:
    """`rotate_secret: true` answers the new secret, once."""
    return WebhookConfigOut(**await service.update(gw, who, webhook_id, body))


@configs.delete("/{webhook_id}", status_code=204)
async def delete_config(webhook_id: str, gw: GatewayDep, who: PrincipalDep) -> Response:
    await service.delete(gw, who, webhook_id)
    return Response(status_code=204)


@intake.post("/{webhook_id}", status_code=202, response_model=RunAccepted)
async def receive(webhook_id: str, request: Request, gw: GatewayDep) -> JSONResponse:
    """Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`) sign the raw body."""
    started = await service.receive(gw, webhook_id, await request.body(), dict(request.headers), correlation_id.get())
    headers = {"Idempotent-Replayed": "true"} if started.replayed else None
    return JSONResponse(
        {"run_id": started.run_id, "correlation_id": started.correlation_id}, status_code=202, headers=headers
    )
