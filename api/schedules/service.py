"""Schedules: stored per user, fired through the ordinary intake (api.requests.service.accept) with the
same limits and budgets; a refused firing is recorded and the schedule moves on to its next tick."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg

from api.deps import Gateway
from api.errors import ApiError, Invalid, NotFound
from api.requests import service as requests
from api.requests.schemas import _RequestBody
from common.delivery import jobs as delivery
from common.delivery.jobs import SlackFollow, SlackTarget
from common.platform.credentials import Principal
from common.requests.models import IntegrationType
from common.schedules import cron as schedules
from common.streams.protocol import format_id, id_before, parse_id

COLUMNS = (
    "schedule_id::text, cron, timezone, agent_id, content, session_id::text, deliver, enabled, next_run_at,"
    " last_run_at, last_request_id::text, last_status, last_error, runs, created_at, updated_at"
)

FIRING = "schedule_id::text, tenant_id, user_id, agent_id, content, session_id::text, deliver, slack_target"

# A claimed tick not finished within this (its worker died) is fired again, under the same idempotency key.
CLAIM_SECONDS = 15


class ScheduledRequest(_RequestBody):
    """The request a firing sends for the schedule's user."""

    schedule_id: str = ""
    deliver: bool = False

    def integration(self) -> IntegrationType:
        return "generic"

    def integration_context(self) -> dict[str, Any]:
        return {"schedule_id": self.schedule_id, "deliver": self.deliver}


class Firing(NamedTuple):
    """A firing's outcome: `sent` with its request, or `refused` with why (and the refusal's headers,
    e.g. `Retry-After` of a limit or budget, for a caller that answers it)."""

    status: str
    request_id: str | None
    error: str | None = None
    headers: dict[str, str] = {}


def owner(row: asyncpg.Record) -> Principal:
    return Principal(tenant_id=row["tenant_id"], user_id=row["user_id"])


async def fire(gw: Gateway, row: asyncpg.Record, tick: str) -> Firing:
    """Send one firing through the ordinary intake."""
    body = ScheduledRequest(
        content=row["content"],
        agent_id=row["agent_id"],
        session_id=row["session_id"],
        new_session=row["session_id"] is None,
        schedule_id=str(row["schedule_id"]),
        deliver=row["deliver"],
    )
    try:
        accepted = await requests.accept(
            gw,
            owner(row),
            body,
            idempotency_key=f"schedule:{row['schedule_id']}:{tick}",
            correlation_id=f"schedule-{row['schedule_id']}",
        )
    except ApiError as exc:
        return Firing("refused", None, f"{exc.error}: {exc.detail}", exc.headers)
    target = row["slack_target"]
    if target and not accepted.replayed and accepted.stream_entry_id:
        await delivery.enqueue_slack(
            gw.queue,
            SlackFollow(
                request_id=accepted.request_id,
                session_id=accepted.session_id,
                tenant_id=row["tenant_id"],
                user_id=row["user_id"],
                after=format_id(id_before(parse_id(accepted.stream_entry_id))),
                target=SlackTarget.model_validate(target),
                correlation_id=f"schedule-{row['schedule_id']}",
            ),
        )
    return Firing("sent", accepted.request_id)


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


async def record(
    db: asyncpg.Pool | asyncpg.Connection, schedule_id: str, tick: datetime | None, outcome: Firing
) -> bool:
    """Store a firing's outcome; for a tick (not a run-now), move next_run_at on past now (one catch-up at
    most) only if the tick is still the current one. False when another worker already did."""
    row = await db.fetchrow("SELECT cron, timezone FROM schedules WHERE schedule_id = $1", schedule_id)
    if row is None:
        return False
    now = datetime.now(UTC)
    following = schedules.next_run(row["cron"], row["timezone"], max(now, tick or now)) if tick else None
    result: str = await db.execute(
        """
        UPDATE schedules
           SET next_run_at = coalesce($3, next_run_at), claimed_until = CASE WHEN $2::timestamptz IS NULL
               THEN claimed_until END, last_run_at = now(), last_request_id = $4, last_status = $5, last_error = $6,
               runs = runs + 1, updated_at = now()
         WHERE schedule_id = $1 AND ($2::timestamptz IS NULL OR next_run_at = $2)
        """,
        schedule_id,
        tick,
        following,
        outcome.request_id,
        outcome.status,
        outcome.error,
    )
    return result.endswith(" 1")


async def claim_due(db: asyncpg.Pool, limit: int = 20) -> list[asyncpg.Record]:
    """Take the due ticks no live worker holds (a short claim; the tick itself moves on at `record`)."""
    return list(
        await db.fetch(
            f"""
        UPDATE schedules SET claimed_until = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM schedules
                       WHERE enabled AND next_run_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
                       ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED)
        RETURNING {FIRING}, next_run_at
        """,
            limit,
            CLAIM_SECONDS,
        )
    )


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
