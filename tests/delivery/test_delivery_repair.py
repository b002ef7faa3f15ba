"""Deliveries outlive a lost job or enqueue: what Postgres says is owed is queued again by the
dispatcher's sweep (dispatcher/repair.py), and a store outage inside a job is waited out.

The first test is end to end (gateway, workers, a real dispatcher process); the others run the
dispatcher's jobs in this process on a database no relaygate process uses, against the suite's Valkey.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from prometheus_client import REGISTRY
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from common.delivery.jobs import DELIVER, DeliveryJob
from common.platform import db
from common.platform.keys import dispatcher_queue
from dispatcher import jobs, records, repair
from dispatcher.runtime import DispatcherRuntime
from tests.conftest import Infra, Stack, settings_for
from tests.fakes.http_receiver import Receiver
from tests.support.delivery import (
    Dispatchers,
    ask,
    deliveries,
    delivery_events,
    dispatcher_runtime,
    final,
    full_logs,
    user,
    webhook_override,
    whsec,
)
from tests.support.proxy import proxy_postgres
from tests.support.streams import wait_status


def test_a_reply_whose_delivery_job_was_lost_is_delivered_by_the_sweep(stack: Stack, receiver: Receiver) -> None:
    """The worker's enqueue is lost (as when it dies right after the ending, or Redis is down then): the
    row's `delivery_pending` mark makes a dispatcher started later deliver it, once."""
    c, uid = user(stack)
    path = f"/hook/{uid}"
    webhook_override(c, uid, receiver, path, retry_count=0)
    accepted = ask(c)
    request_id = accepted["request_id"]
    assert wait_status(c, request_id, {"completed"})["status"] == "completed"
    queue = SyncRedis.from_url(stack.infra.redis_url)
    try:
        job_id = f"dlv:{request_id}"
        assert queue.zscore(dispatcher_queue(), job_id) is not None  # the worker queued it
        queue.zrem(dispatcher_queue(), job_id)
        queue.delete(job_key_prefix + job_id)
    finally:
        queue.close()
    assert _pending(stack, request_id) is True
    dispatchers = Dispatchers(stack, {"DELIVERY_JOB_TIMEOUT_SECONDS": "3"})
    dispatchers.start()
    try:
        events = delivery_events(c, accepted, final, timeout=30)
        assert [(e["data"]["channel"], e["data"]["status"]) for e in events] == [("WEBHOOK", "SUCCESS")]
        assert [r["status"] for r in deliveries(c, uid)] == ["SUCCESS"]
        assert len(receiver.on(path)) == 1
        assert _pending(stack, request_id) is False
        assert "deliveries queued again" in full_logs(stack)
    finally:
        dispatchers.stop()


def _pending(stack: Stack, request_id: str) -> bool:
    async def read() -> bool:
        conn = await asyncpg.connect(stack.infra.database_url)
        try:
            value: bool = await conn.fetchval(
                "SELECT delivery_pending FROM request_logs WHERE request_id = $1", request_id
            )
            return value
        finally:
            await conn.close()

    return asyncio.run(read())


# In-process: a completed request of its own in the quiet database, with one channel.


@pytest.fixture
async def rt(infra: Infra, quiet_database_url: str) -> AsyncIterator[DispatcherRuntime]:
    settings = settings_for(
        infra,
        database_url=quiet_database_url,
        outbound_allow_hosts="127.0.0.1",
        delivery_job_timeout_seconds=1,
    )
    async with dispatcher_runtime(settings) as runtime:
        yield runtime


async def _completed(pool: asyncpg.Pool, channel: str, config: dict[str, Any], retry_delay: int = 1) -> DeliveryJob:
    """A completed request whose user delivers to `channel`, and its first attempt's job."""
    tenant, user_id, session_id, request_id = f"t-{uuid.uuid4().hex[:8]}", "u", str(uuid.uuid4()), str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, expires_at)"
        " VALUES ($1, $2, $3, 'web', now() + interval '1 day')",
        session_id,
        tenant,
        user_id,
    )
    await pool.execute(
        """
        INSERT INTO request_logs (request_id, session_id, tenant_id, user_id, request_type, request_content,
                                  normalized_request, deadline_at, status, response_content, completed_at)
        VALUES ($1, $2, $3, $4, 'web', 'hi', '{}', now() + interval '1 hour', 'completed', 'the reply', now())
        """,
        request_id,
        session_id,
        tenant,
        user_id,
    )
    await pool.execute(
        "INSERT INTO user_integration_configs (tenant_id, user_id, integration_type, retry_count, retry_delay_seconds,"
        " config) VALUES ($1, $2, $3, 3, $4, $5)",
        tenant,
        user_id,
        channel,
        retry_delay,
        config,
    )
    completed = await pool.fetchval(
        "SELECT extract(epoch FROM completed_at)::float8 FROM request_logs WHERE request_id = $1", request_id
    )
    return DeliveryJob(
        request_id=request_id,
        session_id=session_id,
        tenant_id=tenant,
        user_id=user_id,
        channel=channel,  # type: ignore[arg-type]
        expires_at=completed + 24 * 3600,
    )


async def _take(redis: Redis, job_id: str) -> DeliveryJob | None:
    """Take job `job_id` off the dispatcher's queue, as a dispatcher would: its argument, or None if not queued."""
    raw = await redis.get(job_key_prefix + job_id)
    await redis.zrem(dispatcher_queue(), job_id)
    await redis.delete(job_key_prefix + job_id)
    if raw is None:
        return None
    queued = deserialize_job(raw)
    assert queued.function == DELIVER
    return DeliveryJob.model_validate(queued.args[0])


