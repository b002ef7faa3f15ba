"""Flow `http` and `llm` tasks through the outbound guard and the configured models, executed in-process
on the real Postgres and Valkey against a loopback server that records every request it gets. Other
non-public addresses are only classified (tests/platform/test_outbound.py), never aimed at."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from common.agents.registry import load_agents
from common.platform import db
from common.platform.keys import run_stream_key
from common.queue import enqueue as queue
from common.streams.protocol import Event
from common.streams.protocol import connect as connect_streams
from common.streams.writer import StreamWriter
from tests.conftest import ROOT, Infra, settings_for
from tests.fakes.http_target import Target
from tests.flows.conftest import dag, task
from workers import model
from workers.flows import process_flow_run
from workers.runner import WorkerRuntime

RunFlow = Callable[..., Awaitable[tuple[dict[str, Any], list[Event]]]]


@contextlib.asynccontextmanager
async def executor(infra: Infra, gateway_app: Any, **overrides: Any) -> AsyncIterator[RunFlow]:
    """Run one flow at a time: created through the gateway, executed here, read back with GET /v1/runs/{id}."""
    feature = f"idle-{uuid.uuid4().hex[:6]}"  # no worker serves it: this test executes the run itself
    settings = settings_for(infra, flow_feature=feature, **overrides)
    model.configure()
    gw = await gateway_app(flow_feature=feature, **overrides)
    streams = connect_streams(infra.redis_url, cluster=False, max_connections=8)
    arq = await queue.connect(infra.redis_url)
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

    async def run(*tasks: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        async with gw.client("alice", tenant) as c:
            r = await c.post(
                "/v1/runs", json={"flow_id": "f1", "tenant_id": tenant, "flow_definition": dag(tenant, *tasks)}
            )
            assert r.status_code == 202, r.text
            run_id = r.json()["run_id"]
            await process_flow_run({"rt": rt}, {"run_id": run_id, "tenant_id": tenant})
            raw = await streams.xrange(run_stream_key(run_id, settings.stream_buckets))
            shown = await c.get(f"/v1/runs/{run_id}")
            assert shown.status_code == 200, shown.text
            return shown.json(), [Event.from_fields(f) for _, f in raw]

    try:
        yield run
    finally:
        await streams.aclose()
        await arq.aclose()
        await pool.close()


def failure(events: list[Event]) -> dict[str, Any]:
    return next(e.data for e in events if e.type == "task.failed")


async def test_http_tasks_cannot_reach_loopback_in_any_form(infra: Infra, gateway_app: Any, target: Target) -> None:
    port = target.port
    forms = {
        f"http://127.0.0.1:{port}/echo": "127.0.0.1 is a loopback address",
        f"http://127.1:{port}/echo": "127.1 is a loopback address",
        f"http://2130706433:{port}/echo": "2130706433 is a loopback address",
        f"http://0x7f.1:{port}/echo": "0x7f.1 is a loopback address",
        f"http://localhost:{port}/echo": "localhost resolves to a loopback address",
        f"http://localhost.:{port}/echo": "localhost resolves to a loopback address",
        f"http://[::1]:{port}/echo": "::1 is a loopback address",
        f"http://[::ffff:127.0.0.1]:{port}/echo": "::ffff:127.0.0.1 is a loopback address",
        "gopher://127.0.0.1:6379/_INFO": "only http and https URLs are allowed",
    }
    async with executor(infra, gateway_app) as run:
        for url, reason in forms.items():
            shown, events = await run(task("call", "http", input={"url": url}, retries=2))
            assert shown["status"] == "FAILED", shown
            assert f"URL refused: {reason}" in shown["error"], (url, shown["error"])
            assert "Traceback" not in shown["error"]
            assert failure(events)["tries"] == 1  # a refusal is not retried
    assert target.hits == []


async def test_the_allow_list_lets_the_fake_through_without_redirects_and_cut_at_the_cap(
    infra: Infra, gateway_app: Any, target: Target
) -> None:
    forbidden = Target().start()  # another loopback port, only reached if a redirect were followed
    try:
        async with executor(
            infra, gateway_app, outbound_allow_hosts="127.0.0.1", outbound_max_response_bytes=1000
        ) as run:
            shown, _ = await run(
                task(
                    "post",
                    "http",
                    input={
                        "method": "POST",
                        "url": f"{target.url}/echo",
                        "json": {"n": 1},
                        "headers": {"Host": "internal.example", "X-Flow": "yes"},
                    },
                ),
                task("moved", "http", input={"url": f"{target.url}/redirect?to=http://localhost:{forbidden.port}/"}),
                task("big", "http", input={"url": f"{target.url}/big/200000"}),
            )
            assert shown["status"] == "COMPLETED", shown
            outputs = shown["output"]["tasks"]
            echoed = outputs["post"]["json"]
            assert echoed["body"] == '{"n":1}' and echoed["headers"]["x-flow"] == "yes"
            assert echoed["headers"]["host"] == f"127.0.0.1:{target.port}"
            assert outputs["moved"]["status"] == 302 and forbidden.hits == []
            assert outputs["big"] == {"status": 200, "json": None, "text": "x" * 1000, "truncated": True}
    finally:
        forbidden.stop()


async def test_llm_tasks_may_name_only_the_models_the_deployment_configured(infra: Infra, gateway_app: Any) -> None:
    async with executor(infra, gateway_app) as run:
        # Only providers whose default endpoint is on loopback: were the check missing, nothing leaves the host.
        for name in ("ollama/llama3", "ollama_chat/llama3"):
            shown, events = await run(task("ask", "llm", input={"prompt": "hi", "model": name}, retries=2))
            assert shown["status"] == "FAILED", shown
            assert f"model {name!r} is not one this deployment configured" in shown["error"]
            assert failure(events)["tries"] == 1
        shown, _ = await run(task("ask", "llm", input={"prompt": "hi", "model": model.OFFLINE_MODEL}))
        assert shown["status"] == "COMPLETED" and shown["output"]["tasks"]["ask"]["model"] == model.OFFLINE_MODEL
