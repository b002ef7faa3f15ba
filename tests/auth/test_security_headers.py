"""nosniff and anti-framing headers on every answer: the UI, the API, its errors, even an unexpected 500."""

from __future__ import annotations

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.support.app import App

EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
}


def assert_protected(response: httpx.Response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (response.request.url, name, dict(response.headers))


@pytest.mark.parametrize(
    ("method", "path", "authenticated"),
    [
        ("GET", "/", False),
        ("GET", "/index.html", False),
        ("GET", "/app.js", False),  # the UI
        ("GET", "/health", False),
        ("GET", "/api/v1/me", True),
        ("GET", "/api/v1/sessions", True),
        ("GET", "/api/v1/me", False),  # 401
        ("GET", "/api/v1/sessions/not-a-session", True),  # 404
        ("POST", "/api/v1/requests/web", True),  # 422
        ("POST", "/slack/events", False),  # 401, Slack's signature
    ],
)
async def test_every_answer_carries_the_headers(app: App, method: str, path: str, authenticated: bool) -> None:
    async with app.client(headers=None if authenticated else {}) as c:
        response = await c.request(method, path, json={} if method == "POST" else None)
    assert response.status_code < 500
    assert_protected(response)


async def test_a_body_over_the_limit_and_an_unexpected_error_carry_them_too(app: App) -> None:
    fastapi_app = app.transport.app

    async def boom() -> None:
        raise RuntimeError("a bug")

    fastapi_app.router.routes.insert(0, APIRoute("/test-only/boom", boom, methods=["GET"]))  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=fastapi_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        too_big = await c.post(
            "/api/v1/requests/web", content=b"x", headers={"content-length": str(app.settings.max_body_bytes + 1)}
        )
        failed = await c.get("/test-only/boom")
    assert too_big.status_code == 413 and failed.status_code == 500
    assert_protected(too_big)
    assert_protected(failed)
