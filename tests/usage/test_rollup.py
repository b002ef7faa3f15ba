"""The daily rollup: each transaction writes to a shard no concurrent one holds, so endings in many
transactions never wait on each other's rollup rows (nor deadlock on them), and readers sum the shards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg

from tests.support.app import App


def _old_shard(request_id: str) -> int:
    """The shard migration 0012 picked by request id (until 0014)."""
    return uuid.UUID(request_id).bytes[15] % 16


async def _requests(app: App, user: str, tenant: str, n: int) -> list[str]:
    async with app.client(user, tenant) as client:
        return [
            (await client.post("/api/v1/requests/web", json={"content": "hi", "new_session": True})).json()[
                "request_id"
            ]
            for _ in range(n)
        ]


async def _end(conn: asyncpg.Connection, request_id: str) -> None:
    await conn.execute(
        "UPDATE request_logs SET status = 'completed', completed_at = now(), output_tokens = 5"
        " WHERE request_id = $1::uuid",
        request_id,
    )


@asynccontextmanager
async def _transactions(app: App, n: int) -> AsyncIterator[list[asyncpg.Connection]]:
    """`n` connections, each in an open transaction that gives up on a lock after 2 s."""
    async with AsyncExitStack() as stack:
        conns = []
        for _ in range(n):
            conn = await asyncpg.connect(app.settings.database_url)
            stack.push_async_callback(conn.close)
            await stack.enter_async_context(conn.transaction())
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            conns.append(conn)
        yield conns


async def test_two_transactions_ending_one_users_requests_crosswise_neither_wait_nor_deadlock(app: App) -> None:
    """With rollup rows picked per request, a ends r1 (its row x), b ends r2 (row y), then b ends r3 (row x:
    waits for a) while a ends r4 (row y: waits for b), the cycle two worker processes' batches of
    endings made."""
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    ids = await _requests(app, user, tenant, 40)
    by_shard: dict[int, list[str]] = {}
    for request_id in ids:
        by_shard.setdefault(_old_shard(request_id), []).append(request_id)
    (r1, r3), (r2, r4) = [pair[:2] for pair in by_shard.values() if len(pair) >= 2][:2]
    async with _transactions(app, 2) as (a, b):
        await _end(a, r1)
        await _end(b, r2)
        await asyncio.wait_for(asyncio.gather(_end(b, r3), _end(a, r4)), 5)
    async with app.client(user, tenant) as client:
        (group,) = (await client.get("/api/v1/usage", params={"group_by": "user"})).json()["rows"]
    assert group["requests"] == group["completed"] == 4 and group["output_tokens"] == 20


async def test_concurrent_transactions_write_distinct_shards_and_the_usage_api_sums_them(app: App) -> None:
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    ids = await _requests(app, user, tenant, 20)
    async with _transactions(app, 4) as conns:
        for n, request_id in enumerate(ids):
            await _end(conns[n % 4], request_id)
        shards = await asyncio.gather(*(c.fetchval("SELECT current_setting('relaygate.usage_shard')") for c in conns))
    assert len(set(shards)) == 4, shards
    conn = await asyncpg.connect(app.settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT shard, requests FROM usage_daily WHERE tenant_id = $1 AND user_id = $2", tenant, user
        )
    finally:
        await conn.close()
    assert sorted(r["shard"] for r in rows) == sorted(int(s) for s in shards)
    assert all(r["requests"] == 5 for r in rows)
    async with app.client(user, tenant) as client:
        (group,) = (await client.get("/api/v1/usage", params={"group_by": "user"})).json()["rows"]
    assert group["user"] == user and group["requests"] == group["completed"] == 20
    assert group["output_tokens"] == 100


async def test_a_request_cancelled_while_waiting_for_an_approval_counts_as_ended(app: App) -> None:
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    (request_id,) = await _requests(app, user, tenant, 1)
    conn = await asyncpg.connect(app.settings.database_url)
    try:
        await conn.execute("UPDATE request_logs SET status = 'waiting' WHERE request_id = $1::uuid", request_id)
    finally:
        await conn.close()
    async with app.client(user, tenant) as client:
        assert (await client.post(f"/api/v1/requests/{request_id}/cancel")).status_code == 202
        assert (await client.get(f"/api/v1/requests/{request_id}")).json()["status"] == "cancelled"
        (group,) = (await client.get("/api/v1/usage", params={"group_by": "user"})).json()["rows"]
    assert group["requests"] == group["cancelled"] == 1
