"""Postgres or Redis going away: 503 with a clear JSON error, no half-written state, recovery after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from common.requests import repository as request_repo
from tests.conftest import Stack, wait_until
from tests.support.app import App
from tests.support.proxy import CuttableProxy, proxy_postgres, proxy_redis


@pytest.fixture
def proxied(new_stack: Stack) -> Iterator[tuple[Stack, CuttableProxy, CuttableProxy]]:
    pg, pg_url = proxy_postgres(new_stack.infra.database_url)
    rd, rd_url = proxy_redis(new_stack.infra.redis_url)
    new_stack.start_gateway(DATABASE_URL=pg_url, REDIS_URL=rd_url)
    try:
        yield new_stack, pg, rd
    finally:
        pg.close()
        rd.close()


def _count(database_url: str, table: str, tenant: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant))
        finally:
            await conn.close()

    return asyncio.run(count())


def _requests_of(database_url: str, tenant: str) -> int:
    return _count(database_url, "request_logs", tenant)


def _healthy(stack: Stack) -> bool:
    return httpx.get(f"{stack.base_url}/health", timeout=5).status_code == 200


def test_redis_down_gives_503_and_writes_nothing(proxied: tuple[Stack, CuttableProxy, CuttableProxy]) -> None:
    stack, _, redis_proxy = proxied
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    with stack.client("ann", tenant) as c:
        session = c.post("/api/v1/sessions", json={}).json()["session_id"]
        redis_proxy.cut()
        wait_until(lambda: not _healthy(stack), 5, "/health to probe again (it caches for a second)")
        health = httpx.get(f"{stack.base_url}/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["postgres"] == "ok" and health.json()["redis"].startswith("unavailable")
        r = c.post("/api/v1/requests/web", json={"content": "hello?", "session_id": session})
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "service_unavailable"
        assert "Traceback" not in r.text
        # A request that would start a session stores neither the session nor the request.
        r = c.post("/api/v1/requests/web", json={"content": "hello?", "new_session": True})
        assert r.status_code == 503, r.text
        assert _requests_of(stack.infra.database_url, tenant) == 0
        assert _count(stack.infra.database_url, "request_sessions", tenant) == 1
        assert c.get(f"/api/v1/sessions/{session}").status_code == 200
        redis_proxy.restore()
        wait_until(lambda: _healthy(stack), 20, "redis to be back")
        assert c.post("/api/v1/requests/web", json={"content": "hello!", "session_id": session}).status_code == 202
        assert _requests_of(stack.infra.database_url, tenant) == 1


def test_postgres_down_gives_503_then_recovers(proxied: tuple[Stack, CuttableProxy, CuttableProxy]) -> None:
    stack, pg_proxy, _ = proxied
    with stack.client() as c:
        session = c.post("/api/v1/sessions", json={}).json()["session_id"]
        pg_proxy.cut()
        wait_until(lambda: not _healthy(stack), 5, "/health to probe again (it caches for a second)")
        health = httpx.get(f"{stack.base_url}/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["postgres"].startswith("unavailable") and health.json()["redis"] == "ok"
        for method, path, body in (
            ("POST", "/api/v1/requests/web", {"content": "hi", "session_id": session}),
            ("POST", "/api/v1/requests/web", {"content": "hi", "new_session": True}),
            ("GET", f"/api/v1/sessions/{session}", None),
            ("GET", "/api/v1/sessions", None),
        ):
            r = c.request(method, path, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.json() == {"error": "service_unavailable", "detail": r.json()["detail"]}
            assert "unavailable" in r.json()["detail"]
        pg_proxy.restore()
        wait_until(lambda: _healthy(stack), 20, "postgres to be back")
        assert c.get(f"/api/v1/sessions/{session}").status_code == 200


async def test_a_connection_caught_mid_shutdown_is_a_503_not_a_500(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast shutdown's notice arriving on an idle pooled connection as it is handed out: asyncpg raises
    InternalClientError ("another operation is in progress"). Postgres is going away: 503, retry shortly."""

    async def mid_shutdown(*args: object, **kwargs: object) -> None:
        raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")

    monkeypatch.setattr(request_repo, "by_idempotency_key", mid_shutdown)
    async with app.client() as c:
        r = await c.post("/api/v1/requests/web", json={"content": "hi"}, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "2", r.text
    assert r.json()["detail"] == "the database is unavailable; retry shortly"
