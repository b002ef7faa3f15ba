"""ARQ worker for one feature queue: `relaygate worker --feature NAME`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func
from prometheus_client import start_http_server

from common import db, runtime, tracing
from common import logging as rg_logging
from common.agents import load_agents
from common.settings import Settings, get_settings
from common.streams import StreamWriter
from common.streams import connect as connect_streams
from workers import maintenance, model
from workers.observe import observed
from workers.runner import Runtime, process_request

log = logging.getLogger(__name__)


def build_worker(settings: Settings, feature: str) -> Worker:
    async def startup(ctx: dict[str, Any]) -> None:
        streams = connect_streams(settings.stream_redis_url, cluster=settings.stream_redis_cluster,
                                  max_connections=64)
        rt = Runtime(
            settings=settings,
            db=await db.create_pool(settings.database_url, min_size=2, max_size=20, name="worker"),
            streams=streams,
            queue=ctx["redis"],
            writer=StreamWriter(streams, buckets=settings.stream_buckets, maxlen=settings.stream_maxlen,
                                ttl_seconds=settings.stream_ttl_seconds),
            agents=load_agents(settings.agents_file),
        )
        ctx["rt"] = rt
        ctx["tasks"] = maintenance.start(rt)
        runtime.tune_gc()
        log.info("worker ready", extra={"feature": feature, "queue": settings.feature_queue(feature)})

    async def shutdown(ctx: dict[str, Any]) -> None:
        tasks = ctx.get("tasks", [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rt: Runtime | None = ctx.get("rt")
        if rt is not None:
            await rt.streams.aclose()
            await rt.db.close()

    return Worker(
        functions=[func(observed(process_request, settings.feature_queue(feature)),  # type: ignore[arg-type]
                        name="process_request", max_tries=10)],
        queue_name=settings.feature_queue(feature),
        redis_settings=RedisSettings.from_dsn(settings.queue_redis_url),
        max_jobs=settings.worker_max_jobs,
        job_timeout=settings.request_timeout_seconds + 60,
        keep_result=0,
        poll_delay=settings.worker_poll_delay,
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=True,
    )


def run(feature: str | None = None) -> None:
    settings = get_settings()
    rg_logging.configure(settings.log_level)
    if not settings.database_url or not settings.queue_redis_url:
        raise SystemExit("relaygate worker: DATABASE_URL and REDIS_URL must be set (or use `relaygate dev`)")
    model.configure(settings)
    tracing.configure("relaygate-worker")
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = build_worker(settings, feature or settings.feature)
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_until_complete(worker.async_run())
    loop.run_until_complete(worker.close())


if __name__ == "__main__":
    run()
