"""A relaygate queue worker on the test Valkey, driven by hand (`worker._poll_iteration()`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import func

from common.queue.worker import RelayWorker


async def hand_driven_worker(
    redis_url: str, queue_name: str, job: Callable[..., Awaitable[None]], **options: Any
) -> tuple[RelayWorker, ArqRedis]:
    """A worker of `queue_name` running `job` (enqueued as "job"), admitting 10 jobs a poll, with its pool
    (the caller closes it); `options` override RelayWorker's arguments."""
    settings = RedisSettings.from_dsn(redis_url)
    pool = await create_pool(settings)
    arguments: dict[str, Any] = {
        "max_lag_ms": 1000,
        "admit_batch": 10,
        "on_drain": lambda: None,
        "in_progress_seconds": 5,
    }
    worker = RelayWorker(
        functions=[func(job, name="job")],
        queue_name=queue_name,
        redis_settings=settings,
        **{**arguments, **options},
    )
    worker._pool = pool
    return worker, pool
