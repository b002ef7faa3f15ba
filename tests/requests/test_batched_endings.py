"""Concurrent endings share one transaction (common.requests.lifecycle.finish), on real Postgres: each ends
its own attempt with its own usage and gets its session's next request, as one ending at a time would."""

from __future__ import annotations

import asyncio
import uuid

from common.platform.credentials import Principal
from common.requests import lifecycle
from common.requests import repository as request_repo
from common.requests.models import JobPayload
from common.usage.models import Usage
from tests.requests.test_batched_intake import batches, principal, values
from tests.support.app import App


async def running_session(app: App, who: Principal) -> tuple[JobPayload, str]:
    """A session whose first request runs (attempt 1) and whose second waits behind it; (job, second's id)."""
    pool = app.gateway.db
    session_id, first, second = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await request_repo.insert(pool, new_session=True, values=values(first, session_id, who))
    await request_repo.insert(pool, new_session=False, values=values(second, session_id, who))
    await pool.execute("UPDATE request_logs SET status = 'running', started_at = now() WHERE request_id = $1", first)
    return JobPayload(request_id=first, session_id=session_id, tenant_id=who.tenant_id, correlation_id="cid"), second


async def test_concurrent_endings_share_a_transaction_and_each_gets_its_next_request(app: App) -> None:
    pool, who = app.gateway.db, principal()
    sessions = [await running_session(app, who) for _ in range(12)]
    stale = sessions[5][0].model_copy(update={"attempt": 2})  # a lost attempt's late ending changes nothing

    def end(i: int, job: JobPayload) -> asyncio.Future[lifecycle.Ended]:
        usage = Usage(input_tokens=10 + i, output_tokens=100 + i, cost_usd=0.5)
        return asyncio.ensure_future(
            lifecycle.finish(pool, job, status="completed", response=f"reply {i}", agent_id="agent", usage=usage)
        )

    results = await asyncio.gather(*(end(i, stale if i == 5 else job) for i, (job, _) in enumerate(sessions)))
    assert results[5] == (None, None)
    for i, ((job, second), (ended, upcoming)) in enumerate(zip(sessions, results, strict=True)):
        if i == 5:
            continue
        assert ended is not None and ended.usage.input_tokens == 10 + i and ended.usage.output_tokens == 100 + i
        assert ended.user_id == who.user_id
        assert upcoming is not None and upcoming[1].request_id == second and upcoming[1].session_id == job.session_id
    rows = await pool.fetch(
        "SELECT request_id::text, status, response_content, done_pending, input_tokens, cost_usd FROM request_logs"
        " WHERE request_id = ANY($1::uuid[])",
        [job.request_id for job, _ in sessions],
    )
    by_id = {r["request_id"]: r for r in rows}
    for i, (job, _) in enumerate(sessions):
        row = by_id[job.request_id]
        if i == 5:
            assert row["status"] == "running" and not row["done_pending"]
        else:
            assert (row["status"], row["response_content"], row["done_pending"]) == ("completed", f"reply {i}", True)
            assert row["input_tokens"] == 10 + i and float(row["cost_usd"]) == 0.5
    assert batches(app, "requests.finish") >= 1
