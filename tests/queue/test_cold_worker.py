"""A worker that is not warm (a model it may call still needs litellm's import) takes only jobs that waited
COLD_JOB_AGE_SECONDS; a warm one takes every ready job. (Which workers are warm at once: `model.ready_for`,
tests/agents/test_model_paths.py.)"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from arq.connections import RedisSettings, create_pool
from arq.worker import func

from common.queue import enqueue as queue
from common.queue.worker import COLD_JOB_AGE_SECONDS, RelayWorker
from tests.conftest import Infra


async def taken(infra: Infra, warm: bool, waited: float) -> bool:
    """Whether one poll of a worker (`warm` or not) starts a job queued `waited` seconds ago."""
    name = f"cold-{uuid.uuid4().hex[:8]}"
    ran: list[str] = []

    async def job(ctx: dict[str, Any], tag: str) -> None:
        ran.append(tag)

    settings = RedisSettings.from_dsn(infra.redis_url)
    pool = await create_pool(settings)
    worker = RelayWorker(
        functions=[func(job, name="job")],
        queue_name=name,
        redis_settings=settings,
        max_lag_ms=1000,
        admit_batch=10,
        on_drain=lambda: None,
        in_progress_seconds=5,
        warm=lambda: warm,
    )
    try:
        await queue.push(pool, name, "job", uuid.uuid4().hex, ("tag",), defer_seconds=-waited)
        worker._pool = pool
        await worker._poll_iteration()
        await asyncio.gather(*worker.tasks.values())
        return ran == ["tag"]
    finally:
        await pool.aclose()


async def test_a_cold_worker_leaves_fresh_jobs_to_warm_peers(infra: Infra) -> None:
    assert await taken(infra, warm=False, waited=0) is False
    assert await taken(infra, warm=True, waited=0) is True


async def test_a_cold_worker_takes_jobs_nobody_took(infra: Infra) -> None:
    assert await taken(infra, warm=False, waited=COLD_JOB_AGE_SECONDS + 1) is True
