"""Faults at the worst moments of a request's life (issue 15): a job taken by a worker that dies before
its claim, a request stored by a gateway that dies before queueing it, and store outages under a running
worker. Each ends with the request finished, once."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import redis
from arq.constants import in_progress_key_prefix, job_key_prefix

from tests.conftest import Stack, wait_until
from tests.support.app import App
from tests.support.proxy import proxy_postgres, proxy_redis
from tests.support.streams import done_for, read_until, wait_status


@contextmanager
def row_locked(database_url: str, request_id: str) -> Iterator[None]:
    """Hold a lock on the request's row, so a worker's claim of it blocks until the block ends."""
    locked, release = threading.Event(), threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM request_logs WHERE request_id = $1 FOR UPDATE", request_id)
                locked.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait)
        finally:
            await conn.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
    holder.start()
    assert locked.wait(30)
    try:
        yield
    finally:
        release.set()
        holder.join(30)


def test_a_job_taken_by_a_worker_that_dies_before_its_claim_runs_again_in_seconds(new_stack: Stack) -> None:
    """With a 60 s lease (HEARTBEAT_SECONDS 0.5): a taker waiting on its claim keeps the job, and one killed
    before its claim lets it go within two heartbeats, not a lease."""
    lease, heartbeat = 60, 0.5
    new_stack.start_gateway()
    queue = redis.Redis.from_url(new_stack.infra.redis_url)
    with new_stack.client() as c:
        accepted = c.post(
            "/api/v1/requests/web",
            json={"content": "taken, never claimed", "new_session": True, "agent_id": "unclaimed"},
        )
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["request_id"]
        in_progress = in_progress_key_prefix + request_id
        started = f"{request_id}:process_request"  # ARQ's log line of a job it starts
        with row_locked(new_stack.infra.database_url, request_id):
            first = new_stack.start_worker("unclaimed", LEASE_SECONDS=str(lease))
            wait_until(lambda: queue.exists(in_progress), 30, "the worker to take the job")
            # Unclaimed, the key lives two heartbeats (renewed while the claim waits), not a lease or the
            # longest job timeout + 10 s (a day); a peer started meanwhile finds the job taken.
            second = new_stack.start_worker("unclaimed", LEASE_SECONDS=str(lease))
            time.sleep(4 * heartbeat)
            assert 0 < queue.pttl(in_progress) <= 2 * heartbeat * 1000
            assert started not in new_stack.worker_log(second)
            os.kill(first.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            first.wait(10)
        stored = wait_status(c, request_id, {"completed", "failed"}, timeout=lease / 2)
        assert stored["status"] == "completed", (stored, new_stack.logs())
        assert time.monotonic() - killed_at < lease / 4, "the job waited for a lease"
        assert started in new_stack.worker_log(second)
        events = read_until(c, accepted.json()["stream_url"], done_for(request_id), params={"from": "0-0"})
        assert [e.event for e in events].count("done") == 1


def test_workers_ride_out_redis_and_postgres_outages(new_stack: Stack) -> None:
    pg, pg_url = proxy_postgres(new_stack.infra.database_url)
    rd, rd_url = proxy_redis(new_stack.infra.redis_url)
    try:
        new_stack.start_gateway()
        worker = new_stack.start_worker("outages", DATABASE_URL=pg_url, REDIS_URL=rd_url)
        rd.cut()  # what a Redis restart looks like to the worker: connections dropped, then refused
        time.sleep(3)
        assert worker.poll() is None, new_stack.logs()
        rd.restore()
        pg.cut()
        time.sleep(3)
        assert worker.poll() is None, new_stack.logs()
        pg.restore()
        with new_stack.client() as c:
            accepted = c.post(
                "/api/v1/requests/web",
                json={"content": "after the outages", "new_session": True, "agent_id": "outages"},
            ).json()
            stored = wait_status(c, accepted["request_id"], {"completed", "failed"}, timeout=60)
        assert stored["status"] == "completed", (stored, new_stack.logs())
        assert worker.poll() is None
        # The row says completed before the job has written the stream's end and returned: wait for the
        # job itself, or the stores would go down under a job still running.
        finished = f"{accepted['request_id']}:process_request ● 'completed'"
        wait_until(lambda: finished in new_stack.worker_log(worker), 30, "the job to return")
        # Stopped while both stores are down, with nothing running: it exits at once (not after the
        # 20 s drain period, waiting on jobs that have ended) and cleanly.
        rd.cut()
        pg.cut()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0, new_stack.logs()
        assert "queue unreachable while stopping" in new_stack.logs()
    finally:
        pg.close()
        rd.close()


async def test_a_replay_queues_a_request_its_first_intake_stored_but_never_queued(app: App) -> None:
    """A gateway that died between storing a request and queueing it: the client's retry with the same
    Idempotency-Key answers that request and queues it, rather than leaving it to the stalled sweep."""
    body = {"content": "stored, never queued", "new_session": True}
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    queue, name = app.gateway.queue, app.settings.feature_queue("gateway-tests")
    async with app.client() as c:
        first = await c.post("/api/v1/requests/web", json=body, headers=headers)
        assert first.status_code == 202, first.text
        request_id = first.json()["request_id"]
        assert await queue.exists(job_key_prefix + request_id)
        await queue.delete(job_key_prefix + request_id)  # as if the gateway died before queueing it
        await queue.zrem(name, request_id)
        again = await c.post("/api/v1/requests/web", json=body, headers=headers)
        assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["request_id"] == request_id
    assert await queue.exists(job_key_prefix + request_id)
    assert await queue.zscore(name, request_id) is not None
