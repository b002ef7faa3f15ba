"""ARQ worker on the dispatcher queue: `relaygate dispatcher` (scale by running more of them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
from arq.connections import RedisSettings
from arq.worker import func
from prometheus_client import start_http_server

from common.delivery import verification
from common.delivery.jobs import DELIVER, DELIVER_REQUEST, FOLLOW_SLACK, SLACK_NOTICE
from common.platform import logging as rg_logging
from common.platform import tuning as runtime
from common.platform.context import open_stores, start_hub
from common.platform.keys import dispatcher_queue
from common.platform.outages import every
from common.platform.settings import Settings, get_settings
from common.queue.worker import RelayWorker
from dispatcher import jobs, repair
from dispatcher.channels import slack
from dispatcher.runtime import DispatcherRuntime
from dispatcher.verification import send_verification

log = logging.getLogger(__name__)


def build_worker(settings: Settings) -> RelayWorker:
    async def startup(ctx: dict[str, Any]) -> None:
        stores = await open_stores(settings, db_max_size=10, stream_connections=64, pool_name="dispatcher")
        ctx["rt"] = DispatcherRuntime(
            settings=settings,
            db=stores.db,
            streams=stores.streams,
            writer=stores.writer,
            queue=ctx["redis"],
            hub=start_hub(settings, stores.streams),
            http=httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False),
        )
        ctx["sweep"] = asyncio.create_task(every(repair.EVERY_SECONDS, repair.sweep_once, ctx["rt"]))
        runtime.tune_gc()
        log.info("dispatcher ready", extra={"queue": dispatcher_queue()})

    async def shutdown(ctx: dict[str, Any]) -> None:
        sweep: asyncio.Task[None] | None = ctx.get("sweep")
        if sweep is not None:
            sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweep
        rt: DispatcherRuntime | None = ctx.get("rt")
        if rt is not None:
            await rt.hub.stop()
            await rt.http.aclose()
            await slack.close_clients(rt)
            await rt.streams.aclose()
            await rt.db.close()

    # Every job is short, so a killed dispatcher's jobs run again within seconds (ARQ waits for the
    # longest timeout); a Slack reply longer than that hands on to a continuation job.
    short = settings.delivery_job_timeout_seconds
    return RelayWorker(
        functions=[
            func(jobs.deliver_request, name=DELIVER_REQUEST, max_tries=5, timeout=short),  # type: ignore[arg-type]
            func(jobs.deliver, name=DELIVER, max_tries=5, timeout=short),  # type: ignore[arg-type]
            func(slack.follow, name=FOLLOW_SLACK, max_tries=5, timeout=short),  # type: ignore[arg-type]
            func(slack.notice, name=SLACK_NOTICE, max_tries=1, timeout=short),  # type: ignore[arg-type]
            func(
                send_verification,
                name=verification.SEND_VERIFICATION,
                max_tries=3,  # type: ignore[arg-type]
                timeout=short,
            ),
        ],
        queue_name=dispatcher_queue(),
        redis_settings=RedisSettings.from_dsn(settings.queue_redis_url),
        max_jobs=settings.dispatcher_max_jobs,
        keep_result=0,
        poll_delay=settings.worker_poll_delay,
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=True,
        max_lag_ms=settings.worker_max_lag_ms,
        admit_batch=settings.worker_admit_batch,
        in_progress_seconds=settings.lease_seconds,
        on_drain=lambda: log.info("stopping: no new deliveries"),
    )


def run() -> None:
    settings = get_settings()
    rg_logging.configure(settings.log_level, settings.log_format)
    if not settings.database_url or not settings.queue_redis_url:
        raise SystemExit("relaygate dispatcher: DATABASE_URL and REDIS_URL must be set (or use `relaygate dev`)")
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port)
    runtime.pack_commands_in_c()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = build_worker(settings)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        loop.run_until_complete(worker.async_run())
    loop.run_until_complete(worker.close())


if __name__ == "__main__":
    run()
