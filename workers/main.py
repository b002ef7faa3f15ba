"""ARQ worker for one feature queue: `relaygate worker --feature NAME`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func
from prometheus_client import start_http_server

from common.agents.registry import load_agents
from common.flows.jobs import PROCESS_FLOW_RUN
from common.platform import logging as rg_logging
from common.platform import tracing
from common.platform import tuning as runtime
from common.platform.context import open_stores
from common.platform.presence import Presence
from common.platform.settings import Settings, get_settings
from common.queue.worker import RelayWorker
from workers import cost_map, flows, maintenance, model, openai_stream
from workers.observe import observed
from workers.runner import WorkerRuntime, process_request

log = logging.getLogger(__name__)


def build_worker(settings: Settings, feature: str, idle_seconds: Callable[[], float] | None = None) -> RelayWorker:
    ctx_ref: dict[str, Any] = {}

    async def startup(ctx: dict[str, Any]) -> None:
        ctx_ref["ctx"] = ctx
        stores = await open_stores(
            settings,
            db_max_size=20,
            stream_connections=settings.worker_stream_connections,
            pool_name="worker",
            pool_timeout=None,
        )
        presence = Presence(settings.database_url, stores.streams, settings.heartbeat_seconds)
        await presence.open()
        rt = WorkerRuntime(
            settings=settings,
            db=stores.db,
            streams=stores.streams,
            queue=ctx["redis"],
            writer=stores.writer,
            agents=stores.agents,
            idle_seconds=idle_seconds,
            presence=presence,
        )
        ctx["rt"] = rt
        models = ctx["models"] = model.configured(settings, stores.agents)
        ctx["tasks"] = maintenance.start(rt) + flows.start(rt) + [asyncio.create_task(announce(models))]
        runtime.tune_gc()
        log.info("worker ready", extra={"feature": feature, "queue": settings.feature_queue(feature)})

    async def announce(models: frozenset[str]) -> None:
        """Log "model layer ready" once every model of this worker runs without waiting (loading litellm
        first if one of them needs it)."""
        if any(model.path_for(m, settings) == "openai" for m in models):
            await openai_stream.prepare()
        if any(model.path_for(m, settings) != "offline" for m in models):
            await asyncio.to_thread(cost_map.load)  # prices for heartbeats' usage estimates, off the loop
        if not model.ready_for(models, settings):
            await model.litellm_module()
        log.info("model layer ready", extra={"litellm": model.ready()})

    def observe_lag(lag: float) -> None:
        rt: WorkerRuntime | None = ctx_ref.get("ctx", {}).get("rt")
        if rt is not None:
            rt.priority.observe_lag(lag)

    def warm() -> bool:
        """Takes new jobs at once: every model it may call starts without waiting for litellm."""
        models: frozenset[str] | None = ctx_ref.get("ctx", {}).get("models")
        return models is not None and model.ready_for(models, settings)

    def drain() -> None:
        rt: WorkerRuntime | None = ctx_ref.get("ctx", {}).get("rt")
        if rt is not None:
            rt.draining = True
        log.info("stopping: no new jobs; running ones get %ss", settings.worker_drain_seconds)

    async def shutdown(ctx: dict[str, Any]) -> None:
        rt_: WorkerRuntime | None = ctx.get("rt")
        if rt_ is not None and rt_.handbacks:
            await asyncio.wait(rt_.handbacks, timeout=10)
        tasks = ctx.get("tasks", [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rt: WorkerRuntime | None = ctx.get("rt")
        if rt is not None:
            with contextlib.suppress(TimeoutError):  # what is left, the ending sweep clears
                await asyncio.wait_for(rt.ended.close(), timeout=5)
            await rt.tools.close()
            if rt.presence is not None:
                await rt.presence.close()
            await rt.streams.aclose()
            await rt.db.close()

    return RelayWorker(
        functions=[
            func(
                observed(process_request, settings.feature_queue(feature)),  # type: ignore[arg-type]
                name="process_request",
                max_tries=10,
            ),
            func(
                flows.process_flow_run,
                name=PROCESS_FLOW_RUN,
                max_tries=10,  # type: ignore[arg-type]
                timeout=settings.flow_timeout_seconds + flows.FINISH_GRACE_SECONDS,
            ),
        ],
        queue_name=settings.feature_queue(feature),
        redis_settings=RedisSettings.from_dsn(settings.queue_redis_url),
        max_jobs=settings.worker_max_jobs,
        job_timeout=settings.request_timeout_seconds + 60,
        keep_result=0,
        poll_delay=settings.worker_poll_delay,
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=True,
        job_completion_wait=settings.worker_drain_seconds,  # type: ignore[arg-type]
        max_lag_ms=settings.worker_max_lag_ms,
        admit_batch=settings.worker_admit_batch,
        in_progress_seconds=settings.lease_seconds,
        take_seconds=2 * settings.heartbeat_seconds,  # as long as a dead process's presence key lives
        on_drain=drain,
        on_lag=observe_lag,
        warm=warm,
    )


def run(feature: str | None = None) -> None:
    settings = get_settings()
    rg_logging.configure(settings.log_level, settings.log_format)
    if not settings.database_url or not settings.queue_redis_url:
        raise SystemExit("relaygate worker: DATABASE_URL and REDIS_URL must be set (or use `relaygate dev`)")
    if not model.ready_for(model.configured(settings, load_agents(settings.agents_file)), settings):
        model.configure()  # a model of this worker needs litellm: its import overlaps the worker's start
    tracing.configure("relaygate-worker")
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port)
    runtime.pack_commands_in_c()
    loop, selector = runtime.new_event_loop()
    worker = build_worker(settings, feature or settings.feature, idle_seconds=lambda: selector.idle)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        loop.run_until_complete(worker.async_run())
    loop.run_until_complete(worker.close())


if __name__ == "__main__":
    run()
