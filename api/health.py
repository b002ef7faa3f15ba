"""GET /health (Postgres and Redis separately; 503 when either is down) and GET /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from redis.exceptions import RedisError

from api.deps import Gateway, GatewayDep, require_scope
from api.responses import JSONResponse
from common.platform.credentials import SCOPE_METRICS, Principal
from common.platform.keys import queue_name
from common.platform.metrics import QUEUE_DEPTH

router = APIRouter(tags=["health"])

PROBE_SECONDS = 1.0

SSE_CLIENTS = Gauge("relaygate_sse_subscribers", "Stream subscribers of this gateway process")


async def _probe(check: Any) -> str:
    try:
        await asyncio.wait_for(check, timeout=2)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@dataclass
class _Cached:
    """The last probe, reused for PROBE_SECONDS: /health is public, so it must cost nothing under load."""

    at: float | None = None  # never probed (not a sentinel time: the monotonic clock may start near 0)
    body: dict[str, str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def _probe_all(gw: Gateway) -> dict[str, str]:
    postgres, streams, queue = await asyncio.gather(
        _probe(gw.db.fetchval("SELECT 1")), _probe(gw.streams.ping()), _probe(gw.queue.ping())
    )
    down = gw.hub.readers_down
    checks = {
        "postgres": postgres,
        "redis": streams if streams != "ok" else queue,
        "stream_readers": f"unavailable: {down} of {len(gw.hub.readers)} down" if down else "ok",
    }
    healthy = all(v == "ok" for v in checks.values())
    return {"status": "ok" if healthy else "unavailable", **checks}


@router.get("/health")
async def health(request: Request, gw: GatewayDep) -> JSONResponse:
    cached: _Cached = getattr(request.app.state, "health", None) or _Cached()
    request.app.state.health = cached
    async with cached.lock:
        if cached.at is None or time.monotonic() - cached.at >= PROBE_SECONDS:
            cached.body = await _probe_all(gw)
            cached.at = time.monotonic()
    body = cached.body
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def _queue_depths(gw: Gateway) -> None:
    """Each feature queue's ZCARD (waiting + deferred + running jobs), read at scrape time."""
    queues = sorted({queue_name(agent.feature) for agent in gw.agents.agents})
    with contextlib.suppress(RedisError, TimeoutError):
        async with gw.queue.pipeline(transaction=False) as pipe:
            for name in queues:
                pipe.zcard(name)
            depths = await asyncio.wait_for(pipe.execute(), timeout=2)
        for name, depth in zip(queues, depths, strict=True):
            QUEUE_DEPTH.labels(name).set(depth)


@router.get("/metrics", include_in_schema=False)
async def metrics(gw: GatewayDep, _: Annotated[Principal, Depends(require_scope(SCOPE_METRICS))]) -> Response:
    """Prometheus text, for credentials holding the `metrics` scope (a scraper's API key)."""
    SSE_CLIENTS.set(gw.hub.subscriber_count)
    await _queue_depths(gw)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
