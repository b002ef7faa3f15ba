"""The gateway app in-process (httpx over ASGI) against the real embedded Postgres and Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from api.deps import Gateway
from api.main import create_app
from common.auth import mint_token
from common.settings import Settings
from tests.conftest import ROOT, Infra, settings_for

ClientFor = Callable[..., httpx.AsyncClient]


class InProcess:
    def __init__(self, gateway: Gateway, transport: httpx.ASGITransport) -> None:
        self.gateway = gateway
        self.transport = transport

    def client(self, user: str = "alice", tenant: str = "acme") -> httpx.AsyncClient:
        token = mint_token(self.gateway.settings, user_id=user, tenant_id=tenant)
        return httpx.AsyncClient(transport=self.transport, base_url="http://gateway",
                                 headers={"Authorization": f"Bearer {token}"})


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


def dag(tenant: str, *tasks: dict[str, Any], flow_id: str = "f1") -> dict[str, Any]:
    return {"id": flow_id, "version": "1", "type": "DAG", "tenant_id": tenant, "tasks": list(tasks)}


def task(task_id: str, type_: str = "echo", depends_on: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "type": type_, "depends_on": list(depends_on), "input": extra.pop("input", {}), **extra}
