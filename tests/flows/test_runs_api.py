"""`/v1/runs` and `/v1/flows` in-process: validation, policies, idempotency, cache, registry, isolation."""

from __future__ import annotations

import uuid
from typing import Any

from common.platform.keys import run_stream_key
from tests.flows.conftest import dag, task


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_invalid_dag_lists_every_problem_with_400(gateway_app: Any) -> None:
    gw = await gateway_app()
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        flow = dag(
            tenant,
            task("a", depends_on=("c",)),
            task("b", depends_on=("ghost",)),
            task("c", depends_on=("a",)),
            task("b"),
            task("d", "teleport", input={"x": "{{ tasks.a.output }}"}),
        )
        r = await c.post("/v1/runs", json={"flow_id": "f1", "flow_definition": flow, "input": {}, "tenant_id": tenant})
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert r.json()["error"] == "bad_request"
        assert "duplicate task id 'b'" in detail
        assert "task 'b' depends on unknown task 'ghost'" in detail
        assert any(p.startswith("task 'd': unknown task type 'teleport'") for p in detail)
        assert any(p.startswith("cycle: ") and "a" in p and "c" in p for p in detail)
        assert "task 'd' uses the output of 'a', which is not upstream of it" in detail
        malformed = await c.post("/v1/runs", json={"flow_id": "", "input": "nope"})
        assert malformed.status_code == 400
        fields = {p["field"] for p in malformed.json()["detail"]}
        assert {"body.flow_id", "body.input", "body.tenant_id"} <= fields


async def test_policies_refuse_with_403_naming_the_policy_and_clamp_retries_in_the_audit(gateway_app: Any) -> None:
    gw = await gateway_app()
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        other = await c.post(
            "/v1/runs", json={"flow_id": "f1", "flow_definition": dag("someone-else", task("a")), "tenant_id": tenant}
        )
        assert other.status_code == 403 and "TenantIsolationPolicy" in other.json()["detail"]
        slow = await c.post(
            "/v1/runs",
            json={
                "flow_id": "f1",
                "tenant_id": tenant,
                "flow_definition": dag(tenant, task("a", timeout_seconds=3 * 3600)),
            },
        )
        assert slow.status_code == 403 and "TimeoutLimitPolicy" in slow.json()["detail"]
        token_tenant = await c.post(
            "/v1/runs", json={"flow_id": "f1", "tenant_id": "other", "flow_definition": dag("other", task("a"))}
        )
        assert token_tenant.status_code == 403
        clamped = await c.post(
            "/v1/runs",
            json={
                "flow_id": "f1",
                "tenant_id": tenant,
                "input": {"x": 1},
                "flow_definition": dag(tenant, task("a", retries=50)),
            },
        )
        assert clamped.status_code == 202, clamped.text
    audit = await gw.gateway.db.fetchrow("SELECT * FROM flow_runs_audit WHERE run_id = $1", clamped.json()["run_id"])
    assert audit["user_id"] == "alice" and audit["tenant_id"] == tenant and audit["input_data"] == {"x": 1}
    assert audit["flow_definition"]["tasks"][0]["retries"] == 10
    assert audit["policy_changes"] == [
        {"policy": "RetryLimitPolicy", "task_id": "a", "field": "retries", "from": 50, "to": 10}
    ]


async def test_run_creation_is_idempotent_on_request_id(gateway_app: Any) -> None:
    gw = await gateway_app()
    tenant = _tenant()
    body = {"flow_id": "f1", "tenant_id": tenant, "request_id": "req-1", "flow_definition": dag(tenant, task("a"))}
    async with gw.client("alice", tenant) as c:
        first = await c.post("/v1/runs", json=body)
        again = await c.post("/v1/runs", json=body)
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        assert set(first.json()) == {"run_id", "correlation_id"}
    count = await gw.gateway.db.fetchval("SELECT count(*) FROM flow_runs_audit WHERE tenant_id = $1", tenant)
    assert count == 1


async def test_the_cached_status_follows_every_change(gateway_app: Any) -> None:
    # No worker listens on this feature's queue: the run stays PENDING until cancelled.
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        run = (
            await c.post(
                "/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, task("a"))}
            )
        ).json()
        first = (await c.get(f"/v1/runs/{run['run_id']}")).json()
        assert first["status"] == "PENDING" and first["flow_id"] == "f1" and first["input"] == {}
        cancel = await c.post(f"/v1/runs/{run['run_id']}/cancel")
        assert cancel.json()["status"] == "CANCELLED"
        # The cache entry exists and was rewritten by the change, not dropped: never the stale PENDING.
        assert (await gw.gateway.streams.ttl(f"rg:{{b{_bucket(run['run_id'])}}}:run-status:{run['run_id']}")) > 0
        after = (await c.get(f"/v1/runs/{run['run_id']}")).json()
        assert after["status"] == "CANCELLED" and after["error"] == "cancelled by alice"
        assert (await c.post(f"/v1/runs/{run['run_id']}/cancel")).status_code == 409
        streamed = await c.get(f"/v1/runs/{run['run_id']}/stream")
        assert streamed.text.count("event: ") == 2 and "event: run.cancelled" in streamed.text
        live_only = await c.get(f"/v1/runs/{run['run_id']}/stream", params={"from": "$"})
        assert "event: stream.reset" in live_only.text and '"reason":"finished"' in live_only.text
        assert (await c.get(f"/v1/runs/{run['run_id']}/stream", headers={"Last-Event-ID": "x"})).status_code == 400
        await gw.gateway.streams.delete(run_stream_key(run["run_id"], 256))
        expired = await c.get(f"/v1/runs/{run['run_id']}/stream")
        assert "event: stream.reset" in expired.text and '"status":"CANCELLED"' in expired.text
    history = await gw.gateway.db.fetch(
        "SELECT status FROM flow_run_status_history WHERE run_id = $1 ORDER BY id", run["run_id"]
    )
    assert [h["status"] for h in history] == ["PENDING", "CANCELLED"]


