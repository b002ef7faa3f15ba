"""The gateway app in-process (httpx over ASGI) against the real embedded Postgres and Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from api.deps import Gateway
from api.main import create_app
from common.agents.registry import load_agents
from common.platform import db
from common.platform.credentials import mint_token
from common.platform.keys import run_stream_key
from common.platform.settings import Settings
from common.queue import enqueue as queue
from common.streams.protocol import Event
from common.streams.protocol import connect as connect_streams
from common.streams.writer import StreamWriter
from tests.conftest import ROOT, Infra, settings_for
from workers.flows import process_flow_run
from workers.runner import WorkerRuntime

ClientFor = Callable[..., httpx.AsyncClient]


class InProcess:
    def __init__(self, gateway: Gateway, transport: httpx.ASGITransport) -> None:
        self.gateway = gateway
        self.transport = transport

    def client(self, user: str = "alice", tenant: str = "acme") -> httpx.AsyncClient:
        token = mint_token(self.gateway.settings, user_id=user, tenant_id=tenant)
        return httpx.AsyncClient(
            transport=self.transport, base_url="http://gateway", headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture
async def gateway_app(infra: Infra) -> AsyncIterator[Callable[..., Any]]:
    """Call with setting overrides to get an `InProcess` gateway; closed at the end of the test."""
    contexts: list[Any] = []

    async def start(**overrides: Any) -> InProcess:
        base = settings_for(infra).model_dump()
        app = create_app(Settings(**{**base, "agents_file": ROOT / "tests" / "agents.yaml", **overrides}))
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        contexts.append(ctx)
        return InProcess(app.state.gateway, httpx.ASGITransport(app=app))

    yield start
    for ctx in reversed(contexts):
        await ctx.__aexit__(None, None, None)


class Executor:
    """A flow executor in the test's own process (what `process_flow_run` does on a worker), with its settings."""

    def __init__(self, rt: WorkerRuntime) -> None:
        self.rt = rt

    async def run(self, run_id: str, tenant_id: str) -> str:
        return await process_flow_run({"rt": self.rt}, {"run_id": run_id, "tenant_id": tenant_id})

    async def events(self, run_id: str) -> list[Event]:
        raw = await self.rt.streams.xrange(run_stream_key(run_id, self.rt.settings.stream_buckets))
        return [Event.from_fields(fields) for _, fields in raw]


@pytest.fixture
async def executor(infra: Infra) -> AsyncIterator[Callable[..., Any]]:
    """Call with setting overrides to get an `Executor`; its connections are closed at the end of the test."""
    opened: list[WorkerRuntime] = []

    async def make(**overrides: Any) -> Executor:
        settings = settings_for(infra, **overrides)
        streams = connect_streams(infra.redis_url, cluster=False, max_connections=8)
        rt = WorkerRuntime(
            settings=settings,
            db=await db.create_pool(infra.database_url),
            streams=streams,
            queue=await queue.connect(infra.redis_url),
            writer=StreamWriter(streams, buckets=settings.stream_buckets, maxlen=1000, ttl_seconds=600),
            agents=load_agents(ROOT / "tests" / "agents.yaml"),
        )
        opened.append(rt)
        return Executor(rt)

    yield make
    for rt in opened:
        await rt.streams.aclose()
        await rt.queue.aclose()
        await rt.db.close()


def dag(tenant: str, *tasks: dict[str, Any], flow_id: str = "f1") -> dict[str, Any]:
    return {"id": flow_id, "version": "1", "type": "DAG", "tenant_id": tenant, "tasks": list(tasks)}


async def start_run(
    c: httpx.AsyncClient, tenant: str, *tasks: dict[str, Any], run_input: dict[str, Any] | None = None
) -> str:
    """POST a run of `tasks` (flow `f1`); its run id."""
    r = await c.post(
        "/v1/runs",
        json={"flow_id": "f1", "tenant_id": tenant, "input": run_input or {}, "flow_definition": dag(tenant, *tasks)},
    )
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    return run_id


def task(task_id: str, type_: str = "echo", depends_on: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "type": type_, "depends_on": list(depends_on), "input": extra.pop("input", {}), **extra}
