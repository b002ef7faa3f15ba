"""A worker that is not warm (a model it may call still needs litellm's import) takes only jobs that waited
COLD_JOB_AGE_SECONDS; a warm one takes every ready job. (Which workers are warm at once: `model.ready_for`,
tests/agents/test_model_paths.py.)"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from common.queue import enqueue as queue
from common.queue.worker import COLD_JOB_AGE_SECONDS
from tests.conftest import Infra
from tests.support.queue import hand_driven_worker


async def taken(infra: Infra, warm: bool, waited: float) -> bool:
    """Whether one poll of a worker (`warm` or not) starts a job queued `waited` seconds ago."""
    name = f"cold-{uuid.uuid4().hex[:8]}"
    ran: list[str] = []

    async def job(ctx: dict[str, Any], tag: str) -> None:
        ran.append(tag)

    worker, pool = await hand_driven_worker(infra.redis_url, name, job, warm=lambda: warm)
    try:
        await queue.push(pool, name, "job", uuid.uuid4().hex, ("tag",), defer_seconds=-waited)
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
