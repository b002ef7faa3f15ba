"""A worker's ending in few round trips: `finish` returns whether the reply awaits delivery and the
session's next request, and `done_pending` flags are cleared in batches (a lost batch is the sweep's)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from common.platform import db
from common.requests import ending, lifecycle
from common.requests.models import JobPayload
from tests.conftest import Infra
from tests.queue.test_claims import _request, _session


async def test_finish_returns_the_delivery_facts_and_the_next_request(infra: Infra) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(infra.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            session_id = await _session(conn, tenant)
            first = await _request(conn, session_id, tenant)
            second = await _request(conn, session_id, tenant)
            await conn.execute(
                "UPDATE request_logs SET normalized_request = $2::jsonb WHERE request_id = $1",
                first.request_id,
                {"integration_type": "web", "integration_context": {"deliver": False}},
            )
            await conn.execute(
                "INSERT INTO user_integration_configs (tenant_id, user_id, integration_type, enabled, config)"
                " VALUES ($1, 'u', 'WEBHOOK', true, '{}')",
                tenant,
            )
            async with conn.transaction():
                await lifecycle.claim_many(conn, [first], 15)
        ended, upcoming = await lifecycle.finish(pool, first, status="completed", response="r", agent_id="a")
        assert ended is not None
        assert (ended.user_id, ended.integration_type, ended.delivery_pending) == ("u", "web", False)  # `deliver` off
        assert upcoming is not None and upcoming[1].request_id == second.request_id
        assert (
            await pool.fetchval("SELECT current_agent_id FROM request_sessions WHERE session_id = $1", session_id)
            == "a"
        )
        assert await lifecycle.ended_as(pool, first, "completed") == ended
        again, nothing = await lifecycle.finish(pool, first, status="completed")
        assert again is None and nothing is None  # the attempt no longer holds the request
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("status", "overridden", "defaults_deliver", "deliver", "pending"),
    [
        ("completed", True, False, None, True),  # the user's own settings
        ("completed", False, True, None, True),  # the defaults deliver alone
        ("completed", False, False, None, False),  # nowhere to deliver to
        ("completed", True, True, False, False),  # a scheduled run without `deliver`
        ("failed", True, True, None, False),  # only a completed reply is delivered
    ],
)
async def test_an_ending_marks_its_reply_pending_delivery_only_when_a_channel_may_want_it(
    infra: Infra, status: str, overridden: bool, defaults_deliver: bool, deliver: bool | None, pending: bool
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(infra.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            job = await _request(conn, await _session(conn, tenant), tenant)
            if deliver is not None:
                await conn.execute(
                    "UPDATE request_logs SET normalized_request = $2::jsonb WHERE request_id = $1",
                    job.request_id,
                    {"integration_context": {"deliver": deliver}},
                )
            if overridden:
                await conn.execute(
                    "INSERT INTO user_integration_configs (tenant_id, user_id, integration_type, enabled, config)"
                    " VALUES ($1, 'u', 'TEST', true, '{}')",
                    tenant,
                )
            async with conn.transaction():
                await lifecycle.claim_many(conn, [job], 15)
        ended, _ = await lifecycle.finish(pool, job, status=status, defaults_deliver=defaults_deliver)
        assert ended is not None and ended.delivery_pending is pending
        stored = await pool.fetchval("SELECT delivery_pending FROM request_logs WHERE request_id = $1", job.request_id)
        assert stored is pending
    finally:
        await pool.close()


async def _ended_rows(pool: asyncpg.Pool, tenant: str, n: int) -> list[JobPayload]:
    async with pool.acquire() as conn:
        requests = [await _request(conn, await _session(conn, tenant), tenant) for _ in range(n)]
        await conn.execute(
            "UPDATE request_logs SET status = 'completed', completed_at = now(), done_pending = true"
            " WHERE tenant_id = $1",
            tenant,
        )
    return requests


async def test_marks_added_together_go_out_in_one_statement(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(infra.database_url, min_size=1, max_size=2)
    batches: list[list[str]] = []
    real = lifecycle.mark_ended

    async def recording(conn: asyncpg.Pool, request_ids: list[str]) -> None:
        batches.append(list(request_ids))
        await real(conn, request_ids)

    monkeypatch.setattr(lifecycle, "mark_ended", recording)
    try:
        requests = await _ended_rows(pool, tenant, 3)
        marks = ending.EndedMarks(pool)
        for request in requests:
            marks.add(request.request_id)
        await marks.close()
        assert batches == [[r.request_id for r in requests]]
        flags = await pool.fetch("SELECT done_pending FROM request_logs WHERE tenant_id = $1", tenant)
        assert [f["done_pending"] for f in flags] == [False] * 3
        assert marks.in_flight is None
    finally:
        await pool.close()


async def test_a_failed_batch_leaves_its_flags_for_the_sweep(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(infra.database_url, min_size=1, max_size=2)

    async def down(conn: asyncpg.Pool, request_ids: list[str]) -> None:
        raise ConnectionResetError("postgres went away")

    try:
        requests = await _ended_rows(pool, tenant, 2)
        monkeypatch.setattr(lifecycle, "mark_ended", down)
        marks = ending.EndedMarks(pool)
        marks.add(requests[0].request_id)
        await marks.close()
        marks.add(requests[1].request_id)  # a later mark still goes out on its own
        await marks.close()
        monkeypatch.undo()
        flagged = {row["request_id"] for row in await lifecycle.unended(pool, older_than_seconds=0, limit=10_000)}
        assert {r.request_id for r in requests} <= flagged
    finally:
        await pool.close()
