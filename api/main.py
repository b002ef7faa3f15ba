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
from redis.asyncio import ConnectionPool, RedisCluster

from api import errors
from api.deps import Gateway
from api.health import router as health_router
from api.middleware import GatewayMiddleware
from api.openapi import router as openapi_router
from api.requests.compat import router as compat_router
from api.requests.router import router as requests_router
from api.sessions.router import router as sessions_router
from api.streams.router import router as stream_router
from common import db, queue, runtime
from common import logging as rg_logging
from common.agents import load_agents
from common.hub import HUB_READER_NAME, ClusterConnections, Hub, ReaderConnections, ServerConnections
from common.limits import Limits, StreamSlots
from common.settings import Settings, get_settings
from common.streams import StreamWriter
from common.streams import connect as connect_streams

STATIC = Path(__file__).parent / "static"


def _require(settings: Settings) -> None:
    missing = [name for name, value in (("DATABASE_URL", settings.database_url),
                                        ("REDIS_URL", settings.stream_redis_url)) if not value]
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
    pool = await db.create_pool(settings.database_url, min_size=2, max_size=settings.db_pool_size)
    cluster = settings.stream_redis_cluster
    streams = connect_streams(settings.stream_redis_url, cluster=cluster, max_connections=128,
                              health_check_interval=30)
    readers: ReaderConnections
    if isinstance(streams, RedisCluster):
        readers = ClusterConnections(streams, client_name=HUB_READER_NAME)
    else:
        readers = ServerConnections(ConnectionPool.from_url(settings.stream_redis_url, client_name=HUB_READER_NAME))
    arq = await queue.connect(settings.queue_redis_url)
    hub = Hub(streams, readers, readers=None if cluster else settings.hub_readers, block_ms=settings.hub_block_ms,
              queue_size=settings.sse_client_queue, heartbeat_seconds=settings.sse_heartbeat_seconds)
    hub.start()
    runtime.tune_gc()
    limits = Limits(streams, settings)
    slots = StreamSlots(limits)
    renewing = asyncio.create_task(slots.renew_forever(), name="stream-leases")
    app.state.gateway = Gateway(
        settings=settings, db=pool, streams=streams, queue=arq, hub=hub,
        writer=StreamWriter(streams, buckets=settings.stream_buckets, maxlen=settings.stream_maxlen,
                            ttl_seconds=settings.stream_ttl_seconds),
        agents=load_agents(settings.agents_file), limits=limits, slots=slots,
    )
    restore_signals = _drain_on_signal(hub)
    try:
        yield
    finally:
        restore_signals()
        hub.drain()
        renewing.cancel()
        await hub.stop()
        for client in (streams, arq):
            await client.aclose()
        await pool.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    rg_logging.configure(settings.log_level)
    # No public /docs or /openapi.json: the schema is served to authenticated callers only.
    app = FastAPI(title="relaygate", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    errors.install(app)
    for router in (health_router, openapi_router, sessions_router, requests_router, compat_router, stream_router):
        app.include_router(router)
    if STATIC.is_dir():
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="ui")
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_body_bytes)
    return app


app = create_app()
