"""Schedules: stored per user and validated here; firing them is common.schedules.firing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from api.deps import Gateway
from api.errors import Invalid, NotFound
from common.delivery.jobs import SlackTarget
from common.platform.credentials import Principal
from common.schedules import cron as schedules

COLUMNS = (
    "schedule_id::text, cron, timezone, agent_id, content, session_id::text, deliver, enabled, next_run_at,"
    " last_run_at, last_request_id::text, last_status, last_error, runs, created_at, updated_at"
)


async def create(
    gw: Gateway,
    who: Principal,
    *,
    cron: str,
    timezone: str,
    content: str,
    agent_id: str | None = None,
    session_id: str | None = None,
    deliver: bool = False,
    slack_target: SlackTarget | None = None,
) -> dict[str, Any]:
    """Store a schedule for `who` (validated) and return it, `next_run_at` included."""
    validate(gw, cron, timezone, agent_id)
    await own_session(gw, who, session_id)
    row = await gw.db.fetchrow(
        f"""
        INSERT INTO schedules (schedule_id, tenant_id, user_id, cron, timezone, agent_id, content, session_id,
                               deliver, next_run_at, slack_target)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {COLUMNS}
        """,
        uuid.uuid4(),
        who.tenant_id,
        who.user_id,
        " ".join(cron.split()),
        timezone,
        agent_id,
        content,
        uuid.UUID(session_id) if session_id else None,
        deliver,
        schedules.next_run(cron, timezone, datetime.now(UTC)),
        slack_target.model_dump() if slack_target else None,
    )
    return dict(row)


def validate(gw: Gateway, cron: str, timezone: str, agent_id: str | None) -> None:
    try:
        schedules.check(cron, timezone)
    except schedules.ScheduleError as exc:
        raise Invalid(str(exc)) from None
    if agent_id and gw.agents.get(agent_id) is None:
        raise Invalid(f"unknown agent_id {agent_id!r}")


async def own_session(gw: Gateway, who: Principal, session_id: str | None) -> None:
    if session_id is None:
        return
    try:
        found = await gw.db.fetchval(
            "SELECT 1 FROM request_sessions WHERE session_id = $1 AND tenant_id = $2 AND user_id = $3",
            uuid.UUID(session_id),
            who.tenant_id,
            who.user_id,
        )
    except ValueError:
        found = None
    if not found:
        raise NotFound("session not found")
