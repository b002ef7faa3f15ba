"""ARQ queues: one per feature; job ids make every enqueue idempotent."""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings, create_pool

from common.models import JobPayload
from common.settings import queue_name

PROCESS_REQUEST = "process_request"


def job_id(request_id: str, attempt: int) -> str:
    """The first attempt's job id is the request id; later attempts get their own."""
    return request_id if attempt == 1 else f"{request_id}:{attempt}"


async def connect(url: str) -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue_name("default"))


async def enqueue(pool: ArqRedis, feature: str, payload: JobPayload) -> bool:
    """True when queued now; False when a job with this id already exists (already queued or done)."""
    job = await pool.enqueue_job(
        PROCESS_REQUEST,
        payload.model_dump(),
        _job_id=job_id(payload.request_id, payload.attempt),
        _queue_name=queue_name(feature),
    )
    return job is not None
