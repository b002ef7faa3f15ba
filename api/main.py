"""The gateway ASGI app: `uvicorn api.main:app`."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from api import cors, errors
from api.aisdk.router import router as aisdk_router
from api.budgets.router import router as budgets_router
from api.delivery.router import router as integrations_router
from api.deps import Gateway
from api.events.router import router as events_router
from api.flows.router import router as flows_router
from api.flows.runs.router import router as runs_router
from api.health import router as health_router
from api.langgraph.router import router as langgraph_router
from api.middleware import GatewayMiddleware, SecurityHeaders
from api.openai.router import router as openai_router
from api.openapi import router as openapi_router
from api.requests.compat import router as compat_router
from api.requests.router import router as requests_router
from api.schedules.router import router as schedules_router
from api.sessions.router import router as sessions_router
from api.slack.router import router as slack_router
from api.streams.capacity import stream_capacity
from api.streams.handoff import StreamHandoff
from api.streams.router import router as stream_router
from api.usage.router import router as usage_router
from api.webhooks.router import configs as webhook_configs_router
from api.webhooks.router import intake as webhook_intake_router
from common.platform import logging as rg_logging
from common.platform import tracing
from common.platform import tuning as runtime
from common.platform.context import open_stores, start_hub
from common.platform.settings import Settings, get_settings
from common.platform.tracing import TracingMiddleware
from common.queue import enqueue as queue
from common.requests.limits import Limits, StreamSlots
from common.streams.hub import Hub
from common.usage.budgets import BudgetBook

STATIC = Path(__file__).parent / "static"


def _require(settings: Settings) -> None:
    missing = [
        name
        for name, value in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.stream_redis_url))
        if not value
    ]
    if missing:
        raise SystemExit(f"relaygate gateway: {', '.join(missing)} not set (use `relaygate dev` for embedded servers)")
    problem = settings.auth_problem()
    if problem:
        raise SystemExit(f"relaygate gateway: {problem}")


def _drain_on_signal(hub: Hub) -> Callable[[], None]:
    """On SIGTERM/SIGINT, end every SSE stream with a reconnect frame, then let uvicorn shut down.

    uvicorn waits for open responses until its graceful timeout: ending the streams at once
    lets it exit within that grace, and clients resume on another replica with Last-Event-ID.
    Returns what puts the previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.drain)
        chained = previous.get(signal.Signals(signum))
        if callable(chained):
            chained(signum, frame)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    _require(settings)
    runtime.pack_commands_in_c()
    capacity = stream_capacity(settings.stream_fd_reserve)
    stores = await open_stores(
        settings,
        db_max_size=settings.db_pool_size,
        stream_connections=128,
        pool_name="gateway",
        health_check_interval=30,
    )
    arq = await queue.connect(settings.queue_redis_url)
    hub = start_hub(settings, stores.streams)
    runtime.tune_gc()
    limits = Limits(stores.streams, settings)
    slots = StreamSlots(limits)
    renewing = asyncio.create_task(slots.renew_forever(), name="stream-leases")
    app.state.gateway = Gateway(
        settings=settings,
        db=stores.db,
        streams=stores.streams,
        queue=arq,
        hub=hub,
        writer=stores.writer,
        agents=stores.agents,
        limits=limits,
        slots=slots,
        budgets=BudgetBook(stores.db, settings),
        capacity=capacity,
    )
    restore_signals = _drain_on_signal(hub)
    try:
        yield
    finally:
        restore_signals()
        hub.drain()
        renewing.cancel()
        await hub.stop()
        await arq.aclose()
        await stores.close()


class _GatewayApp(FastAPI):
    """The security headers wrap even Starlette's error layer, so an unexpected 500 carries them too;
    SSE bodies are streamed outside every layer (api/streams/handoff.py)."""

    def build_middleware_stack(self) -> ASGIApp:
        return StreamHandoff(SecurityHeaders(super().build_middleware_stack()))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    rg_logging.configure(settings.log_level, settings.log_format)
    # No public /docs or /openapi.json: the schema is served to authenticated callers only.
    app = _GatewayApp(
        title="relaygate", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    errors.install(app)
    for router in (
        health_router,
        openapi_router,
        sessions_router,
        requests_router,
        compat_router,
        stream_router,
        runs_router,
        flows_router,
        webhook_configs_router,
        webhook_intake_router,
        events_router,
        integrations_router,
        slack_router,
        langgraph_router,
        aisdk_router,
        openai_router,
        usage_router,
        budgets_router,
        schedules_router,
    ):
        app.include_router(router)
    if STATIC.is_dir():
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="ui")
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_body_bytes)
    tracing.configure("relaygate-api")
    app.add_middleware(TracingMiddleware)
    cors.install(app, settings)  # outermost: preflights and error responses get CORS headers too
    _build_routes(app)
    return app


def _build_routes(app: FastAPI) -> None:
    """Have FastAPI build every included route now: it does so on the first request that reaches a router
    (~100 ms in all, paid by the first requests of the first burst)."""
    nowhere = {"type": "http", "method": "GET", "path": "/\x00", "root_path": "", "query_string": b"", "headers": []}
    for route in app.router.routes:
        route.matches(nowhere)


app = create_app()
