"""ARQ queues (one per feature, and the dispatcher's): job ids make every enqueue idempotent."""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from opentelemetry.trace import SpanKind

from common.platform import lua, metrics, tracing
from common.platform.batching import pipelined
from common.platform.keys import queue_name, queue_wake_key
from common.requests.models import JobPayload

PROCESS_REQUEST = "process_request"

WAKE_BACKLOG = 16

_ENQUEUE = lua.load(__file__, "enqueue.lua", WAKE_LAST=WAKE_BACKLOG - 1)


def job_id(request_id: str, attempt: int) -> str:
    """The first attempt's job id is the request id; later attempts get their own."""
    return request_id if attempt == 1 else f"{request_id}:{attempt}"


async def connect(url: str) -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue_name("default"))


async def push(
    pool: ArqRedis, queue: str, function: str, jid: str, args: tuple[Any, ...], *, defer_seconds: float = 0
) -> bool:
    """Queue `function(*args)` as job `jid` on any relaygate queue and wake an idle worker of it.

    False when a job with this id already exists (queued, running or done).
    """
    now = timestamp_ms()
    defer_ms = int(defer_seconds * 1000)
    job = serialize_job(function, args, {}, None, now, serializer=pool.job_serializer)
    queued = await pipelined(pool).script(
        pool.register_script(_ENQUEUE),
        [job_key_prefix + jid, result_key_prefix + jid, queue, queue_wake_key(queue), in_progress_key_prefix + jid],
        [pool.expires_extra_ms + defer_ms, job, now + defer_ms, jid],
    )
    return bool(queued)


async def enqueue(pool: ArqRedis, feature: str, payload: JobPayload) -> bool:
    """Queue a request's attempt on its feature's queue; False when that attempt is already queued or done."""
    queue = queue_name(feature)
    with tracing.span(f"enqueue {queue}", kind=SpanKind.PRODUCER, attributes={"messaging.destination.name": queue}):
        if not payload.trace_context and (context := tracing.inject()):
            payload = payload.model_copy(update={"trace_context": context})
        queued = await push(
            pool, queue, PROCESS_REQUEST, job_id(payload.request_id, payload.attempt), (payload.model_dump(),)
        )
        if queued:
            metrics.JOBS_ENQUEUED.labels(queue).inc()
    return queued
