"""Errors of the backing stores become a clear 503, never a 500 or a stack trace."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from redis.exceptions import ClusterDownError, ConnectionError, SlotNotCoveredError

from api import errors


@pytest.mark.parametrize("exc", [ConnectionError("refused"), ClusterDownError("CLUSTERDOWN"),
                                 SlotNotCoveredError('Slot "12" is not covered by the cluster.')])
async def test_stream_store_errors_answer_503(exc: Exception) -> None:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/boom")
    assert r.status_code == 503
    assert r.json() == {"error": "service_unavailable", "detail": "the stream store is unavailable; retry shortly"}
    assert r.headers["retry-after"] == "2"
