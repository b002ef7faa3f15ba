"""The gateway app in-process over `httpx.ASGITransport`, against the real embedded Postgres and Valkey."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest

from api.deps import Gateway
from api.main import create_app
from common.platform.credentials import mint_token
from common.platform.settings import Settings
from tests.conftest import ROOT, Infra, settings_for


@dataclass
class App:
    """One in-process gateway; `client()` gives a client authenticated as a fresh (or named) user."""

    settings: Settings
    gateway: Gateway
    transport: httpx.ASGITransport

    def token(self, user_id: str, tenant_id: str, scopes: list[str] | None = None) -> str:
        return mint_token(self.settings, user_id=user_id, tenant_id=tenant_id, scopes=scopes)

    def client(
        self,
        user_id: str | None = None,
        tenant_id: str | None = None,
        *,
        scopes: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.AsyncClient:
        user_id = user_id or f"user-{uuid.uuid4().hex[:8]}"
        tenant_id = tenant_id or f"tenant-{uuid.uuid4().hex[:8]}"
        auth = {"Authorization": f"Bearer {self.token(user_id, tenant_id, scopes)}"}
        return httpx.AsyncClient(
            transport=self.transport,
            base_url="http://gateway",
            headers=headers if headers is not None else auth,
            timeout=10,
        )


AppFactory = Callable[..., "AsyncIterator[App]"]


@pytest.fixture
def app_settings(infra: Infra) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        return settings_for(infra, agents_file=ROOT / "tests" / "agents_inprocess.yaml", **overrides)

    return make


@pytest.fixture
async def make_app(app_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., object]]:
    """`async with make_app(**settings) as app` runs the app's lifespan around the block."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def run(**overrides: object) -> AsyncIterator[App]:
        settings = app_settings(**overrides)
        fastapi_app = create_app(settings)
        async with fastapi_app.router.lifespan_context(fastapi_app):
            yield App(settings, fastapi_app.state.gateway, httpx.ASGITransport(app=fastapi_app))

    yield run


@pytest.fixture
async def app(make_app: Callable[..., object]) -> AsyncIterator[App]:
    async with make_app() as running:  # type: ignore[attr-defined]
        yield running
