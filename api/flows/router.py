"""`/v1/flows`: the tenant's versioned flow registry, searchable by name and tag."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import BadRequest, Conflict, NotFound, responses
from api.flows import service
from api.flows.runs.contract import ContractRoute
from api.flows.schemas import FlowBody, FlowOut, FlowPage
from common.platform.credentials import SCOPE_RUNS

router = APIRouter(
    prefix="/v1/flows",
    tags=["flows"],
    route_class=ContractRoute,
    dependencies=[Depends(require_scope(SCOPE_RUNS))],
    responses=responses(BadRequest, NotFound, Conflict),
)


@router.post("", status_code=201, response_model=FlowOut)
async def create_flow(body: FlowBody, gw: GatewayDep, who: PrincipalDep) -> FlowOut:
    return FlowOut(**await service.create(gw, who, body))


@router.get("", response_model=FlowPage)
async def list_flows(
    gw: GatewayDep,
    who: PrincipalDep,
    name: Annotated[str | None, Query(max_length=255)] = None,
    tag: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=255)] = None,
) -> FlowPage:
    items, next_cursor = await service.search(gw, who, name=name, tag=tag, limit=limit, cursor=cursor)
    return FlowPage(items=[FlowOut(**i) for i in items], next_cursor=next_cursor)


@router.get("/{flow_id}", response_model=FlowOut)
async def get_flow(
    flow_id: str, gw: GatewayDep, who: PrincipalDep, version: Annotated[int | None, Query(ge=1)] = None
) -> FlowOut:
    return FlowOut(**await service.get(gw, who, flow_id, version))


@router.put("/{flow_id}", response_model=FlowOut)
async def update_flow(flow_id: str, body: FlowBody, gw: GatewayDep, who: PrincipalDep) -> FlowOut:
    return FlowOut(**await service.update(gw, who, flow_id, body))


@router.delete("/{flow_id}", status_code=204)
async def delete_flow(flow_id: str, gw: GatewayDep, who: PrincipalDep) -> Response:
    await service.delete(gw, who, flow_id)
    return Response(status_code=204)