def _bucket(run_id: str) -> int:
    from common.platform.keys import bucket

    return bucket(run_id, 256)


async def test_registry_versions_search_and_runs_from_the_registry(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = _tenant()
    async with gw.client("alice", tenant) as c:
        created = await c.post(
            "/v1/flows",
            json={"definition": dag(tenant, task("a"), flow_id="greet"), "name": "Greeter", "tags": ["demo"]},
        )
        assert created.status_code == 201 and created.json()["version"] == 1
        again = await c.post("/v1/flows", json={"definition": dag(tenant, task("a"), flow_id="greet")})
        assert again.status_code == 409
        two_tasks = dag(tenant, task("a"), task("b", depends_on=("a",)), flow_id="greet")
        v2 = await c.put("/v1/flows/greet", json={"definition": two_tasks, "name": "Greeter", "tags": ["demo"]})
        assert v2.json()["version"] == 2
        bad = await c.put(
            "/v1/flows/greet", json={"definition": dag(tenant, task("a", depends_on=("zz",)), flow_id="greet")}
        )
        assert bad.status_code == 400
        assert (await c.get("/v1/flows/greet")).json()["version"] == 2
        assert len((await c.get("/v1/flows/greet", params={"version": 1})).json()["definition"]["tasks"]) == 1
        assert [f["flow_id"] for f in (await c.get("/v1/flows", params={"tag": "demo"})).json()["items"]] == ["greet"]
        assert [f["flow_id"] for f in (await c.get("/v1/flows", params={"name": "greet"})).json()["items"]] == ["greet"]
        assert (await c.get("/v1/flows", params={"tag": "nope"})).json()["items"] == []
        latest = (await c.post("/v1/runs", json={"flow_id": "greet", "tenant_id": tenant})).json()
        pinned = (await c.post("/v1/runs", json={"flow_id": "greet", "tenant_id": tenant, "version": 1})).json()
        missing = await c.post("/v1/runs", json={"flow_id": "nope", "tenant_id": tenant})
        assert missing.status_code == 404
        listed = (await c.get("/v1/runs", params={"flow_id": "greet", "limit": 1})).json()
        assert [r["run_id"] for r in listed["items"]] == [pinned["run_id"]]
        rest = (await c.get("/v1/runs", params={"flow_id": "greet", "cursor": listed["next_cursor"]})).json()
        assert [r["run_id"] for r in rest["items"]] == [latest["run_id"]] and rest["next_cursor"] is None
        assert (await c.get("/v1/runs", params={"status": "bogus"})).status_code == 400
        assert (await c.delete("/v1/flows/greet")).status_code == 204
        assert (await c.get("/v1/flows/greet")).status_code == 404
        again = await c.post("/v1/flows", json={"definition": dag(tenant, task("a"), flow_id="greet")})
        assert again.status_code == 201 and again.json()["version"] == 3
    versions = {
        r["run_id"]: r["flow_version"]
        for r in await gw.gateway.db.fetch(
            "SELECT run_id, flow_version FROM flow_runs_audit WHERE tenant_id = $1", tenant
        )
    }
    assert versions == {latest["run_id"]: "2", pinned["run_id"]: "1"}


async def test_other_tenants_see_404_on_every_route(gateway_app: Any) -> None:
    gw = await gateway_app(flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    tenant = _tenant()
    async with gw.client("alice", tenant) as owner, gw.client("alice", _tenant()) as intruder:
        await owner.post("/v1/flows", json={"definition": dag(tenant, task("a"), flow_id="private")})
        run = (await owner.post("/v1/runs", json={"flow_id": "private", "tenant_id": tenant})).json()
        for method, path in (
            ("GET", f"/v1/runs/{run['run_id']}"),
            ("POST", f"/v1/runs/{run['run_id']}/cancel"),
            ("GET", f"/v1/runs/{run['run_id']}/stream"),
            ("GET", "/v1/flows/private"),
            ("DELETE", "/v1/flows/private"),
        ):
            assert (await intruder.request(method, path)).status_code == 404, (method, path)
        theirs = await intruder.put("/v1/flows/private", json={"definition": dag(tenant, task("a"), flow_id="private")})
        assert theirs.status_code == 403  # a definition naming the owner's tenant is refused outright
        assert (await owner.get("/v1/flows/private")).json()["version"] == 1
        assert (await intruder.get("/v1/runs")).json()["items"] == []
        assert (await intruder.get("/v1/flows")).json()["items"] == []
        assert (await owner.get(f"/v1/runs/{run['run_id']}")).status_code == 200
    async with gw.client("alice", tenant) as c:
        c.headers.pop("Authorization")
        assert (await c.get("/v1/runs")).status_code == 401
