"""The reapers requeue a lost attempt or run even when Redis is down at that moment (a restart mid-lease)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from arq.constants import job_key_prefix
from redis.exceptions import ConnectionError as RedisConnectionError

from common.platform.keys import queue_name
from common.platform.settings import Settings
from common.queue import enqueue as queue
from common.requests import lifecycle
from tests.support.app import App
from workers import flows, maintenance
from workers.runner import WorkerRuntime


async def test_a_requeue_waits_out_a_redis_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    nothing_used = {"lost_input_tokens": 0, "lost_output_tokens": 0, "lost_cost_usd": 0.0}
    row = {"request_id": "r1", "attempt": 1, "tenant_id": "t1", "user_id": "u1", "correlation_id": "", **nothing_used}
    row |= {"holder_gone": True, "lease_holder": 7}
    job = ("default", SimpleNamespace(request_id="r1"))
    tries: list[tuple[Any, ...]] = []

    @contextlib.asynccontextmanager
    async def acquire() -> AsyncIterator[None]:
        yield None

    async def reap_expired(conn: None, max_attempts: int, *gone: object) -> tuple[list[dict[str, Any]], list[Any]]:
        return [row], []

    async def enqueue(pool: object, feature: str, payload: object) -> None:
        tries.append((feature, payload))
        if len(tries) < 3:
            raise RedisConnectionError("Connection refused")

    async def nothing(*args: object) -> int:
        return 0

    monkeypatch.setattr(maintenance.lifecycle, "reap_expired", reap_expired)
    monkeypatch.setattr(maintenance.lifecycle, "job_for", lambda r: job)
    monkeypatch.setattr(maintenance.queue, "enqueue", enqueue)
    monkeypatch.setattr(maintenance, "repair_endings_once", nothing)
    monkeypatch.setattr(maintenance, "requeue_retries_once", nothing)
    rt: Any = SimpleNamespace(
        db=SimpleNamespace(acquire=acquire),
        queue=object(),
        streams=None,
        presence=None,
        settings=Settings(),
        postgres_trouble_at=float("-inf"),
    )

    await maintenance.reap_once(rt)

    assert tries == [job, job, job]


async def test_a_flow_run_requeue_waits_out_a_redis_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"run_id": "run1", "tenant_id": "t1", "attempt": 2, "correlation_id": "c1", "feature": "default"}
    row |= {"holder_gone": False, "lease_holder": 7}
    tries: list[tuple[str, Any]] = []

    async def nothing(*args: object) -> int:
        return 0

    async def reap_expired(max_attempts: int, *gone: object) -> tuple[list[dict[str, Any]], list[Any]]:
        return [row], []

    async def enqueue_run(pool: object, feature: str, job: Any) -> None:
        tries.append((feature, job.run_id))
        if len(tries) < 3:
            raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(flows.RunStore, "of", lambda rt: SimpleNamespace(reap_expired=reap_expired))
    monkeypatch.setattr(flows, "enqueue_run", enqueue_run)
    monkeypatch.setattr(flows, "repair_endings_once", nothing)
    monkeypatch.setattr(flows, "requeue_retries_once", nothing)
    rt: Any = SimpleNamespace(
        queue=object(), streams=None, presence=None, settings=Settings(), postgres_trouble_at=float("-inf")
    )

    await flows.reap_once(rt)

    assert tries == [("default", "run1")] * 3


async def test_the_sweep_queues_a_lost_head_again_and_counts_only_that(
    app: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued request whose job is gone (the queue was down when it came) is queued again; one whose
    job still waits (no worker serves its feature yet) is left as it is, and not reported requeued."""
    gw = app.gateway
    async with app.client() as client:
        lost, waiting = [
            (await client.post("/api/v1/requests/web", json={"content": c, "new_session": True})).json()["request_id"]
            for c in ("lost", "waiting")
        ]
    arq = await queue.connect(app.settings.queue_redis_url)
    try:
        await arq.zrem(queue_name("gateway-tests"), lost)
        await arq.delete(job_key_prefix + lost)
        await gw.db.execute(
            "UPDATE request_logs SET updated_at = now() - interval '1 minute' WHERE request_id = ANY($1::uuid[])",
            [lost, waiting],
        )
        stalled_heads = lifecycle.stalled_heads

        async def ours(conn: object, older_than_seconds: float) -> list[Any]:  # not other tests' rows
            return [h for h in await stalled_heads(conn, older_than_seconds) if h[1].request_id in (lost, waiting)]

        monkeypatch.setattr(lifecycle, "stalled_heads", ours)
        rt = WorkerRuntime(
            settings=app.settings, db=gw.db, streams=gw.streams, queue=arq, writer=gw.writer, agents=gw.agents
        )
        with caplog.at_level(logging.INFO, logger=maintenance.__name__):
            await maintenance.sweep_once(rt)
            await maintenance.sweep_once(rt)
        assert await arq.zscore(queue_name("gateway-tests"), lost) is not None
        assert await arq.zscore(queue_name("gateway-tests"), waiting) is not None
        requeued = [r.requeued for r in caplog.records if r.getMessage() == "sweep"]  # type: ignore[attr-defined]
        assert requeued == [1]
    finally:
        await arq.aclose()


