"""Budgets: refusal with Retry-After until the period resets, overrides through the admin API, what is
left at /budgets/me, Redis seeded from Postgres's rollup, and the soft threshold's CloudEvent."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from common.platform import sink
from common.platform.batching import pipelined
from common.usage import budgets
from common.usage.models import Usage
from tests.support.app import App
from workers import maintenance


def _unique() -> tuple[str, str]:
    return f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"


async def _spend(app: App, tenant: str, user: str, tokens: int, cost: float = 0.0) -> None:
    """Usage as finished requests leave it in the rollup (Postgres, the budgets' truth)."""
    conn = await asyncpg.connect(app.settings.database_url)
    try:
        await conn.execute(
            "INSERT INTO usage_daily (tenant_id, day, user_id, agent_id, model, requests, completed, input_tokens,"
            " output_tokens, cost_usd) VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2, 'assistant', 'm', 1, 1, 0,"
            " $3, $4)",
            tenant,
            user,
            tokens,
            cost,
        )
    finally:
        await conn.close()


def _seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    return 86400 - (now.hour * 3600 + now.minute * 60 + now.second)


async def test_user_budget_refuses_until_the_day_ends(make_app: Callable[..., Any]) -> None:
    user, tenant = _unique()
    async with make_app(budget_user_tokens_per_day=100) as app:
        async with app.client(user, tenant) as client, app.client(None, tenant) as colleague:
            assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            await _spend(app, tenant, user, 100)
            await app.gateway.streams.delete(budgets.budgets_for(app.settings, {}, tenant, user)[2].key)
            refused = await client.post("/api/v1/requests/web", json={"content": "again"})
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"] == "rate_limited"
            assert refused.json()["detail"].startswith("budget: user tokens per day: 100 of 100 tokens used")
            assert abs(int(refused.headers["retry-after"]) - _seconds_to_midnight()) <= 5
            assert (await colleague.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            me = (await client.get("/api/v1/budgets/me")).json()["budgets"]
    day = next(b for b in me if (b["scope"], b["period"]) == ("user", "day"))
    assert day["tokens"] == {"limit": 100, "used": 100, "remaining": 0}
    assert day["resets_at"].endswith("T00:00:00Z")
    month = next(b for b in me if (b["scope"], b["period"]) == ("user", "month"))
    assert month["tokens"] == {"limit": 0, "used": 100, "remaining": None}


async def test_a_spent_budget_is_429_in_each_protocols_shape(make_app: Callable[..., Any]) -> None:
    user, tenant = _unique()
    async with make_app(budget_user_tokens_per_day=10) as app:
        await _spend(app, tenant, user, 10)
        async with app.client(user, tenant) as client:
            openai = await client.post(
                "/v1/chat/completions", json={"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}
            )
            ui = await client.post(
                "/api/chat",
                json={
                    "id": "c1",
                    "trigger": "submit-message",
                    "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
                },
            )
            thread = (await client.post("/langgraph/threads", json={})).json()["thread_id"]
            langgraph = await client.post(
                f"/langgraph/threads/{thread}/runs",
                json={"assistant_id": "assistant", "input": {"messages": [{"type": "human", "content": "hi"}]}},
            )
    for refused in (openai, ui, langgraph):
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"
    assert openai.json()["error"]["message"].startswith("budget: user tokens per day: 10 of 10 tokens used")
    assert ui.json()["error"] == "rate_limited" and ui.json()["detail"].startswith("budget: user tokens per day")
    assert list(langgraph.json()) == ["detail"] and langgraph.json()["detail"].startswith("budget: user tokens")


async def test_admin_overrides_per_user_and_tenant(make_app: Callable[..., Any]) -> None:
    user, tenant = _unique()
    async with make_app(budget_user_tokens_per_day=1_000) as app:
        async with (
            app.client(user, tenant) as client,
            app.client("boss", tenant, scopes=["admin"]) as admin,
            app.client("intruder", f"other-{tenant}", scopes=["admin"]) as outsider,
        ):
            await _spend(app, tenant, user, 50, cost=0.25)
            assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            denied = await client.put(f"/api/v1/budgets/users/{user}", json={"tokens_per_day": 0})
            assert denied.status_code == 403
            assert (
                await outsider.put(f"/api/v1/budgets/users/{user}", json={"tokens_per_day": 10})
            ).status_code == 200  # stored for the outsider's own tenant only
            assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            stored = await admin.put(f"/api/v1/budgets/users/{user}", json={"tokens_per_day": 50})
            assert stored.status_code == 200, stored.text
            assert stored.json()["overrides"]["user"]["tokens_per_day"] == 50
            refused = await client.post("/api/v1/requests/web", json={"content": "hi"})
            assert refused.json()["detail"].startswith("budget: user tokens per day: 50 of 50"), refused.text
            # 0 turns the default off for this user; a tenant cost budget then applies to everyone.
            await admin.put(f"/api/v1/budgets/users/{user}", json={"tokens_per_day": 0})
            assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            await admin.put("/api/v1/budgets/tenant", json={"cost_usd_per_month": 0.2})
            for who in (client, admin):
                over = await who.post("/api/v1/requests/web", json={"content": "hi"})
                assert over.status_code == 429
                assert over.json()["detail"].startswith("budget: tenant cost per month: 0.2500 of 0.2 USD used")
            tenant_view = (await admin.get("/api/v1/budgets/tenant")).json()["budgets"]
            assert {b["period"]: b["cost_usd"]["remaining"] for b in tenant_view} == {"day": None, "month": 0}
            bad = await admin.put("/api/v1/budgets/tenant", json={"tokens_per_day": -1})
            assert bad.status_code == 422


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local CloudEvents sink that keeps what it receives (binary mode: attributes in headers)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append({"type": self.headers.get("ce-type"), "data": json.loads(body)})
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", received
    finally:
        server.shutdown()
        sink.configure("")


async def test_soft_threshold_is_reported_once_per_period(
    make_app: Callable[..., Any], receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = receiver
    user, tenant = _unique()
    exporter = sink.configure(url, retries=2, backoff_seconds=0.01)
    assert exporter is not None
    async with make_app(budget_user_tokens_per_day=100) as app, app.client(user, tenant) as client:
        assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202  # seeds
        redis = app.gateway.streams
        assert await budgets.record(redis, tenant, user, Usage(40, 30)) == []
        crossed = await budgets.record(redis, tenant, user, Usage(5, 5))
        assert [(b.scope, b.period) for b in crossed] == [("user", "day")]
        assert await budgets.record(redis, tenant, user, Usage(5, 5)) == []
        await exporter.drain()
    events = [e for e in received if e["type"] == "com.relaygate.budget.threshold"]
    assert len(events) == 1
    assert events[0]["data"]["tokens"] == {"used": 80, "limit": 100}
    assert (events[0]["data"]["scope"], events[0]["data"]["user_id"]) == ("user", user)


async def test_a_burst_of_endings_is_counted_in_shared_pipelines(make_app: Callable[..., Any]) -> None:
    user, tenant = _unique()
    async with make_app(budget_user_tokens_per_day=1000) as app, app.client(user, tenant) as client:
        assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202  # seeds
        redis = app.gateway.streams
        send = pipelined(redis)
        batched_before = send.batcher.batches
        crossed = await asyncio.gather(*(budgets.record(redis, tenant, user, Usage(2, 1)) for _ in range(30)))
        assert send.batcher.batches > batched_before  # some went together
        assert crossed == [[]] * 30
        day = budgets.budgets_for(app.settings, {}, tenant, user)[2]
        assert (day.scope, day.period) == ("user", "day")
        assert int(await redis.hget(day.key, "tokens")) == 90  # every call counted once


async def test_a_burst_shares_one_override_lookup_and_a_failed_one_is_not_kept(
    app_settings: Callable[..., Any],
) -> None:
    class Db:
        """Counts lookups; the first fails, the others wait until released."""

        def __init__(self) -> None:
            self.calls = 0
            self.release = asyncio.Event()

        async def fetch(self, *_: Any) -> list[dict[str, Any]]:
            self.calls += 1
            await self.release.wait()
            if self.calls == 1:
                raise ConnectionError("postgres went away")
            return [{"user_id": "u", **{name: 7.0 for name in budgets.LIMITS}}]

    db = Db()
    book = budgets.BudgetBook(db, app_settings())  # type: ignore[arg-type]
    burst = [asyncio.create_task(book.budgets("t", "u")) for _ in range(50)]
    await asyncio.sleep(0.01)
    assert db.calls == 1
    db.release.set()
    outcomes = await asyncio.gather(*burst, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    found = await asyncio.gather(*(book.budgets("t", "u") for _ in range(50)))
    assert db.calls == 2
    assert {b.tokens for b in found[0] if b.scope == "user"} == {7}


@pytest.mark.parametrize("attempt", [1, 5])  # requeued for another attempt, or failed as lost too many times
async def test_a_lost_attempts_usage_counts_against_budgets_when_it_is_reaped(
    make_app: Callable[..., Any], attempt: int
) -> None:
    """Not minutes later, at the budgets' next seeding from Postgres: the reaper adds it to Redis too."""
    user, tenant = _unique()
    async with make_app(budget_user_tokens_per_day=100) as app:
        async with app.client(user, tenant) as client:
            # The budget is seeded (nothing used yet) by a first request.
            assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 202
            session_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
            # A worker streamed 150 tokens (its heartbeat stored them), then died: its lease lapsed. Its
            # feature has no worker, so nothing runs the request once it is requeued.
            async with app.gateway.db.acquire() as conn:
                await conn.execute(
                    "INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, expires_at)"
                    " VALUES ($1, $2, $3, 'web', now() + interval '1 day')",
                    session_id,
                    tenant,
                    user,
                )
                await conn.execute(
                    """
                    INSERT INTO request_logs (request_id, session_id, tenant_id, user_id, request_type,
                                              request_content, normalized_request, feature, status, attempt,
                                              started_at, lease_expires_at, attempt_output_tokens, deadline_at)
                    VALUES ($1, $2, $3, $4, 'web', 'hi', '{}', 'nobody-serves-this', 'running', $5, now(),
                            now() - interval '1 second', 150, now() + interval '1 hour')
                    """,
                    request_id,
                    session_id,
                    tenant,
                    user,
                    attempt,
                )

            # What the reaper reads and writes (Postgres, the streams, the queue), with no presence of its own.
            rt: Any = SimpleNamespace(**vars(app.gateway), presence=None, postgres_trouble_at=float("-inf"))
            await maintenance.reap_once(rt)  # another test's worker may have reaped it first: the same count

            refused = await client.post("/api/v1/requests/web", json={"content": "again"})
            assert refused.status_code == 429, refused.text
            assert refused.json()["detail"].startswith("budget: user tokens per day: 150 of 100 tokens used")
            status = await app.gateway.db.fetchval("SELECT status FROM request_logs WHERE request_id = $1", request_id)
            assert status == ("queued" if attempt == 1 else "failed")
