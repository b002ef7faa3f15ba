"""/api/v1/schedules: a user's scheduled runs (cron in a time zone), and firing one now."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.deps import GatewayDep, PrincipalDep, require_scope
from api.errors import (
    Conflict,
    Invalid,
    NotFound,
    TooManyRequests,
    responses,
)
from api.schedules import service
from common.platform.credentials import SCOPE_REQUESTS, Principal
from common.requests.models import MAX_CONTENT, reject_unstorable
from common.schedules import cron as schedules
from common.schedules import firing

router = APIRouter(
    prefix="/api/v1/schedules",
    tags=["schedules"],
    dependencies=[Depends(require_scope(SCOPE_REQUESTS))],
    responses=responses(NotFound, Conflict, Invalid, TooManyRequests),
)

ScheduleId = Annotated[uuid.UUID, Path()]


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _no_nul = model_validator(mode="before")(reject_unstorable)


class NewSchedule(_Fields):
    cron: str = Field(min_length=9, max_length=200, description="five fields: minute hour day month weekday")
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    content: str = Field(min_length=1, max_length=MAX_CONTENT)
    agent_id: str | None = Field(default=None, max_length=255)
    session_id: uuid.UUID | None = None
    new_session: bool = True  # each firing starts a session, unless session_id names one to send into
    deliver: bool = False


class ScheduleChange(_Fields):
    cron: str | None = Field(default=None, min_length=9, max_length=200)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    content: str | None = Field(default=None, min_length=1, max_length=MAX_CONTENT)
    agent_id: str | None = Field(default=None, max_length=255)
    session_id: uuid.UUID | None = None
    new_session: bool | None = None
    deliver: bool | None = None
    enabled: bool | None = None


async def _get(gw: GatewayDep, who: Principal, schedule_id: uuid.UUID) -> dict[str, Any]:
    row = await gw.db.fetchrow(
        f"SELECT {service.COLUMNS} FROM schedules WHERE schedule_id = $1 AND tenant_id = $2 AND user_id = $3",
        schedule_id,
        who.tenant_id,
        who.user_id,
    )
    if row is None:
        raise NotFound("schedule not found")
    return dict(row)


@router.post("", status_code=201)
async def create(body: NewSchedule, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await service.create(
        gw,
        who,
        cron=body.cron,
        timezone=body.timezone,
        content=body.content,
        agent_id=body.agent_id,
        session_id=str(body.session_id) if body.session_id else None,
        deliver=body.deliver,
    )


@router.get("")
async def list_schedules(gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    rows = await gw.db.fetch(
        f"SELECT {service.COLUMNS} FROM schedules WHERE tenant_id = $1 AND user_id = $2 ORDER BY id LIMIT 1000",
        who.tenant_id,
        who.user_id,
    )
    return {"items": [dict(r) for r in rows]}


@router.get("/{schedule_id}")
async def get_schedule(schedule_id: ScheduleId, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await _get(gw, who, schedule_id)


@router.patch("/{schedule_id}")
async def change(schedule_id: ScheduleId, body: ScheduleChange, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    current = await _get(gw, who, schedule_id)
    cron = " ".join((body.cron or current["cron"]).split())
    timezone = body.timezone or current["timezone"]
    agent_id = body.agent_id if "agent_id" in body.model_fields_set else current["agent_id"]
    service.validate(gw, cron, timezone, agent_id)
    session = current["session_id"]
    if body.new_session:
        session = None
    elif body.session_id is not None:
        session = str(body.session_id)
        await service.own_session(gw, who, session)
    enabled = current["enabled"] if body.enabled is None else body.enabled
    rescheduled = (cron, timezone) != (current["cron"], current["timezone"]) or (enabled and not current["enabled"])
    following = schedules.next_run(cron, timezone, datetime.now(UTC)) if rescheduled else current["next_run_at"]
    row = await gw.db.fetchrow(
        f"""
        UPDATE schedules SET cron = $3, timezone = $4, agent_id = $5, content = $6, session_id = $7, deliver = $8,
               enabled = $9, next_run_at = $10, updated_at = now()
         WHERE schedule_id = $1 AND tenant_id = $2 AND user_id = $11 RETURNING {service.COLUMNS}
        """,
        schedule_id,
        who.tenant_id,
        cron,
        timezone,
        agent_id,
        body.content or current["content"],
        session,
        current["deliver"] if body.deliver is None else body.deliver,
        enabled,
        following,
        who.user_id,
    )
    if row is None:
        raise NotFound("schedule not found")
    return dict(row)


@router.delete("/{schedule_id}", status_code=204)
async def delete(schedule_id: ScheduleId, gw: GatewayDep, who: PrincipalDep) -> None:
    result: str = await gw.db.execute(
        "DELETE FROM schedules WHERE schedule_id = $1 AND tenant_id = $2 AND user_id = $3",
        schedule_id,
        who.tenant_id,
        who.user_id,
    )
    if not result.endswith(" 1"):
        raise NotFound("schedule not found")


@router.post("/{schedule_id}/run", status_code=202)
async def run_now(schedule_id: ScheduleId, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    await _get(gw, who, schedule_id)
    row = await gw.db.fetchrow(f"SELECT {firing.FIRING} FROM schedules WHERE schedule_id = $1", schedule_id)
    if row is None:
        raise NotFound("schedule not found")
    outcome = await firing.fire(gw, row, f"now:{uuid.uuid4()}")
    await firing.record(gw.db, str(schedule_id), None, outcome)
    if outcome.status == "refused":
        refusal = TooManyRequests if outcome.error and outcome.error.startswith("rate_limited") else Conflict
        headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after is not None else None
        raise refusal(outcome.error or "refused", headers=headers)
    return {"schedule_id": str(schedule_id), "request_id": outcome.request_id, "status": "queued"}