async def test_a_reaper_that_cannot_connect_notes_postgres_trouble() -> None:
    """A worker with no running attempt sends no beats: its reaper failing to get a connection is how it
    learns Postgres is away, so that once Postgres is back it spares the lapsed leases of live workers."""

    @contextlib.asynccontextmanager
    async def refused() -> AsyncIterator[None]:
        raise ConnectionRefusedError("connection refused")
        yield  # pragma: no cover

    rt: Any = SimpleNamespace(
        db=SimpleNamespace(acquire=refused), presence=object(), settings=Settings(), postgres_trouble_at=float("-inf")
    )
    with pytest.raises(ConnectionRefusedError):
        await maintenance.reap_once(rt)
    assert time.monotonic() - rt.postgres_trouble_at < 1


async def test_a_retried_request_whose_job_was_lost_is_queued_again_in_seconds(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reaper that dies between requeueing a request and queueing its job leaves it queued without one:
    the next reaper pass queues it once it is a few seconds old, not the stalled sweep 10-20 s later."""
    gw = app.gateway
    async with app.client() as client:
        accepted = await client.post("/api/v1/requests/web", json={"content": "retried", "new_session": True})
    request_id = accepted.json()["request_id"]
    await gw.db.execute(
        "UPDATE request_logs SET attempt = 2, updated_at = now() - interval '1 second' WHERE request_id = $1",
        request_id,
    )
    unqueued = lifecycle.unqueued_retries

    async def ours(conn: object, older_than_seconds: float) -> list[Any]:  # not other tests' rows
        return [h for h in await unqueued(conn, older_than_seconds) if h[1].request_id == request_id]

    monkeypatch.setattr(lifecycle, "unqueued_retries", ours)
    arq = await queue.connect(app.settings.queue_redis_url)
    job = queue.job_id(request_id, 2)
    try:
        rt = WorkerRuntime(
            settings=app.settings, db=gw.db, streams=gw.streams, queue=arq, writer=gw.writer, agents=gw.agents
        )
        assert await maintenance.requeue_retries_once(rt) == 0  # requeued a second ago: its job may be on its way
        await gw.db.execute(
            "UPDATE request_logs SET updated_at = now() - interval '5 seconds' WHERE request_id = $1", request_id
        )
        assert await maintenance.requeue_retries_once(rt) == 1
        assert await arq.zscore(queue_name("gateway-tests"), job) is not None
        assert await maintenance.requeue_retries_once(rt) == 0  # queued: not doubled
    finally:
        await arq.zrem(queue_name("gateway-tests"), job)
        await arq.delete(job_key_prefix + job)
        await arq.aclose()
