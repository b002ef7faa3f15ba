"""A WEBHOOK override's URL passes the outbound guard when saved: loopback is refused by default and
accepted only when OUTBOUND_ALLOW_HOSTS names it."""

from __future__ import annotations

from typing import Any

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="


def webhook(url: str) -> dict[str, Any]:
    return {"integration_type": "WEBHOOK", "config": {"url": url, "secret": SECRET}}


async def test_loopback_is_refused_unless_allowed(make_app: Any) -> None:
    async with make_app() as app:
        async with app.client("u1") as c:
            for url in ("http://127.0.0.1:9/hook", "http://127.1:9/hook", "http://[::1]/hook", "http://localhost/"):
                r = await c.post("/api/v1/users/u1/integrations", json=webhook(url))
                assert r.status_code == 422, r.text
                assert r.json()["error"] == "validation_error"
                [problem] = r.json()["detail"]
                assert problem["field"] == "config.url" and "loopback address" in problem["message"], r.text
            r = await c.post(
                "/api/v1/users/u1/integrations", json={**webhook("http://127.0.0.1:9/hook"), "enabled": False}
            )
            assert r.status_code == 422, "a disabled override's URL is checked too"
    async with make_app(outbound_allow_hosts="127.0.0.1") as app:
        async with app.client("u1") as c:
            r = await c.post("/api/v1/users/u1/integrations", json=webhook("http://127.0.0.1:9/hook"))
            assert r.status_code == 201, r.text
            r = await c.put("/api/v1/users/u1/integrations/WEBHOOK", json={"config": {"url": "http://[::1]:9/"}})
            assert r.status_code == 422 and "::1 is a loopback address" in r.text
