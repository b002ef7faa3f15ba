"""`/v1/runs`: start a flow run, read it (cached), list, cancel and stream its events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from starlette.responses import StreamingResponse

from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    TooManyRequests,
    responses,
)
from api.flows.runs import service
from api.flows.runs.contract import ContractRoute
from api.flows.runs.schemas import RunAccepted, RunBody, RunPage, RunStatus
from api.streams.relay import Reset, check_resume, request_frames, reset_frame
from api.streams.sse import open_stream, resume_point
from common.flows.runs import ACTIVE, STATUSES, RunStore
from common.platform.credentials import SCOPE_RUNS
from common.platform.logging import correlation_id
from common.streams.protocol import parse_id

router = APIRouter(
    prefix="/v1/runs",
    tags=["runs"],
    route_class=ContractRoute,
    dependencies=[Depends(require_scope(SCOPE_RUNS))],
    responses=responses(BadRequest, NotFound, Conflict, TooManyRequests),
)


@router.post("", status_code=202, response_model=RunAccepted)
async def create_run(body: RunBody, gw: GatewayDep, who: PrincipalDep) -> RunAccepted:
    started = await service.start(gw, who, body, correlation_id=correlation_id.get())
    return RunAccepted(run_id=started.run_id, correlation_id=started.correlation_id)


@router.get("", response_model=RunPage)
async def list_runs(
    gw: GatewayDep,
    who: PrincipalDep,
    flow_id: Annotated[str | None, Query(max_length=255)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[int | None, Query(ge=1)] = None,
) -> RunPage:
    if status is not None and status.upper() not in STATUSES:
        raise BadRequest([{"field": "query.status", "message": f"one of {', '.join(STATUSES)}"}])
    items, next_cursor = await service.search(gw, who, flow_id=flow_id, status=status, limit=limit, cursor=cursor)
    return RunPage(items=[RunStatus(**i) for i in items], next_cursor=next_cursor)


@router.get("/{run_id}", response_model=RunStatus)
async def get_run(run_id: str, gw: GatewayDep, who: PrincipalDep) -> RunStatus:
    return RunStatus(**await service.get(gw, who, run_id))


@router.post("/{run_id}/cancel", status_code=202)
async def cancel_run(run_id: str, gw: GatewayDep, who: PrincipalDep) -> dict[str, str]:
    return {"run_id": run_id, "status": await service.cancel(gw, who, run_id)}


@router.get("/{run_id}/stream", response_class=StreamingResponse)
async def stream_run(
    run_id: str,
    gw: GatewayDep,
    who: PrincipalDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
) -> StreamingResponse:
    """The run's events from the start (or after `Last-Event-ID`), ending after its `done`."""
    doc = await service.get(gw, who, run_id)
    try:
        resume = resume_point(last_event_id if last_event_id is not None else from_)
    except ApiError as exc:
        raise BadRequest(exc.detail) from None
    key = RunStore.of(gw).stream_key(run_id)
    finished = doc["status"] not in ACTIVE
    after = resume if resume is not None else parse_id(await gw.hub.last_id(key))

    async def snapshot() -> tuple[list[dict[str, Any]], str | None]:
        return [await service.get(gw, who, run_id)], None

    async def frames(start: tuple[int, int]) -> AsyncIterator[bytes]:
        if finished and (resume is None or not await gw.streams.exists(key)):
            # Nothing more will come (live-only on a finished run, or its stream expired):
            # the run's state from Postgres, and the stream ends.
            frame, _ = await reset_frame(Reset("finished" if resume is None else "expired", (0, 0)), snapshot)
            yield frame
            return
        reset = await check_resume(gw.streams, key, start)
        if reset is not None:
            frame, start = await reset_frame(reset, snapshot)
            yield frame
        async for chunk in request_frames(gw.hub, key, start, doc["run_id"]):
            yield chunk

    return await open_stream(gw, who, frames(after))
