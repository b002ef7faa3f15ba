"""Metrics, log context and the trace span around each job attempt of one feature queue."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.platform import logging as rg_logging
from common.platform import metrics, tracing
from common.requests.models import JobPayload

Job = Callable[[dict[str, Any], dict[str, Any]], Awaitable[str]]


def observed(job: Job, queue: str) -> Job:
    """`job` counted (started/succeeded/failed/retried, run time by outcome), logged with the
    request's ids, and traced as a CONSUMER span continuing the enqueuer's trace."""

    async def run(ctx: dict[str, Any], raw: dict[str, Any]) -> str:
        payload = JobPayload.model_validate(raw)
        rg_logging.bind(
            request=payload.request_id,
            session=payload.session_id,
            tenant=payload.tenant_id,
            correlation=payload.correlation_id,
        )
        metrics.JOBS_STARTED.labels(queue).inc()
        if payload.attempt > 1:
            metrics.JOBS_RETRIED.labels(queue).inc()
        started, status = time.monotonic(), "error"
        attributes: dict[str, str | int] = {
            "messaging.destination.name": queue,
            "relaygate.attempt": payload.attempt,
            "relaygate.request_id": payload.request_id,
        }
        with tracing.span(
            f"process {queue}", parent=payload.trace_context, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            try:
                status = await job(ctx, raw)
            except Retry:
                status = "deferred"
                raise
            except BaseException:
                metrics.JOBS_FAILED.labels(queue).inc()
                span.set_status(Status(StatusCode.ERROR))
                raise
            finally:
                metrics.JOB_SECONDS.labels(queue, status).observe(time.monotonic() - started)
            span.set_attribute("relaygate.status", status)
        if status == "completed":
            metrics.JOBS_SUCCEEDED.labels(queue).inc()
        elif status == "failed":
            metrics.JOBS_FAILED.labels(queue).inc()
        return status

    return run
