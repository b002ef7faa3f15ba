"""Firing a schedule: each tick through the one intake (common.requests.intake) with the same limits and
budgets as any request; a refused firing is recorded and the schedule moves on to its next tick.

The workers fire due ticks (workers/schedules.py); the gateway's run-now route fires one at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg

from common.delivery import jobs as delivery
from common.delivery.jobs import SlackFollow, SlackTarget
from common.platform.credentials import Principal
from common.requests import intake
from common.requests.models import IntegrationType, RequestBody
from common.requests.stores import IntakeStores
from common.schedules import cron as schedules
from common.streams.protocol import format_id, id_before, parse_id

FIRING = "schedule_id::text, tenant_id, user_id, agent_id, content, session_id::text, deliver, slack_target"

# A claimed tick not finished within this (its worker died) is fired again, under the same idempotency key.
CLAIM_SECONDS = 15


class ScheduledRequest(RequestBody):
    """The request a firing sends for the schedule's user."""

    schedule_id: str = ""
    deliver: bool = False

    def integration(self) -> IntegrationType:
        return "generic"

    def integration_context(self) -> dict[str, Any]:
        return {"schedule_id": self.schedule_id, "deliver": self.deliver}


class Firing(NamedTuple):
    """A firing's outcome: `sent` with its request, or `refused` with why (and, for a limit or budget, the
    seconds after which to try again, for a caller that answers it)."""

    status: str
    request_id: str | None
    error: str | None = None
    retry_after: int | None = None


def owner(row: asyncpg.Record) -> Principal:
    return Principal(tenant_id=row["tenant_id"], user_id=row["user_id"])


async def fire(stores: IntakeStores, row: asyncpg.Record, tick: str) -> Firing:
    """Send one firing through the one intake."""
    body = ScheduledRequest(
        content=row["content"],
        agent_id=row["agent_id"],
        session_id=row["session_id"],
        new_session=row["session_id"] is None,
        schedule_id=str(row["schedule_id"]),
        deliver=row["deliver"],
    )
    try:
        admitted = await intake.accept(
            stores,
            owner(row),
            body,
            idempotency_key=f"schedule:{row['schedule_id']}:{tick}",
            correlation_id=f"schedule-{row['schedule_id']}",
        )
    except intake.Refused as exc:
        retry_after = exc.refusal.retry_after if isinstance(exc, intake.Limited) else None
        return Firing("refused", None, f"{exc.code}: {exc.detail}", retry_after)
    target = row["slack_target"]
    # A replay follows too (a worker died between the intake and this enqueue): see api/slack/service.start.
    if target and admitted.stream_entry_id:
        await delivery.enqueue_slack(
            stores.queue,
            SlackFollow(
                request_id=admitted.request_id,
                session_id=admitted.session_id,
                tenant_id=row["tenant_id"],
                user_id=row["user_id"],
                after=format_id(id_before(parse_id(admitted.stream_entry_id))),
                target=SlackTarget.model_validate(target),
                correlation_id=f"schedule-{row['schedule_id']}",
            ),
        )
    return Firing("sent", admitted.request_id)


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
