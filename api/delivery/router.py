"""Integration defaults, per-user overrides and delivery history (the integration guide's routes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from api.delivery import service
from api.delivery.schemas import (
    Deliveries,
    Override,
    OverrideCreate,
    OverrideUpdate,
    SystemDefaults,
    UserConfigs,
    Verified,
    VerifyCode,
)
from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import Invalid, NotFound, responses
from common.delivery import configs as channel_configs
from common.delivery.configs import Channel
from common.platform.credentials import SCOPE_INTEGRATIONS

router = APIRouter(
    prefix="/api/v1",
    tags=["integrations"],
    dependencies=[Depends(require_scope(SCOPE_INTEGRATIONS))],
    responses=responses(NotFound, Invalid),
)

UserId = Annotated[str, Path(min_length=1, max_length=255)]


@router.get("/integration-defaults", response_model=SystemDefaults)
async def system_defaults(gw: GatewayDep, who: PrincipalDep) -> SystemDefaults:
    configs = await channel_configs.defaults(gw.db, gw.settings, who.tenant_id)
    return SystemDefaults(integration_defaults={k: service.shown(v) for k, v in configs.items()})


@router.get("/users/{user_id}/integration-defaults", response_model=UserConfigs)
async def user_defaults(user_id: UserId, gw: GatewayDep, who: PrincipalDep) -> UserConfigs:
    return await service.user_configs(gw, who, user_id)


@router.post("/users/{user_id}/integrations", status_code=201, response_model=Override)
async def create_override(user_id: UserId, body: OverrideCreate, gw: GatewayDep, who: PrincipalDep) -> Override:
    return await service.create(gw, who, user_id, body)


@router.put("/users/{user_id}/integrations/{integration_type}", response_model=Override)
async def update_override(
    user_id: UserId, integration_type: Channel, body: OverrideUpdate, gw: GatewayDep, who: PrincipalDep
) -> Override:
    return await service.update(gw, who, user_id, integration_type, body)


@router.post("/users/{user_id}/integrations/{integration_type}/verify", response_model=Verified)
async def verify(
    user_id: UserId, integration_type: Channel, body: VerifyCode, gw: GatewayDep, who: PrincipalDep
) -> Verified:
    """Confirm an EMAIL or SMS destination with the code relaygate sent to it; until then nothing is delivered there."""
    return await service.verify(gw, who, user_id, integration_type, body.code)


@router.delete("/users/{user_id}/integrations/{integration_type}", status_code=204)
async def delete_override(user_id: UserId, integration_type: Channel, gw: GatewayDep, who: PrincipalDep) -> Response:
    await service.delete(gw, who, user_id, integration_type)
    return Response(status_code=204)


@router.post("/users/{user_id}/integration-defaults/reset")
async def reset(user_id: UserId, gw: GatewayDep, who: PrincipalDep) -> dict[str, object]:
    removed = await service.reset(gw, who, user_id)
    return {"user_id": user_id, "removed_overrides": removed, "using_integration_defaults": True}


@router.get("/users/{user_id}/deliveries", response_model=Deliveries)
async def deliveries(
    user_id: UserId,
    gw: GatewayDep,
    who: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Deliveries:
    rows = await service.deliveries(gw, who, user_id, limit, offset)
    return Deliveries(user_id=user_id, deliveries=rows, limit=limit, offset=offset)
