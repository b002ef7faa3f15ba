"""Flow runs and their `llm` and `agent` tasks, counted in the same limits as requests (common.requests.limits).

A run counts as a request of integration `flow` and holds a place among its user's unfinished
requests until it ends; an `agent` task's request is a `tool` request like any other; each `llm`
task try counts against the per-minute rates (its run already holds the running place). Work that
spends tokens (`budgeted`: `llm` and `agent` tasks) is checked against its user's budgets too.
"""

from __future__ import annotations

import logging
import uuid

import asyncpg

from common.platform.outages import REDIS_ERRORS
from common.requests.limits import Limits, Refusal
from common.usage import budgets
from common.usage.budgets import Budget

log = logging.getLogger(__name__)

RUN_INTEGRATION = "flow"

_UNFINISHED = """
SELECT request_id::text AS id FROM request_logs
 WHERE request_id = ANY($1::uuid[]) AND tenant_id = $3 AND status IN ('queued', 'running', 'waiting')
UNION ALL
SELECT run_id FROM flow_runs_audit
 WHERE run_id = ANY($2::text[]) AND tenant_id = $3 AND status IN ('PENDING', 'RUNNING')
"""


def _uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def unfinished(db: asyncpg.Pool | asyncpg.Connection, tenant_id: str, ids: list[str]) -> set[str]:
    """Which of these requests and flow runs are still queued or running."""
    request_ids = [rid for rid in map(_uuid, ids) if rid]
    rows = await db.fetch(_UNFINISHED, request_ids, ids, tenant_id)
    return {r["id"] for r in rows}


async def admit(
    limits: Limits,
    db: asyncpg.Pool,
    tenant_id: str,
    user_id: str,
    integration: str,
    work_id: str,
    *,
    lease_seconds: float | None = None,
    count_running: bool = True,
    budgeted: bool = False,
) -> Refusal | None:
    """Count one run or task against the limits (and, `budgeted`, the user's budgets); None when admitted.

    The limits live in the streams Redis. When it is unreachable the work is admitted uncounted
    (Postgres is a run's record, and a run accepted then is swept to the queue later).
    """

    async def still_active(members: list[str]) -> set[str]:
        return await unfinished(db, tenant_id, members)

    async def seed(budget: Budget) -> None:
        await budgets.seed(limits.redis, db, budget)

    spendable = (
        budgets.budgets_for(limits.settings, await budgets.overrides(db, tenant_id, user_id), tenant_id, user_id)
        if budgeted
        else []
    )
    try:
        return await limits.admit_request(
            tenant_id,
            user_id,
            integration,
            work_id,
            still_active,
            lease_seconds=lease_seconds,
            count_running=count_running,
            budgets=spendable,
            seed=seed,
        )
    except REDIS_ERRORS as exc:
        log.warning("limits unavailable; admitted uncounted", extra={"work_id": work_id, "error": repr(exc)})
        return None
