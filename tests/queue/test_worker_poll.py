"""A worker's poll finds the oldest free jobs behind any number of jobs running elsewhere.

A running job stays in its queue until it ends. ARQ read a fixed 5 x max_jobs ids per poll: with more
jobs than that running on other workers at the head of the queue (ten workers of 1,000 jobs), a new
worker found nothing free and started nothing until they ended."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from common.queue import enqueue as queue
from tests.conftest import Infra
from tests.support.queue import hand_driven_worker


async def queued(pool: ArqRedis, name: str, count: int) -> list[str]:
    """`count` jobs, oldest first (each waited a little longer than the next)."""
    ids = [f"{n:04d}-{uuid.uuid4().hex[:6]}" for n in range(count)]
    for n, jid in enumerate(ids):
        await queue.push(pool, name, "job", jid, (jid,), defer_seconds=-(count - n) / 100)
    return ids


async def test_a_poll_starts_the_oldest_free_jobs_behind_many_running_elsewhere(infra: Infra) -> None:
    name = f"poll-{uuid.uuid4().hex[:8]}"
    started: list[str] = []
    release = asyncio.Event()

    async def job(ctx: dict[str, Any], jid: str) -> None:
        started.append(jid)
        await release.wait()

    worker, pool = await hand_driven_worker(infra.redis_url, name, job, max_jobs=20, in_progress_seconds=30)
    try:
        ids = await queued(pool, name, 300)
        elsewhere = ids[:250]  # what ARQ read (5 x max_jobs = 100 ids) runs on other workers
        await pool.mset({in_progress_key_prefix + jid: b"1" for jid in elsewhere})

        await worker._poll_iteration()
        await asyncio.sleep(0.1)
        assert sorted(started) == ids[250:260]
        assert worker.backlog  # 40 more wait

        await worker._poll_iteration()  # its own ten are passed over as well
        await asyncio.sleep(0.1)
        assert sorted(started) == ids[250:270]
    finally:
        release.set()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await pool.delete(name, *(in_progress_key_prefix + jid for jid in ids))
        await pool.aclose()
