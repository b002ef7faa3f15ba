"""A heartbeat rewrites every running row each second, so it must update rows in place (a HOT update: no
new index entries); the reaper still finds a lease that lapsed; a heartbeat and a batch of endings lock
rows in one order. On real Postgres."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from common.requests import lifecycle
from common.requests import repository as request_repo
from common.requests.models import JobPayload
from common.usage.models import Usage
from tests.requests.test_batched_intake import principal, values
from tests.support.app import App


async def running(db: asyncpg.Pool, lease_seconds: float) -> str:
    """A request running attempt 1 with a lease that far ahead, on a feature no worker serves."""
    request_id = str(uuid.uuid4())
    session_id = str(uuid.uuid4())
    await request_repo.insert(db, new_session=True, values=values(request_id, session_id, principal()))
    await db.execute(
        "UPDATE request_logs SET status = 'running', started_at = now(), feature = 'nobody-serves-this',"
        " lease_expires_at = now() + make_interval(secs => $2) WHERE request_id = $1",
        request_id,
        lease_seconds,
    )
    return request_id


async def test_heartbeats_update_rows_in_place(app: App) -> None:
    ids = [await running(app.gateway.db, 15) for _ in range(3)]
    updated = in_place = 0
    async with app.gateway.db.acquire() as conn:
        for beat in range(3):
            partial = f"partial {beat}" if beat == 1 else None
            leases = [(i, 1, partial, f"{beat}-0", Usage(output_tokens=beat), "model") for i in ids]
            # Each beat its own transaction, as a worker's: now(), and so the lease, moves on.
            async with conn.transaction():
                before = await _updates(conn)
                assert await lifecycle.heartbeat(conn, leases, 15) == set(ids)
                after = await _updates(conn)
            updated, in_place = updated + after[0] - before[0], in_place + after[1] - before[1]
    assert (updated, in_place) == (9, 9)
    rows = await app.gateway.db.fetch(
        "SELECT response_content, attempt_output_tokens, lease_expires_at > now() + interval '10 seconds' AS held"
        " FROM request_logs WHERE request_id = ANY($1::uuid[])",
        ids,
    )
    assert {(r["response_content"], r["attempt_output_tokens"], r["held"]) for r in rows} == {("partial 1", 2, True)}


async def test_the_reaper_finds_a_lapsed_lease_among_running_rows(quiet_db: asyncpg.Pool) -> None:
    held, lapsed = await running(quiet_db, 15), await running(quiet_db, -1)
    async with quiet_db.acquire() as conn:
        requeued, failed = await lifecycle.reap_expired(conn, max_attempts=5)
    assert lapsed in {r["request_id"] for r in requeued} and not failed
    statuses = dict(
        await quiet_db.fetch(
            "SELECT request_id::text, status FROM request_logs WHERE request_id = ANY($1::uuid[])", [held, lapsed]
        )
    )
    assert statuses == {held: "running", lapsed: "queued"}


async def _updates(conn: asyncpg.Connection) -> tuple[int, int]:
    """This backend's row updates and HOT updates of request_logs not yet sent to the statistics (no wait
    for them to be)."""
    row = await conn.fetchrow(
        "SELECT pg_stat_get_xact_tuples_updated(oid), pg_stat_get_xact_tuples_hot_updated(oid)"
        " FROM pg_class WHERE relname = 'request_logs'"
    )
    return row[0], row[1]


async def test_a_heartbeat_and_a_batch_of_endings_lock_their_rows_in_one_order(app: App) -> None:
    """Both lock many running rows. Each in its own plan's order (a batch of endings: the table's, `early`
    before `late`; a beat: its leases', here newest first), the batch waited for `early` while another
    transaction held it, the beat took `late` and waited for `early` too; let go, `early` went to the
    batch, which then waited for `late`: a deadlock. In `id` order the beat waits behind the batch and
    finds both requests ended."""
    pool = app.gateway.db
    ids = [await running(app.gateway.db, 15) for _ in range(100)]
    early, late = ids[10], ids[90]
    await pool.execute("ANALYZE request_logs")
    sessions = dict(
        await pool.fetch(
            "SELECT request_id::text, session_id::text FROM request_logs WHERE request_id = ANY($1::uuid[])",
            [early, late],
        )
    )

    def ending(request_id: str) -> lifecycle._Ending:
        job = JobPayload(request_id=request_id, session_id=sessions[request_id], tenant_id="t", correlation_id="c")
        return lifecycle._Ending(job, "completed", "reply", None, "agent", {}, Usage())

    holder = await asyncpg.connect(app.settings.database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM request_logs WHERE request_id = $1 FOR UPDATE", early)
            batch = asyncio.ensure_future(lifecycle._finish_many(pool, [ending(early), ending(late)]))
            await asyncio.sleep(0.3)
            leases = [(r, 1, None, None, Usage(), "") for r in reversed(ids)]
            beat = asyncio.ensure_future(lifecycle.heartbeat(pool, leases, 15))
            await asyncio.sleep(0.3)
    finally:
        await holder.close()
    ended, held = await asyncio.wait_for(asyncio.gather(batch, beat), 10)
    assert [e is not None for e, _ in ended] == [True, True]
    assert held == set(ids) - {early, late}
