"""Pre- and post-task policies in the executor, run in-process on the real Postgres and Valkey."""

from __future__ import annotations

import uuid
from typing import Any

from arq.connections import ArqRedis

from common.agents.registry import load_agents
from common.flows.runs import FAILED
from common.platform import db
from common.platform.keys import run_stream_key
from common.queue import enqueue as queue
from common.streams.protocol import Event
from common.streams.protocol import connect as connect_streams
from common.streams.writer import StreamWriter
from tests.conftest import ROOT, Infra, settings_for
from tests.flows.conftest import dag, task
from workers.flows import process_flow_run
from workers.runner import WorkerRuntime

POLICIES = (
    "common.flows.policies:TenantIsolationPolicy,tests.flows.test_policies:NoHttpPolicy,"
    "tests.flows.test_policies:OutputSizePolicy"
)


async def test_task_policies_fail_a_task_without_retrying_it(infra: Infra, gateway_app: Any) -> None:
    settings = settings_for(infra, flow_policies=POLICIES, flow_feature=f"idle-{uuid.uuid4().hex[:6]}")
    gw = await gateway_app(flow_policies=POLICIES, flow_feature=settings.flow_feature)
    streams = connect_streams(infra.redis_url, cluster=False, max_connections=8)
    arq: ArqRedis = await queue.connect(infra.redis_url)
    pool = await db.create_pool(infra.database_url)
    rt = WorkerRuntime(
        settings=settings,
        db=pool,
        streams=streams,
        queue=arq,
        writer=StreamWriter(streams, buckets=settings.stream_buckets, maxlen=1000, ttl_seconds=600),
        agents=load_agents(ROOT / "tests" / "agents.yaml"),
    )
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    try:
        async with gw.client("alice", tenant) as c:
            outcomes = {}
            for name, flow_task in (
                ("pre", task("call", "http", input={"url": "http://127.0.0.1:9/"}, retries=3)),
                ("post", task("big", "echo", input={"text": "x" * 50}, retries=3)),
            ):
                r = await c.post(
                    "/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, flow_task)}
                )
                run_id = r.json()["run_id"]
                assert await process_flow_run({"rt": rt}, {"run_id": run_id, "tenant_id": tenant}) == "failed"
                raw = await streams.xrange(run_stream_key(run_id, settings.stream_buckets))
                events = [Event.from_fields(f) for _, f in raw]
                outcomes[name] = next(e.data for e in events if e.type == "task.failed")
                assert not [e for e in events if e.type == "task.retrying"]
                assert (await c.get(f"/v1/runs/{run_id}")).json()["status"] == FAILED
        assert outcomes["pre"] == {
            "task_id": "call",
            "tries": 1,
            "error": "NoHttpPolicy: http tasks are not allowed here",
        }
        assert outcomes["post"] == {"task_id": "big", "tries": 1, "error": "OutputSizePolicy: output too large"}
    finally:
        await streams.aclose()
        await arq.aclose()
        await pool.close()
