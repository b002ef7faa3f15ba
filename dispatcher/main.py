"""ARQ worker on the dispatcher queue: `relaygate dispatcher` (scale by running more of them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
from arq.connections import RedisSettings
from arq.worker import Worker, func
from prometheus_client import start_http_server
from redis.asyncio import ConnectionPool, RedisCluster

from common import db, runtime
from common import logging as rg_logging
from common.delivery import DELIVER, DELIVER_REQUEST, FOLLOW_SLACK
from common.hub import HUB_READER_NAME, ClusterConnections, Hub, ReaderConnections, ServerConnections
from common.keys import dispatcher_queue
from common.settings import Settings, get_settings
from common.streams import StreamWriter
from common.streams import connect as connect_streams
from dispatcher import jobs, slack
from dispatcher.runtime import Runtime

log = logging.getLogger(__name__)


def build_worker(settings: Settings) -> Worker:
    async def startup(ctx: dict[str, Any]) -> None:
        cluster = settings.stream_redis_cluster
        streams = connect_streams(settings.stream_redis_url, cluster=cluster, max_connections=64)
        readers: ReaderConnections
        if isinstance(streams, RedisCluster):
            readers = ClusterConnections(streams, client_name=HUB_READER_NAME)
        else:
            readers = ServerConnections(ConnectionPool.from_url(settings.stream_redis_url,
                                                                client_name=HUB_READER_NAME))
        hub = Hub(streams, readers, readers=None if cluster else 1, block_ms=settings.hub_block_ms,
                  queue_size=settings.sse_client_queue, heartbeat_seconds=settings.sse_heartbeat_seconds)
        hub.start()
        ctx["rt"] = Runtime(
            settings=settings,
            db=await db.create_pool(settings.database_url, min_size=1, max_size=10),
            streams=streams,
            writer=StreamWriter(streams, buckets=settings.stream_buckets, maxlen=settings.stream_maxlen,
                                ttl_seconds=settings.stream_ttl_seconds),
            queue=ctx["redis"],
            hub=hub,
            http=httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False),
        )
        runtime.tune_gc()
        log.info("dispatcher ready", extra={"queue": dispatcher_queue()})

    async def shutdown(ctx: dict[str, Any]) -> None:
        rt: Runtime | None = ctx.get("rt")
        if rt is not None:
            await rt.hub.stop()
            await rt.http.aclose()
            await slack.close_clients(rt)
            await rt.streams.aclose()
            await rt.db.close()

    # Every job is short, so a killed dispatcher's jobs run again within seconds (ARQ waits for the
    # longest timeout); a Slack reply longer than that hands on to a continuation job.
    short = settings.delivery_job_timeout_seconds
    return Worker(
        functions=[
            func(jobs.deliver_request, name=DELIVER_REQUEST, max_tries=5, timeout=short),  # type: ignore[arg-type]
            func(jobs.deliver, name=DELIVER, max_tries=5, timeout=short),  # type: ignore[arg-type]
            func(slack.follow, name=FOLLOW_SLACK, max_tries=5, timeout=short),  # type: ignore[arg-type]
        ],
        queue_name=dispatcher_queue(),
        redis_settings=RedisSettings.from_dsn(settings.queue_redis_url),
        max_jobs=settings.dispatcher_max_jobs,
        keep_result=0,
        poll_delay=settings.worker_poll_delay,
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=True,
    )


def run() -> None:
    settings = get_settings()
    rg_logging.configure(settings.log_level)
    if not settings.database_url or not settings.queue_redis_url:
        raise SystemExit("relaygate dispatcher: DATABASE_URL and REDIS_URL must be set (or use `relaygate dev`)")
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = build_worker(settings)
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_until_complete(worker.async_run())
    loop.run_until_complete(worker.close())


if __name__ == "__main__":
    run()
