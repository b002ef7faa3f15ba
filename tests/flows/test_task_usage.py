"""Flow `llm` and `agent` tasks spend tokens like requests do: an llm call's usage is in its output, the
run's user's usage (API and budgets) and the counters; over a budget both are refused, without retries."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client import REGISTRY

from tests.flows.conftest import Executor, start_run, task
from workers import flow_usage, model


def _counted(direction: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "relaygate_usage_tokens_total",
            {"agent": flow_usage.AGENT, "model": model.OFFLINE_MODEL, "direction": direction},
        )
        or 0.0
    )


async def test_an_llm_task_records_its_usage_for_the_runs_user(gateway_app: Any, executor: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    ex: Executor = await executor(offline_model_tokens_per_second=1000)
    model.configure()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    before = _counted("output")
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(c, tenant, task("ask", "llm", input={"prompt": "three words here"}))
        assert await ex.run(run_id, tenant) == "completed"
        output = (await c.get(f"/v1/runs/{run_id}")).json()["output"]["tasks"]["ask"]
        used = output["usage"]
        assert used["input_tokens"] == 3 and used["output_tokens"] > 0 and used["cost_usd"] == 0
        shown = (await c.get("/api/v1/usage", params={"group_by": "agent"})).json()["rows"]
    assert [(r["agent"], r["input_tokens"], r["output_tokens"], r["requests"]) for r in shown] == [
        (flow_usage.AGENT, 3, used["output_tokens"], 0)
    ]
    assert _counted("output") - before == used["output_tokens"]


async def test_over_budget_llm_and_agent_tasks_are_refused_without_retries(gateway_app: Any, executor: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    ex: Executor = await executor(budget_user_tokens_per_day=5, offline_model_tokens_per_second=1000)
    model.configure()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with gw.client("alice", tenant) as c:
        run_id = await start_run(
            c,
            tenant,
            task("a", "llm", input={"prompt": "spend it all"}),
            task("b", "llm", ("a",), input={"prompt": "and more"}, retries=2),
        )
        assert await ex.run(run_id, tenant) == "failed"
        events = await ex.events(run_id)
        assert [e.data["task_id"] for e in events if e.type == "task.completed"] == ["a"]
        failed = next(e.data for e in events if e.type == "task.failed")
        assert failed["task_id"] == "b" and failed["tries"] == 1
        assert failed["error"].startswith("OverBudget: budget: user tokens per day:"), failed
        agent_run = await start_run(c, tenant, task("ask", "agent", input={"content": "hello"}))
        assert await ex.run(agent_run, tenant) == "failed"
        error = next(e.data for e in await ex.events(agent_run) if e.type == "task.failed")["error"]
        assert error.startswith("OverBudget: budget: user tokens per day:"), error
    assert not await gw.gateway.db.fetchval("SELECT count(*) FROM request_logs WHERE tenant_id = $1", tenant)
