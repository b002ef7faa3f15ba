"""Route scopes: every authenticated route is under one, and the integration routes obey theirs."""

from __future__ import annotations

import uuid

import pytest

from tests.support.app import App

# Chat protocols whose clients expect errors in that protocol's own shape.
PROTOCOL_PREFIXES = ("/langgraph/", "/v1/chat/", "/v1/models", "/api/chat")

# Routes that need no route scope, and why: public, signed by their callers instead, or only say who calls.
UNSCOPED = {
    ("GET", "/health"),  # public
    ("GET", "/metrics"),  # the `metrics` scope itself
    ("GET", "/api/v1/me"),  # who the credential is
    ("GET", "/api/v1/openapi.json"),  # the schema
    ("GET", "/langgraph/info"),  # the server's LangGraph capabilities, asked by clients before anything else
    ("POST", "/slack/events"),
    ("POST", "/slack/commands"),
    ("POST", "/slack/interactive"),  # Slack's signature
    ("POST", "/api/v1/requests/slack"),  # Slack's signature
    ("POST", "/v1/webhooks/{webhook_id}"),  # Standard Webhooks signature
}

INTEGRATION_ROUTES = [
    ("GET", "/api/v1/integration-defaults", None),
    ("GET", "/api/v1/users/{user}/integration-defaults", None),
    ("POST", "/api/v1/users/{user}/integrations", {"integration_type": "TEST"}),
    ("PUT", "/api/v1/users/{user}/integrations/TEST", {"enabled": True}),
    ("DELETE", "/api/v1/users/{user}/integrations/TEST", None),
    ("POST", "/api/v1/users/{user}/integration-defaults/reset", None),
    ("GET", "/api/v1/users/{user}/deliveries", None),
]


def _routes(app: App) -> list[tuple[str, str]]:
    """Every route of the schema (the routes left out of it, /slack/* and /metrics, are in UNSCOPED)."""
    paths = app.transport.app.openapi()["paths"]  # type: ignore[attr-defined]
    return [(method.upper(), path) for path, operations in paths.items() for method in operations]


async def test_a_metrics_only_credential_reaches_no_other_route(app: App) -> None:
    """Every route outside UNSCOPED answers a `metrics`-only credential 403 before doing anything."""
    scoped = [r for r in _routes(app) if r not in UNSCOPED]
    assert len(scoped) > 30 and ("GET", "/api/v1/users/{user_id}/deliveries") in scoped
    async with app.client(scopes=["metrics"]) as scraper:
        for method, path in scoped:
            filled = path.replace("{", "").replace("}", "")  # any value: the scope is checked first
            r = await scraper.request(method, filled, json={})
            assert r.status_code == 403, (method, path, r.text)
            if not path.startswith(PROTOCOL_PREFIXES):  # those answer in their own protocol's error shape
                assert r.json()["error"] == "forbidden", (method, path, r.text)


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        (["metrics"], False),
        (["requests"], False),
        (["sessions"], False),
        (["runs"], False),
        (["requests", "sessions", "runs"], False),
        (["integrations"], True),
        (["integrations", "metrics"], True),
        ([], True),
        (["admin"], True),
    ],
)
async def test_integration_routes_need_the_integrations_scope(app: App, scopes: list[str], allowed: bool) -> None:
    user, tenant = f"u-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    async with app.client(user, tenant, scopes=scopes) as c:
        for method, path, body in INTEGRATION_ROUTES:
            r = await c.request(method, path.format(user=user), json=body)
            if allowed:
                assert r.status_code in (200, 201, 204, 404), (method, path, r.text)
            else:
                assert r.status_code == 403, (method, path, r.text)
                assert "'integrations'" in r.json()["detail"]
    overrides = await app.gateway.db.fetchval(
        "SELECT count(*) FROM user_integration_configs WHERE tenant_id = $1", tenant
    )
    assert overrides == 0  # refused or deleted again at the end; never changed by a refused credential


async def test_cloudevents_need_the_requests_or_runs_scope(app: App) -> None:
    async with app.client(scopes=["metrics"]) as scraper, app.client(scopes=["runs"]) as runner:
        refused = await scraper.post("/api/v1/events/cloudevents", content=b"{}")
        assert refused.status_code == 403 and "'requests' or 'runs'" in refused.json()["detail"]
        assert (await runner.post("/api/v1/events/cloudevents", content=b"{}")).status_code == 400
