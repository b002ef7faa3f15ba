"""A stale job of a request (ARQ running an earlier attempt's job again beside the retry, after the
frozen worker that held it stopped renewing it) starts nothing and takes nothing from the retry.

Before: sharing one claim batch, both jobs were handed the retry's row; the stale run, fenced at its
first append, took the retry out of the worker's runs as it ended, and the retry's lease lapsed (a
third attempt, tests/requests/test_recovery.py)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from common.platform import db
from common.queue import enqueue as queue
from common.requests.models import JobPayload
from tests.conftest import Infra
from tests.queue.test_claims import _request, _session
from tests.support.app import App
from workers.attempt import Attempt
from workers.claims import ClaimBatcher
from workers.runner import ACTIVE, WorkerRuntime


async def test_a_stale_job_in_the_retrys_claim_batch_gets_nothing(infra: Infra) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(infra.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            stale = await _request(conn, await _session(conn, tenant), tenant)
            await conn.execute("UPDATE request_logs SET attempt = 2 WHERE request_id = $1", stale.request_id)
        retry = stale.model_copy(update={"attempt": 2})
        claims = ClaimBatcher(pool, lease_seconds=15, history_turns=2, holder=lambda: None)
        got_stale, got_retry = await asyncio.gather(claims.claim(stale), claims.claim(retry))
        assert got_stale is None
        assert got_retry is not None and got_retry.row["attempt"] == 2
    finally:
        await pool.close()


async def test_an_older_run_ending_leaves_the_newer_one_tracked(app: App) -> None:
    arq = await queue.connect(app.settings.queue_redis_url)
    gw = app.gateway
    rt = WorkerRuntime(
        settings=app.settings, db=gw.db, streams=gw.streams, queue=arq, writer=gw.writer, agents=gw.agents
    )
    try:
        payload = JobPayload(request_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()), tenant_id="t")
        older, newer = Attempt(payload), Attempt(payload.model_copy(update={"attempt": 2}))
        with rt.tracking(older):
            with rt.tracking(newer):
                assert rt.active[payload.request_id] is newer
                assert older.stop is not None and older.stop.fenced, "the superseded run is halted"
                assert newer.stop is None
                assert ACTIVE._value.get() == 1, "one request runs, however many of its attempts wind down"
            assert payload.request_id not in rt.active
            assert ACTIVE._value.get() == 0
        older = Attempt(payload)
        with contextlib.ExitStack() as newer_runs:
            with rt.tracking(older):
                newer_runs.enter_context(rt.tracking(newer))
            assert rt.active[payload.request_id] is newer, "the older run's end left the newer one in place"
        assert rt.active == {}
    finally:
        await arq.aclose()
