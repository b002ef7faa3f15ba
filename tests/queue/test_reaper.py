"""The reapers requeue a lost attempt or run even when Redis is down at that moment (a restart mid-lease)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from workers import flows, maintenance


async def test_a_requeue_waits_out_a_redis_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    nothing_used = {"lost_input_tokens": 0, "lost_output_tokens": 0, "lost_cost_usd": 0.0}
    row = {"request_id": "r1", "attempt": 1, "tenant_id": "t1", "user_id": "u1", "correlation_id": "", **nothing_used}
    job = ("default", SimpleNamespace(request_id="r1"))
    tries: list[tuple[Any, ...]] = []

    @contextlib.asynccontextmanager
    async def acquire() -> AsyncIterator[None]:
        yield None

    async def reap_expired(conn: None, max_attempts: int) -> tuple[list[dict[str, Any]], list[Any]]:
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
    rt: Any = SimpleNamespace(db=SimpleNamespace(acquire=acquire), queue=object(), streams=None)

    await maintenance.reap_once(rt)

    assert tries == [job, job, job]


async def test_a_flow_run_requeue_waits_out_a_redis_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"run_id": "run1", "tenant_id": "t1", "attempt": 2, "correlation_id": "c1", "feature": "default"}
    tries: list[tuple[str, Any]] = []

    async def reap_expired(max_attempts: int) -> tuple[list[dict[str, Any]], list[Any]]:
        return [row], []

    async def enqueue_run(pool: object, feature: str, job: Any) -> None:
        tries.append((feature, job.run_id))
        if len(tries) < 3:
            raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(flows.RunStore, "of", lambda rt: SimpleNamespace(reap_expired=reap_expired))
    monkeypatch.setattr(flows, "enqueue_run", enqueue_run)
    rt: Any = SimpleNamespace(queue=object())

    await flows.reap_once(rt)

    assert tries == [("default", "run1")] * 3
