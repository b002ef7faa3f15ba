"""POST /api/v1/requests/{web,cli,tool,generic}, status and cancel (the compat `/stream` intake is beside it)."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from api.deps import Gateway, GatewayDep, PrincipalDep, require_scope
from api.errors import (
    Conflict,
    Invalid,
    NotFound,
    TooManyRequests,
    responses,
)
from api.requests import service
from api.requests.schemas import (
    Accepted,
    ApprovalDecision,
    ApprovalResult,
    CliRequest,
    GenericRequest,
    RequestResult,
    ToolRequest,
    ToolStep,
    WebRequest,
)
from api.responses import JSONResponse
from api.streams.relay import request_frames, wait_for_result
from api.streams.sse import held_response, just_before, release_stream, reserve_stream
from common.agents import tool_steps
from common.platform import logging as rg_logging
from common.platform.credentials import SCOPE_REQUESTS, Principal
from common.platform.keys import stream_key
from common.platform.logging import correlation_id
from common.requests.models import ACTIVE_STATUSES, RequestBody

router = APIRouter(
    prefix="/api/v1/requests",
    tags=["requests"],
    dependencies=[Depends(require_scope(SCOPE_REQUESTS))],
    responses=responses(NotFound, Conflict, Invalid, TooManyRequests),
)

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
Wait = Annotated[float | None, Query(ge=0, description="seconds to wait for the finished reply")]


def _wait_seconds(request: Request, wait: float | None, limit: float) -> float | None:
    if wait is None:
        match = _PREFER_WAIT.search(request.headers.get("prefer", ""))
        wait = float(match.group(1)) if match else None
    return min(wait, limit) if wait else None


async def _intake(
    request: Request,
    body: RequestBody,
    gw: Gateway,
    who: Principal,
    idempotency_key: str | None,
    wait: float | None,
) -> Response:
    streaming = "text/event-stream" in request.headers.get("accept", "")
    slot = await reserve_stream(gw, who) if streaming else None
    try:
        accepted = await service.accept(
            gw, who, body, idempotency_key=idempotency_key, correlation_id=correlation_id.get()
        )
        rg_logging.bind(request=accepted.request_id, session=accepted.session_id, tenant=who.tenant_id)
    except BaseException:
        release_stream(gw, slot)
        raise
    key = stream_key(accepted.session_id, gw.settings.stream_buckets)
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else {}
    after = just_before(accepted.stream_entry_id) if accepted.stream_entry_id else (0, 0)
    if streaming:
        response = held_response(gw, slot, request_frames(gw.hub, key, after, accepted.request_id))
        response.headers.update(headers)
        return response
    wait_seconds = _wait_seconds(request, wait, gw.settings.max_wait_seconds)
    if wait_seconds:
        if accepted.replayed and accepted.status not in ACTIVE_STATUSES:
            return JSONResponse(
                RequestResult(**_result(await service.get(gw, who, accepted.request_id))).model_dump(), headers=headers
            )
        try:
            outcome = await asyncio.wait_for(wait_for_result(gw.hub, key, after, accepted.request_id), wait_seconds)
        except TimeoutError:
            outcome = None
        if outcome:
            headers["Preference-Applied"] = f"wait={wait_seconds:g}"
            result = RequestResult(
                request_id=accepted.request_id,
                session_id=accepted.session_id,
                status=outcome["status"],
                response=outcome.get("response"),
                agent_id=outcome.get("agent_id"),
                error=outcome.get("terminal", {}).get("error") or outcome.get("terminal", {}).get("reason"),
                processing_time_ms=outcome.get("terminal", {}).get("processing_time_ms"),
                usage=outcome.get("terminal", {}).get("usage"),
            )
            return JSONResponse(result.model_dump(mode="json"), headers=headers)
    body_out = Accepted(
        request_id=accepted.request_id,
        session_id=accepted.session_id,
        status=accepted.status,
        stream_url=f"/api/v1/sessions/{accepted.session_id}/stream",
        stream_entry_id=accepted.stream_entry_id,
    )
    return JSONResponse(body_out.model_dump(), status_code=202, headers=headers)


def _result(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in RequestResult.model_fields if k in row}


@router.post("/web", status_code=202, response_model=Accepted)
async def web(
    body: WebRequest,
    request: Request,
    gw: GatewayDep,
    who: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = None,
) -> Response:
    return await _intake(request, body, gw, who, idempotency_key, wait)


@router.post("/cli", status_code=202, response_model=Accepted)
async def cli(
    body: CliRequest,
    request: Request,
    gw: GatewayDep,
    who: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = None,
) -> Response:
    return await _intake(request, body, gw, who, idempotency_key, wait)


@router.post("/tool", status_code=202, response_model=Accepted)
async def tool(
    body: ToolRequest,
    request: Request,
    gw: GatewayDep,
    who: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = None,
) -> Response:
    return await _intake(request, body, gw, who, idempotency_key, wait)


@router.post("/generic", status_code=202, response_model=Accepted)
async def generic(
    body: GenericRequest,
    request: Request,
    gw: GatewayDep,
    who: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = None,
) -> Response:
    return await _intake(request, body, gw, who, idempotency_key, wait)


@router.get("/{request_id}", response_model=RequestResult)
async def get_request(request_id: str, gw: GatewayDep, who: PrincipalDep) -> RequestResult:
    row = await service.get(gw, who, request_id)
    steps = [ToolStep(**tool_steps.public(r)) for r in await tool_steps.load(gw.db, row["request_id"])]
    return RequestResult(**_result(row), steps=steps)


@router.post("/{request_id}/approvals/{call_id}", response_model=ApprovalResult)
async def decide_approval(
    request_id: str, call_id: str, body: ApprovalDecision, gw: GatewayDep, who: PrincipalDep
) -> ApprovalResult:
    """Approve or deny a tool call the request waits on; once none waits, the request is queued again."""
    status = await service.decide(gw, who, request_id, call_id, body.approve, body.reason)
    return ApprovalResult(request_id=request_id, call_id=call_id, approved=body.approve, status=status)


@router.post("/{request_id}/cancel", status_code=202)
async def cancel_request(request_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, str]:
    status = await service.cancel(gw, who, request_id)
    return {"request_id": request_id, "status": status}
