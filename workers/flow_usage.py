"""What a flow `llm` task used, kept as a request's usage is: the daily rollup that the usage API and
the budgets read, the budgets' count in Redis (with its soft threshold) and the Prometheus counters.

An `agent` task needs none of this: its request is an ordinary request, metered by its own worker.
"""

from __future__ import annotations

import logging

from common.platform import metrics
from common.usage import budgets
from common.usage.models import Usage
from workers import metering, model
from workers.runner import WorkerRuntime, persist

log = logging.getLogger(__name__)

AGENT = "flow:llm"  # the agent the rollup, the usage API and the counters name for flow llm tasks

_ROLLUP = """
INSERT INTO usage_daily AS u (tenant_id, day, user_id, agent_id, model, shard, input_tokens, output_tokens, cost_usd)
VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2, $3, $4, usage_shard(), $5, $6, $7)
ON CONFLICT (tenant_id, day, user_id, agent_id, model, shard) DO UPDATE
   SET input_tokens = u.input_tokens + EXCLUDED.input_tokens,
       output_tokens = u.output_tokens + EXCLUDED.output_tokens, cost_usd = u.cost_usd + EXCLUDED.cost_usd
"""


async def measure(rt: WorkerRuntime, meter: metering.Meter, reply: str) -> Usage:
    """What one llm call used; a failure to count is logged and counts nothing (it never fails the task)."""
    try:
        return await metering.measure(meter, meter.model, reply, rt.agents.prices, model.litellm_module)
    except Exception as exc:
        log.warning("counting a flow task's usage failed", extra={"model": meter.model, "error": repr(exc)})
        return Usage()


async def record(
    rt: WorkerRuntime, tenant_id: str, user_id: str, model_name: str, usage: Usage, correlation_id: str
) -> None:
    """Add one llm call's usage to its user's rollup (retried across store errors), counters and budgets."""
    if not (usage.input_tokens or usage.output_tokens or usage.cost_usd):
        return
    await persist(
        "flow usage",
        lambda: rt.db.execute(
            _ROLLUP, tenant_id, user_id, AGENT, model_name, usage.input_tokens, usage.output_tokens, usage.cost_usd
        ),
    )
    metrics.count_usage(AGENT, model_name, usage)
    await budgets.count(rt.streams, tenant_id, user_id, usage, correlation_id)
