"""Limits and quotas: 429 with Retry-After naming the limit, across replicas through Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from common.platform.keys import open_streams_key, running_key
from tests.support.app import App


def _unique() -> tuple[str, str]:
    return f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"


def _assert_refused(response: Any, limit: str) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error"] == "rate_limited"
    assert body["detail"].startswith(limit)
    assert int(response.headers["retry-after"]) >= 1


async def test_requests_per_minute_per_user_shared_by_replicas(make_app: Callable[..., Any]) -> None:
    user, tenant = _unique()
    async with make_app(rate_limit_user_per_minute=3) as one, make_app(rate_limit_user_per_minute=3) as two:
        async with one.client(user, tenant) as a, two.client(user, tenant) as b:
            for client in (a, b, a):
                assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            _assert_refused(await b.post("/api/v1/requests/web", json={"content": "hi"}), "user_requests_per_minute")
        async with one.client(None, tenant) as someone_else:
            assert (await someone_else.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
        async with one.client(user, tenant, scopes=["metrics"]) as scraper:
            metrics = (await scraper.get("/metrics")).text
    assert 'relaygate_limit_refusals_total{limit="user_requests_per_minute"}' in metrics


async def test_requests_per_minute_per_tenant(make_app: Callable[..., Any]) -> None:
    _, tenant = _unique()
    async with make_app(rate_limit_tenant_per_minute=2) as app:
        async with app.client(None, tenant) as a, app.client(None, tenant) as b, app.client() as elsewhere:
            assert (await a.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            assert (await b.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            _assert_refused(await a.post("/api/v1/requests/cli", json={"content": "hi"}), "tenant_requests_per_minute")
            assert (await elsewhere.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202


async def test_requests_per_minute_per_integration(make_app: Callable[..., Any]) -> None:
    async with make_app(rate_limit_integration_per_minute=1) as app, app.client() as client:
        assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
        _assert_refused(
            await client.post("/api/v1/requests/web", json={"content": "hi", "new_session": True}),
            "integration_requests_per_minute",
        )
        assert (await client.post("/api/v1/requests/cli", json={"content": "hi"})).status_code == 202


async def test_refused_requests_are_not_stored_or_counted(make_app: Callable[..., Any]) -> None:
    async with make_app(rate_limit_user_per_minute=1) as app, app.client() as client:
        first = (await client.post("/api/v1/requests/web", json={"content": "hi"})).json()
        _assert_refused(
            await client.post("/api/v1/requests/web", json={"content": "again"}), "user_requests_per_minute"
        )
        history = (await client.get(f"/api/v1/sessions/{first['session_id']}/requests")).json()["items"]
    assert [r["content"] for r in history] == ["hi"]


async def test_running_requests_per_user(make_app: Callable[..., Any], app_settings: Callable[..., Any]) -> None:
    async with make_app(max_running_requests_per_user=2) as app, app.client() as client:
        ids = []
        for _ in range(2):
            response = await client.post("/api/v1/requests/web", json={"content": "hi", "new_session": True})
            ids.append(response.json()["request_id"])
        _assert_refused(
            await client.post("/api/v1/requests/web", json={"content": "hi", "new_session": True}),
            "running_requests_per_user",
        )
        conn = await asyncpg.connect(app_settings().database_url)
        try:
            await conn.execute("UPDATE request_logs SET status = 'completed' WHERE request_id = $1", ids[0])
        finally:
            await conn.close()
        # A finished request frees its place at once, though no worker told the gateway.
        assert (
            await client.post("/api/v1/requests/web", json={"content": "hi", "new_session": True})
        ).status_code == 202
        _assert_refused(
            await client.post("/api/v1/requests/web", json={"content": "hi", "new_session": True}),
            "running_requests_per_user",
        )


async def test_failed_accept_gives_its_place_back(make_app: Callable[..., Any]) -> None:
    async with make_app(max_running_requests_per_user=1) as app, app.client() as client:
        missing = str(uuid.uuid4())
        for _ in range(3):
            response = await client.post("/api/v1/requests/web", json={"content": "hi", "session_id": missing})
            assert response.status_code == 404
        assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202


async def test_reply_length_ceiling(make_app: Callable[..., Any]) -> None:
    async with make_app(max_reply_tokens=100) as app, app.client() as client:
        for metadata in ({"offline": {"tokens": 101}}, {"max_tokens": 5000}):
            response = await client.post("/api/v1/requests/web", json={"content": "hi", "metadata": metadata})
            assert response.status_code == 422, response.text
            assert response.json()["error"] == "limit_exceeded"
            assert response.json()["detail"].startswith("max_reply_tokens")
        ok = await client.post("/api/v1/requests/web", json={"content": "hi", "metadata": {"max_tokens": 100}})
        assert ok.status_code == 202


async def test_streams_per_user_refused_before_the_200(make_app: Callable[..., Any]) -> None:
    user, tenant = _unique()
    async with make_app(max_streams_per_user=1) as one, make_app(max_streams_per_user=1) as two:
        async with one.client(user, tenant) as client:
            session = (await client.post("/api/v1/sessions", json={})).json()["session_id"]
        assert two.gateway.slots is not None
        slot, refusal = await two.gateway.slots.acquire(tenant, user)  # a stream open on another replica
        assert slot and refusal is None
        async with one.client(user, tenant) as client:
            stream = f"/api/v1/sessions/{session}/stream"
            _assert_refused(await client.get(stream), "streams_per_user")
            _assert_refused(
                await client.post(
                    "/api/v1/requests/web", json={"content": "hi"}, headers={"Accept": "text/event-stream"}
                ),
                "streams_per_user",
            )
            _assert_refused(
                await client.post("/stream?feature_id=gateway-tests&chat_id=c", json={}), "streams_per_user"
            )
            assert (await client.get(f"/api/v1/sessions/{session}/requests")).json()["items"] == []
        two.gateway.slots.release(slot)
        await two.gateway.slots.flush()
        slot, refusal = await one.gateway.slots.acquire(tenant, user)
        assert slot and refusal is None


async def test_streams_per_process(make_app: Callable[..., Any]) -> None:
    async with make_app(max_streams_per_process=1) as app, app.client() as client:
        session = (await client.post("/api/v1/sessions", json={})).json()["session_id"]
        assert app.gateway.slots is not None
        slot, _ = await app.gateway.slots.acquire("another-tenant", "another-user")
        _assert_refused(await client.get(f"/api/v1/sessions/{session}/stream"), "streams_per_process")
        assert slot is not None
        app.gateway.slots.release(slot)
        assert app.gateway.slots.count == 0


async def test_only_known_metadata_reaches_the_model(app: App, app_settings: Callable[..., Any]) -> None:
    async with app.client() as client:
        accepted = (
            await client.post(
                "/api/v1/requests/cli",
                json={
                    "content": "hi",
                    "metadata": {
                        "terminal": "xterm",
                        "api_base": "http://attacker.example",
                        "offline": {"tokens": 5, "evil": 1},
                        "max_tokens": 50,
                    },
                },
            )
        ).json()
    conn = await asyncpg.connect(app_settings().database_url)
    try:
        stored = await conn.fetchval(
            "SELECT normalized_request FROM request_logs WHERE request_id = $1", accepted["request_id"]
        )
    finally:
        await conn.close()
    stored = json.loads(stored)
    assert stored["metadata"] == {"offline": {"tokens": 5}, "max_tokens": 50}
    assert stored["integration_context"] == {"terminal": "xterm"}


async def test_limits_that_are_off_cost_no_round_trip(make_app: Callable[..., Any]) -> None:
    """With every request limit and MAX_STREAMS_PER_USER off, admitting and streaming leave nothing in Redis."""
    user, tenant = _unique()
    off = {
        "rate_limit_user_per_minute": 0,
        "rate_limit_tenant_per_minute": 0,
        "rate_limit_integration_per_minute": 0,
        "max_running_requests_per_user": 0,
        "max_streams_per_user": 0,
    }
    async with make_app(**off) as app, app.client(user, tenant) as client:
        assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
        assert app.gateway.slots is not None
        slot, refusal = await app.gateway.slots.acquire(tenant, user)
        assert slot and refusal is None and app.gateway.slots.count == 1
        await app.gateway.slots.renew_once()
        streams = app.gateway.streams
        assert not await streams.exists(open_streams_key(tenant, user), running_key(tenant, user))
        app.gateway.slots.release(slot)
        assert app.gateway.slots.count == 0
    async with make_app(max_running_requests_per_user=5) as app, app.client(user, tenant) as client:
        assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
        assert await app.gateway.streams.zcard(running_key(tenant, user)) == 1
