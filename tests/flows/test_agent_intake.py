"""A flow `agent` task sends its request through the one request intake: limited, counted, announced and
idempotent like any request (in-process executor on the real Postgres and Valkey)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.flows.conftest import Executor, dag, task


async def test_an_agent_task_request_is_limited_and_counted_like_any_request(gateway_app: Any, executor: Any) -> None:
    # No worker serves the `orphan` agent: its request stays queued while the test looks at it.
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}", max_running_requests_per_user=2)
    ex: Executor = await executor(max_running_requests_per_user=2)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    db = gw.gateway.db
    async with gw.client("alice", tenant) as c:
        r = await c.post(
            "/v1/runs",
            json={
                "flow_id": "f1",
                "tenant_id": tenant,
                "flow_definition": dag(tenant, task("ask", "agent", input={"content": "hello", "agent_id": "orphan"})),
            },
        )
        run_id = r.json()["run_id"]
        running = asyncio.create_task(ex.run(run_id, tenant))
        try:
            row = None
            while row is None:
                assert not running.done(), running
                row = await db.fetchrow(
                    "SELECT request_id::text, session_id::text, idempotency_key, status"
                    " FROM request_logs WHERE tenant_id = $1",
                    tenant,
                )
                await asyncio.sleep(0.05)
            assert row["status"] == "queued" and row["idempotency_key"] == f"flow:{run_id}:ask:1"
            session = await db.fetchrow(
                "SELECT total_requests, last_request_id::text FROM request_sessions WHERE session_id = $1",
                uuid.UUID(row["session_id"]),
            )
            assert (session["total_requests"], session["last_request_id"]) == (1, row["request_id"])
            # The run and its agent request are this user's two running requests: a third is refused.
            refused = await c.post("/api/v1/requests/web", json={"content": "hi", "new_session": True})
            assert refused.status_code == 429 and refused.json()["detail"].startswith("running_requests_per_user")
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
