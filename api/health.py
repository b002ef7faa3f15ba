"""GET /health (Postgres and Redis separately; 503 when either is down) and GET /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from redis.exceptions import RedisError

from api.deps import Gateway, GatewayDep, PrincipalDep
from api.responses import JSONResponse
from common.keys import queue_name
from common.metrics import QUEUE_DEPTH

router = APIRouter(tags=["health"])

SSE_CLIENTS = Gauge("relaygate_sse_subscribers", "Stream subscribers of this gateway process")


async def _probe(check: Any) -> str:
    try:
        await asyncio.wait_for(check, timeout=2)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@router.get("/health")
async def health(gw: GatewayDep) -> JSONResponse:
    postgres, streams, queue = await asyncio.gather(
        _probe(gw.db.fetchval("SELECT 1")), _probe(gw.streams.ping()), _probe(gw.queue.ping())
    )
    checks = {"postgres": postgres, "redis": streams if streams != "ok" else queue}
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if healthy else "unavailable", **checks}, status_code=200 if healthy else 503)


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
async def metrics(gw: GatewayDep, _: PrincipalDep) -> Response:
    """Prometheus text; scrapers authenticate like any client (an API key)."""
    SSE_CLIENTS.set(gw.hub.subscriber_count)
    await _queue_depths(gw)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