def _requeued(reason: str) -> float:
    return REGISTRY.get_sample_value("relaygate_deliveries_requeued_total", {"reason": reason}) or 0.0


async def _rows(pool: asyncpg.Pool, job: DeliveryJob) -> list[tuple[int, str, bool]]:
    rows = await pool.fetch(
        "SELECT attempt, status, retry_at IS NOT NULL AS due FROM delivery_logs WHERE request_id = $1 ORDER BY attempt",
        job.request_id,
    )
    return [(r["attempt"], r["status"], r["due"]) for r in rows]


async def test_a_retry_that_could_not_be_queued_is_queued_once_due(
    rt: DispatcherRuntime, receiver: Receiver, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"/hook/{uuid.uuid4().hex[:8]}"
    receiver.secrets[path] = secret = whsec()
    receiver.then(path, 503)
    job = await _completed(rt.db, "WEBHOOK", {"url": receiver.base_url + path, "secret": secret})

    async def redis_down(*args: Any, **kwargs: Any) -> bool:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(jobs.delivery, "enqueue_attempt", redis_down)
    assert await jobs.deliver({"rt": rt}, job.model_dump()) == "RETRYING"
    monkeypatch.undo()
    assert await _rows(rt.db, job) == [(1, "RETRYING", True)]
    assert await repair.sweep_once(rt, grace=0) == 0  # not due for a second yet
    await asyncio.sleep(1.1)
    before = _requeued("retry")
    assert await repair.sweep_once(rt, grace=0) == 1
    assert _requeued("retry") == before + 1
    assert await repair.sweep_once(rt, grace=0) == 0  # already queued: not doubled
    second = await _take(redis, f"dlv:{job.key}:2")
    assert second == job.model_copy(update={"attempt": 2})
    assert await jobs.deliver({"rt": rt}, second.model_dump()) == "SUCCESS"
    assert await _rows(rt.db, job) == [(1, "RETRYING", False), (2, "SUCCESS", False)]
    assert await repair.sweep_once(rt, grace=0) == 0
    assert len(receiver.on(path)) == 2


async def test_an_attempt_left_pending_runs_again_and_is_recorded_once(
    rt: DispatcherRuntime, quiet_db: asyncpg.Pool, redis: Redis
) -> None:
    """Its job failed mid-way (a store outage past the job's timeout) or was lost: past the timeout,
    the sweep queues the same attempt again, and it ends in the row it opened."""
    job = await _completed(rt.db, "TEST", {})
    opened = await records.open_attempt(rt.db, job)
    assert await repair.sweep_once(rt, grace=0) == 0  # its job may still be running
    await quiet_db.execute(
        "UPDATE delivery_logs SET updated_at = now() - interval '2 seconds' WHERE delivery_id = $1",
        opened["delivery_id"],
    )
    before = _requeued("stalled")
    assert await repair.sweep_once(rt, grace=0) == 1
    assert _requeued("stalled") == before + 1
    again = await _take(redis, f"dlv:{job.key}:1")
    assert again == job  # expiry too: counted from the request's completion
    assert await jobs.deliver({"rt": rt}, again.model_dump()) == "SUCCESS"
    rows = await rt.db.fetch(
        "SELECT delivery_id::text, status FROM delivery_logs WHERE request_id = $1", job.request_id
    )
    assert [(r["delivery_id"], r["status"]) for r in rows] == [(opened["delivery_id"], "SUCCESS")]
    assert await repair.sweep_once(rt, grace=0) == 0


async def test_a_slack_thread_being_followed_is_left_to_its_follow_job(
    rt: DispatcherRuntime, quiet_db: asyncpg.Pool
) -> None:
    """A Slack thread (a Slack request's reply, or a Slack schedule's) is followed by a job that may run for
    minutes (its continuations reopen the row), and a DELIVER job would post elsewhere: the sweep leaves it."""
    job = await _completed(rt.db, "SLACK", {})
    opened = await records.open_attempt(rt.db, job, follows=True)
    await quiet_db.execute(
        "UPDATE delivery_logs SET updated_at = now() - interval '1 hour' WHERE delivery_id = $1", opened["delivery_id"]
    )
    assert await repair.sweep_once(rt, grace=0) == 0


async def test_a_postgres_outage_inside_a_delivery_is_waited_out(
    rt: DispatcherRuntime, quiet_database_url: str
) -> None:
    job = await _completed(rt.db, "TEST", {})
    proxy, url = proxy_postgres(quiet_database_url)
    pool = await db.create_pool(url, min_size=1, max_size=2)
    try:
        cut_rt = DispatcherRuntime(**{**rt.__dict__, "db": pool})
        proxy.cut()
        delivering = asyncio.create_task(jobs.deliver({"rt": cut_rt}, job.model_dump()))
        await asyncio.sleep(1.0)
        assert not delivering.done()
        proxy.restore()
        started = time.monotonic()
        assert await asyncio.wait_for(delivering, 15) == "SUCCESS"
        assert time.monotonic() - started < 10
    finally:
        await pool.close()
        proxy.close()
    assert await _rows(rt.db, job) == [(1, "SUCCESS", False)]
