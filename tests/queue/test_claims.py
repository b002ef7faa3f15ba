"""Batched claims start exactly the jobs that head their session, in one transaction, and carry
each session's history (issue #7)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from common.platform import db
from common.platform.keys import queue_name, queue_wake_key
from common.queue import enqueue as queue
from common.requests import lifecycle
from common.requests.models import JobPayload
from tests.conftest import Infra
from workers import claims as claims_module
from workers.claims import ClaimBatcher


async def _session(conn: asyncpg.Connection, tenant: str) -> str:
    session_id = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, expires_at)"
        " VALUES ($1, $2, 'u', 'web', now() + interval '1 day')",
        session_id,
        tenant,
    )
    return session_id


async def _request(conn: asyncpg.Connection, session_id: str, tenant: str) -> JobPayload:
    request_id = str(uuid.uuid4())
    await conn.execute(
        """
        INSERT INTO request_logs (request_id, session_id, tenant_id, user_id, request_type, request_content,
                                  normalized_request, deadline_at)
        VALUES ($1, $2, $3, 'u', 'web', 'hi', '{}', now() + interval '1 hour')
        """,
        request_id,
        session_id,
        tenant,
    )
    return JobPayload(request_id=request_id, session_id=session_id, tenant_id=tenant)


async def test_claim_many_starts_only_session_heads(infra: Infra) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(infra.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            sessions = [await _session(conn, tenant) for _ in range(2)]
            first = await _request(conn, sessions[0], tenant)
            second = await _request(conn, sessions[0], tenant)  # waits behind `first`
            other = await _request(conn, sessions[1], tenant)
        stale = JobPayload(request_id=other.request_id, session_id=other.session_id, tenant_id=tenant, attempt=2)
        async with pool.acquire() as conn:
            async with conn.transaction():
                rows = await lifecycle.claim_many(conn, [second, first, other, stale], 15, holder=42)
            assert set(rows) == {first.request_id, other.request_id}
            assert {(r["status"], r["lease_holder"]) for r in rows.values()} == {("running", 42)}
            async with conn.transaction():
                assert await lifecycle.claim_many(conn, [first, second], 15) == {}  # running already / not the head
    finally:
        await pool.close()


async def test_enqueue_wakes_idle_workers_with_a_capped_list(infra: Infra) -> None:
    pool = await queue.connect(infra.redis_url)
    try:
        feature = f"wake-{uuid.uuid4().hex[:6]}"
        for _ in range(queue.WAKE_BACKLOG + 5):
            payload = JobPayload(request_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()), tenant_id="t")
            assert await queue.enqueue(pool, feature, payload)
        assert await pool.llen(queue_wake_key(queue_name(feature))) == queue.WAKE_BACKLOG
    finally:
        await pool.aclose()


async def test_a_claim_carries_each_sessions_latest_turns(infra: Infra) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(infra.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            talkative, fresh = await _session(conn, tenant), await _session(conn, tenant)
            for n in range(3):
                done = await _request(conn, talkative, tenant)
                await conn.execute(
                    "UPDATE request_logs SET status = 'completed', request_content = $2,"
                    " response_content = $3 WHERE request_id = $1",
                    done.request_id,
                    f"q{n}",
                    f"a{n}",
                )
            failed = await _request(conn, talkative, tenant)
            await conn.execute("UPDATE request_logs SET status = 'failed' WHERE request_id = $1", failed.request_id)
            asked, first = await _request(conn, talkative, tenant), await _request(conn, fresh, tenant)
        claims = ClaimBatcher(pool, lease_seconds=15, history_turns=2, holder=lambda: None)
        got = await asyncio.gather(claims.claim(asked), claims.claim(first))
        assert [c.history if c else None for c in got] == [
            [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"},
            ],
            [],
        ]
    finally:
        await pool.close()


async def test_a_failed_history_read_undoes_the_claims(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(infra.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            session_id = await _session(conn, tenant)
            asked = await _request(conn, session_id, tenant)

        async def unavailable(*args: object) -> None:
            raise ConnectionResetError("postgres went away")

        monkeypatch.setattr(claims_module, "histories", unavailable)
        with pytest.raises(ConnectionResetError):
            await ClaimBatcher(pool, lease_seconds=15, history_turns=2, holder=lambda: None).claim(asked)
        status = await pool.fetchval("SELECT status FROM request_logs WHERE request_id = $1", asked.request_id)
        assert status == "queued"  # the job's retry can claim it again, with no lease to wait out
    finally:
        await pool.close()
