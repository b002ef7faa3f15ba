"""A person may decide a call from its `tool.approval_required` event on, while its attempt still runs the
step's other calls (the web UI shows the buttons then). The decision is kept, and the attempt, parking,
queues the request again at once; a decision after the park queues it itself. Either order starts the
next attempt exactly once. On real Postgres, through the approvals route."""

from __future__ import annotations

import uuid

import httpx

from common.agents import tool_steps
from common.platform.credentials import Principal
from common.requests import lifecycle
from common.requests import repository as request_repo
from common.requests.models import JobPayload
from tests.requests.test_batched_intake import principal, values
from tests.support.app import App

CALL = "call-1"


async def awaiting(app: App) -> tuple[Principal, JobPayload]:
    """A request whose attempt 1 runs a step with CALL awaiting approval and has not parked yet."""
    who, request_id, session_id = principal(), str(uuid.uuid4()), str(uuid.uuid4())
    await request_repo.insert(app.gateway.db, new_session=True, values=values(request_id, session_id, who))
    await app.gateway.db.execute(
        "UPDATE request_logs SET status = 'running', started_at = now(), feature = 'nobody-serves-this',"
        " lease_expires_at = now() + interval '1 minute' WHERE request_id = $1",
        request_id,
    )
    await tool_steps.begin(app.gateway.db, request_id, 1, 1, "", [(CALL, "t.record", {"n": 1})], frozenset({CALL}))
    return who, JobPayload(request_id=request_id, session_id=session_id, tenant_id=who.tenant_id)


async def deny(app: App, who: Principal, request_id: str, call_id: str = CALL) -> httpx.Response:
    async with app.client(who.user_id, who.tenant_id) as c:
        return await c.post(f"/api/v1/requests/{request_id}/approvals/{call_id}", json={"approve": False})


async def row(app: App, request_id: str) -> tuple[str, int]:
    found = await app.gateway.db.fetchrow("SELECT status, attempt FROM request_logs WHERE request_id = $1", request_id)
    return found["status"], found["attempt"]


async def test_a_decision_before_the_park_queues_the_next_attempt_at_once(app: App) -> None:
    who, job = await awaiting(app)
    r = await deny(app, who, job.request_id)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text  # was 409: the click was lost
    again = await deny(app, who, job.request_id)
    assert again.status_code == 409 and again.json()["detail"] == f"tool call {CALL} is denied, not awaiting a decision"
    parked, upcoming = await lifecycle.park(app.gateway.db, job, expires_in_seconds=60)
    assert not parked and upcoming is not None and upcoming[1].attempt == 2
    assert await row(app, job.request_id) == ("queued", 2)


async def test_a_decision_after_the_park_queues_the_request_itself(app: App) -> None:
    who, job = await awaiting(app)
    assert await lifecycle.park(app.gateway.db, job, expires_in_seconds=60) == (True, None)
    assert await row(app, job.request_id) == ("waiting", 1)
    r = await deny(app, who, job.request_id)
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    assert await row(app, job.request_id) == ("queued", 2)


async def test_a_call_the_request_does_not_have_is_404(app: App) -> None:
    who, job = await awaiting(app)
    r = await deny(app, who, job.request_id, "no-such-call")
    assert r.status_code == 404, r.text
