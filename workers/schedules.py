"""Firing due schedules from every worker's maintenance loop, each tick exactly once.

A worker claims a due tick briefly, sends its request through the one intake (limits and
budgets included) under an idempotency key naming the tick, then moves the schedule on. A worker that
dies in between leaves the claim to lapse; the next one sends the same key and gets the same request.
"""

from __future__ import annotations

import logging

from common.schedules import firing
from workers.runner import WorkerRuntime

log = logging.getLogger(__name__)


async def fire_due_once(rt: WorkerRuntime) -> int:
    """Fire the due ticks this worker could claim; returns how many it recorded."""
    fired = 0
    for row in await firing.claim_due(rt.db):
        tick = row["next_run_at"]
        outcome = await firing.fire(rt, row, tick.isoformat())
        if await firing.record(rt.db, row["schedule_id"], tick, outcome):
            fired += 1
        log.info(
            "schedule fired",
            extra={
                "schedule_id": row["schedule_id"],
                "status": outcome.status,
                "request_id": outcome.request_id,
                "error": outcome.error,
            },
        )
    return fired
