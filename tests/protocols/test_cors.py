"""CORS in-process: off by default, preflights answered for every route of an allowed origin, headers exposed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from common.platform.settings import DEV_CORS_ORIGIN_REGEX

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
ROUTES = [
    "/api/chat",
    "/api/chat/c1/stream",
    "/v1/chat/completions",
    "/v1/models",
    "/api/v1/requests/web",
    "/api/v1/sessions/x/stream",
    "/langgraph/threads",
    "/metrics",
]


async def test_no_origin_is_allowed_by_default(make_app: Callable[..., Any]) -> None:
    async with make_app() as app, app.client() as client:
        response = await client.options("/api/chat", headers={"Origin": "http://localhost:3000", **PREFLIGHT})
        assert response.status_code == 405
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-origin" not in (await client.get("/api/v1/me")).headers


@pytest.mark.parametrize("path", ROUTES)
async def test_preflight_of_an_allowed_origin(make_app: Callable[..., Any], path: str) -> None:
    async with (
        make_app(cors_allow_origins="http://localhost:3000, https://chat.example") as app,
        app.client(headers={}) as anonymous,
    ):
        for origin in ("http://localhost:3000", "https://chat.example"):
            response = await anonymous.options(path, headers={"Origin": origin, **PREFLIGHT})
            assert response.status_code == 200, response.text
            assert response.headers["access-control-allow-origin"] == origin
            assert "authorization" in response.headers["access-control-allow-headers"].lower()
            assert "POST" in response.headers["access-control-allow-methods"]
            assert "access-control-allow-credentials" not in response.headers
        refused = await anonymous.options(path, headers={"Origin": "http://localhost:3001", **PREFLIGHT})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


async def test_responses_expose_the_headers_clients_read(make_app: Callable[..., Any]) -> None:
    async with make_app(cors_allow_origins="http://localhost:3000") as app, app.client() as client:
        origin = {"Origin": "http://localhost:3000"}
        ok = await client.get("/api/v1/me", headers=origin)
        exposed = {h.strip().lower() for h in ok.headers["access-control-expose-headers"].split(",")}
        assert {
            "location",
            "retry-after",
            "x-correlation-id",
            "x-vercel-ai-ui-message-stream",
            "x-session-id",
        } <= exposed
        assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        async with app.client(headers=origin) as anonymous:
            unauthorized = await anonymous.post("/v1/chat/completions", json={})
        assert unauthorized.status_code == 401, "a browser on the origin can read why it was refused"
        assert unauthorized.headers["access-control-allow-origin"] == "http://localhost:3000"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("http://127.0.0.1:5173", True),
        ("http://localhost", True),
        ("https://localhost:3000", False),
        ("http://localhost.evil.example", False),
        ("http://10.0.0.1:3000", False),
    ],
)
async def test_the_dev_origins(make_app: Callable[..., Any], origin: str, allowed: bool) -> None:
    async with make_app(cors_allow_origin_regex=DEV_CORS_ORIGIN_REGEX) as app, app.client(headers={}) as anonymous:
        response = await anonymous.options("/api/chat", headers={"Origin": origin, **PREFLIGHT})
    assert (response.status_code == 200) is allowed
    assert (response.headers.get("access-control-allow-origin") == origin) is allowed
