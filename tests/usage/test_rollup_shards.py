"""The daily rollup is spread over shards: one user's requests ending at once do not wait on each other."""

from __future__ import annotations

import uuid

import asyncpg

from tests.support.app import App


def _shard(request_id: str) -> int:
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


async def test_two_endings_of_one_user_on_different_shards_do_not_block(app: App) -> None:
    """Before the shards this second ending waited for the first's commit (here: lock_timeout)."""
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    ids = await _requests(app, user, tenant, 12)
    first = ids[0]
    other = next(r for r in ids[1:] if _shard(r) != _shard(first))
    a = await asyncpg.connect(app.settings.database_url)
    b = await asyncpg.connect(app.settings.database_url)
    try:
        async with a.transaction():
            await _end(a, first)  # holds its rollup row until commit
            async with b.transaction():
                await b.execute("SET LOCAL lock_timeout = '1s'")
                await _end(b, other)
    finally:
        await a.close()
        await b.close()


async def test_the_usage_api_sums_the_shards(app: App) -> None:
    user, tenant = f"user-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    ids = await _requests(app, user, tenant, 20)
    conn = await asyncpg.connect(app.settings.database_url)
    try:
        for request_id in ids:
            await _end(conn, request_id)
        rows = await conn.fetchval(
            "SELECT count(*) FROM usage_daily WHERE tenant_id = $1 AND user_id = $2", tenant, user
        )
    finally:
        await conn.close()
    assert rows == len({_shard(r) for r in ids}) > 1
    async with app.client(user, tenant) as client:
        (group,) = (await client.get("/api/v1/usage", params={"group_by": "user"})).json()["rows"]
    assert group["user"] == user and group["requests"] == group["completed"] == 20
    assert group["output_tokens"] == 100
