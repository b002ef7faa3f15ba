"""Flow runs count in the same limits as requests, whichever way they start: API, webhook or CloudEvent."""

from __future__ import annotations

import uuid
from typing import Any

from cloudevents.core.bindings.http import to_structured_event
from cloudevents.core.v1.event import CloudEvent

from tests.flows.conftest import dag, task
from tests.flows.test_webhooks import _signed


def _assert_refused(response: Any, limit: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "rate_limited" and response.json()["detail"].startswith(limit)
    assert int(response.headers["retry-after"]) >= 1


async def test_runs_from_every_entry_point_share_the_user_rate(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}", rate_limit_user_per_minute=3)
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    flow = dag(tenant, task("a"), flow_id="f1")

    async def by_api(c: Any) -> Any:
        return await c.post("/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": flow})

    async def by_webhook(c: Any) -> Any:
        raw, headers = _signed(secret, {"payload": {"n": 1}})
        return await c.post(f"/v1/webhooks/{webhook_id}", content=raw, headers=headers)

    async def by_cloudevent(c: Any) -> Any:
        message = to_structured_event(
            CloudEvent(
                {"type": "com.relaygate.run.requested", "source": "/tests", "id": uuid.uuid4().hex},
                {"flow_id": "f1", "flow_definition": flow},
            )
        )
        return await c.post("/api/v1/events/cloudevents", content=message.body, headers=message.headers)

    async with gw.client("alice", tenant) as c:
        assert (await c.post("/v1/flows", json={"definition": flow})).status_code == 201
        config = (await c.post("/v1/webhook-configs", json={"flow_id": "f1"})).json()
        secret, webhook_id = config["secret"], config["webhook_id"]
        for start in (by_api, by_webhook, by_cloudevent):
            assert (await start(c)).status_code == 202
        for start in (by_api, by_webhook, by_cloudevent):
            _assert_refused(await start(c), "user_requests_per_minute")
        _assert_refused(await c.post("/api/v1/requests/web", json={"content": "hi"}), "user_requests_per_minute")
    async with gw.client("bob", tenant) as other_user:
        assert (await by_api(other_user)).status_code == 202
    runs = await gw.gateway.db.fetchval("SELECT count(*) FROM flow_runs_audit WHERE tenant_id = $1", tenant)
    assert runs == 4


async def test_unfinished_runs_count_as_running_requests_until_they_end(gateway_app: Any) -> None:
    # No worker takes this feature's runs: they stay PENDING until cancelled.
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}", max_running_requests_per_user=2)
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    body = {"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, task("a"))}
    async with gw.client("alice", tenant) as c:
        first = await c.post("/v1/runs", json={**body, "request_id": "first"})
        assert first.status_code == 202
        # The orphan agent has no worker: its request stays queued.
        request = await c.post("/api/v1/requests/web", json={"content": "hi", "agent_id": "orphan"})
        assert request.status_code == 202
        _assert_refused(await c.post("/v1/runs", json=body), "running_requests_per_user")
        _assert_refused(
            await c.post("/api/v1/requests/web", json={"content": "hi", "new_session": True}),
            "running_requests_per_user",
        )
        replay = await c.post("/v1/runs", json={**body, "request_id": "first"})
        assert replay.status_code == 202 and replay.json() == first.json()
        assert (await c.post(f"/v1/runs/{first.json()['run_id']}/cancel")).json()["status"] == "CANCELLED"
        assert (await c.post("/v1/runs", json=body)).status_code == 202
        _assert_refused(await c.post("/v1/runs", json=body), "running_requests_per_user")
