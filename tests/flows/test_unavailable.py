"""Flow routes when Postgres or Redis goes away: 503 with the JSON error shape, nothing half-done."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import Infra
from tests.flows.conftest import dag, task
from tests.support.proxy import proxy_postgres, proxy_redis


async def test_database_down_is_503_and_redis_down_still_accepts_runs(infra: Infra, gateway_app: Any) -> None:
    pg, pg_url = proxy_postgres(infra.database_url)
    rd, rd_url = proxy_redis(infra.redis_url)
    try:
        gw = await gateway_app(database_url=pg_url, redis_url=rd_url, flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        body = {"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, task("a"))}
        async with gw.client("alice", tenant) as c:
            run_id = (await c.post("/v1/runs", json=body)).json()["run_id"]
            pg.cut()
            down = await c.post("/v1/runs", json=body)
            assert down.status_code == 503 and down.json()["error"] == "service_unavailable"
            assert (await c.get("/v1/runs")).status_code == 503
            assert (await c.post("/v1/flows", json={"definition": dag(tenant, task("a"))})).status_code == 503
            cached = await c.get(f"/v1/runs/{run_id}")  # served from the cache while Postgres is away
            assert cached.status_code == 200 and cached.json()["status"] == "PENDING"
            pg.restore()
            rd.cut()
            # Postgres is the record: the run is accepted; the workers' sweep queues it once Redis is back.
            accepted = await c.post("/v1/runs", json={**body, "request_id": "while-redis-is-down"})
            assert accepted.status_code == 202, accepted.text
            rd.restore()
            status = await c.get(f"/v1/runs/{accepted.json()['run_id']}")
            assert status.status_code == 200 and status.json()["status"] == "PENDING"
    finally:
        pg.close()
        rd.close()
