"""GET /health (Postgres and Redis separately; 503 when either is down) and GET /metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from api.deps import GatewayDep, require_scope
from api.responses import JSONResponse
from common.auth import SCOPE_METRICS, Principal

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


@router.get("/metrics", include_in_schema=False)
async def metrics(gw: GatewayDep, _: Annotated[Principal, Depends(require_scope(SCOPE_METRICS))]) -> Response:
    """Prometheus text, for credentials holding the `metrics` scope (a scraper's API key)."""
    SSE_CLIENTS.set(gw.hub.subscriber_count)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
