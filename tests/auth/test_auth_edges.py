"""Auth edges: scopes on routes, tools acting for users, API-key lookups that cost nothing, settings."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from jose import jwt
from pydantic import ValidationError

from cli.main import main as cli
from common.platform.credentials import API_KEY_PREFIX, create_api_key
from common.platform.settings import Settings
from tests.conftest import JWT_SECRET, Infra
from tests.support.app import App


def tool_token(app: App, tenant: str, scopes: list[str], kind: str = "tool") -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "snow", "tenant_id": tenant, "kind": kind, "exp": now + 60, "scopes": scopes}
    return str(jwt.encode(claims, JWT_SECRET, algorithm="HS256"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_metrics_needs_the_metrics_scope(app: App) -> None:
    async with app.client() as plain, app.client(scopes=["metrics"]) as scraper:
        refused = await plain.get("/metrics")
        assert refused.status_code == 403
        assert refused.json() == {"error": "forbidden", "detail": "this credential lacks the 'metrics' scope"}
        scraped = await scraper.get("/metrics")
        assert scraped.status_code == 200 and "relaygate_http_requests_total" in scraped.text


async def test_route_scopes_limit_a_credential_to_the_routes_they_name(app: App) -> None:
    async with app.client(scopes=["requests"]) as intake_only:
        accepted = await intake_only.post("/api/v1/requests/web", json={"content": "hi"})
        assert accepted.status_code == 202
        assert (await intake_only.get(f"/api/v1/requests/{accepted.json()['request_id']}")).status_code == 200
        sid = accepted.json()["session_id"]
        for path in (
            "/api/v1/sessions",
            f"/api/v1/sessions/{sid}",
            f"/api/v1/sessions/{sid}/stream",
            f"/api/v1/sessions/{sid}/requests",
            "/metrics",
        ):
            assert (await intake_only.get(path)).status_code == 403, path
        assert (await intake_only.get("/api/v1/me")).status_code == 200
    async with app.client(scopes=["sessions"]) as reader:
        assert (await reader.get("/api/v1/sessions")).status_code == 200
        assert (await reader.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 403
        assert (await reader.post("/stream?feature_id=gateway-tests&chat_id=x", json={})).status_code == 403


async def test_flow_routes_need_the_runs_scope(app: App) -> None:
    ce_headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/test", "content-type": "application/json"}
    async with app.client(scopes=["requests"]) as intake_only, app.client(scopes=["runs"]) as flows:
        for path in ("/v1/runs", "/v1/flows", "/v1/webhook-configs", f"/v1/runs/{uuid.uuid4()}/stream"):
            refused = await intake_only.get(path)
            assert refused.status_code == 403, path
            assert refused.json()["detail"] == "this credential lacks the 'runs' scope"
            assert (await flows.get(path)).status_code != 403, path
        run = await intake_only.post(
            "/api/v1/events/cloudevents",
            content=b"{}",
            headers={**ce_headers, "ce-type": "com.relaygate.run.requested"},
        )
        assert run.status_code == 403 and "'runs' scope" in run.json()["detail"]
        request = await flows.post(
            "/api/v1/events/cloudevents",
            content=b'{"content": "hi"}',
            headers={**ce_headers, "ce-type": "com.relaygate.request.created"},
        )
        assert request.status_code == 403 and "'requests' scope" in request.json()["detail"]


async def test_api_key_scopes_are_enforced(app: App) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    _, key = await create_api_key(app.gateway.db, tenant_id=tenant, user_id="bob", scopes=["sessions"])
    async with app.client(headers={"x-api-key": key}) as client:
        assert (await client.get("/api/v1/sessions")).status_code == 200
        assert (await client.post("/api/v1/requests/web", json={"content": "hi"})).status_code == 403


async def test_a_kind_claim_alone_grants_nothing(app: App) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    async with app.client(headers=bearer(tool_token(app, tenant, []))) as tool:
        response = await tool.post(
            "/api/v1/requests/tool", json={"user_id": "carol", "content": "x", "tool_id": "snow", "trigger_event": "e"}
        )
    assert response.status_code == 403


async def test_a_tool_starts_requests_for_a_user_but_joins_their_sessions_only_with_the_scope(app: App) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    body = {"user_id": "carol", "content": "ticket", "tool_id": "snow", "trigger_event": "incident.created"}
    async with (
        app.client("carol", tenant) as carol,
        app.client(headers=bearer(tool_token(app, tenant, ["act-as-user"]))) as tool,
        app.client(headers=bearer(tool_token(app, tenant, ["act-as-user", "join-user-sessions"]))) as joiner,
    ):
        own = (await carol.post("/api/v1/requests/tool", json={**body, "user_id": None})).json()
        started = await tool.post("/api/v1/requests/tool", json=body)
        assert started.status_code == 202
        assert started.json()["session_id"] != own["session_id"]  # not carol's active tool session
        refused = await tool.post("/api/v1/requests/tool", json={**body, "session_id": own["session_id"]})
        assert refused.status_code == 403
        assert "join-user-sessions" in refused.json()["detail"]
        assert (await tool.get(f"/api/v1/sessions/{own['session_id']}")).status_code == 404
        assert (await tool.get(f"/api/v1/requests/{own['request_id']}")).status_code == 404
        joined = await joiner.post("/api/v1/requests/tool", json={**body, "session_id": own["session_id"]})
        assert joined.status_code == 202 and joined.json()["session_id"] == own["session_id"]
        # The tool reads and cancels what it created; carol sees it in her session.
        rid = started.json()["request_id"]
        assert (await tool.get(f"/api/v1/requests/{rid}")).json()["status"] == "queued"
        assert (await tool.post(f"/api/v1/requests/{rid}/cancel")).status_code == 202
        assert (await carol.get(f"/api/v1/requests/{rid}")).json()["status"] == "cancelled"


async def test_integration_type_in_capitals(app: App) -> None:
    async with app.client() as client:
        accepted = await client.post("/api/v1/requests/generic", json={"integration_type": "WEB", "content": "hi"})
        assert accepted.status_code == 202, accepted.text
        session = await client.get(f"/api/v1/sessions/{accepted.json()['session_id']}")
        assert session.json()["integration_type"] == "web"
        created = await client.post("/api/v1/sessions", json={"integration_type": "EMAIL"})
        assert created.status_code == 201 and created.json()["integration_type"] == "email"


async def test_bad_api_keys_cost_no_lookup_storm(make_app: Callable[..., Any]) -> None:
    async with make_app(api_key_lookups_per_second=2) as app:
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        _, good = await create_api_key(app.gateway.db, tenant_id=tenant, user_id="bob")
        auth = app.gateway.auth
        async with app.client(headers={"x-api-key": good}) as client:
            assert (await client.get("/api/v1/me")).status_code == 200
        assert auth.lookups == 1
        for malformed in ("rgk_deadbeef_nope", "rgk_" + "z" * 60, API_KEY_PREFIX):
            async with app.client(headers={"x-api-key": malformed}) as client:
                assert (await client.get("/api/v1/me")).status_code == 401
        assert auth.lookups == 1
        unknown = f"{API_KEY_PREFIX}{secrets.token_hex(12)}_{secrets.token_urlsafe(32)}"
        for _ in range(3):
            async with app.client(headers={"x-api-key": unknown}) as client:
                assert (await client.get("/api/v1/me")).status_code == 401
        assert auth.lookups == 2  # the negative cache answers the repeats
        flood = [f"{API_KEY_PREFIX}{secrets.token_hex(12)}_{secrets.token_urlsafe(32)}" for _ in range(5)]
        statuses = []
        for key in flood:
            async with app.client(headers={"x-api-key": key}) as client:
                statuses.append((await client.get("/api/v1/me")).status_code)
        assert 503 in statuses and auth.lookups <= 4
        async with app.client(headers={"x-api-key": good}) as client:
            assert (await client.get("/api/v1/me")).status_code == 200  # the flood evicted nothing


def test_apikey_list_and_revoke(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", infra.database_url)
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    runner = CliRunner()
    created = runner.invoke(cli, ["apikey", "create", "--tenant", tenant, "--user", "bob", "--name", "ci"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    key_id = key.removeprefix(API_KEY_PREFIX).split("_")[0]
    assert len(key_id) == 24
    listed = runner.invoke(cli, ["apikey", "list", "--tenant", tenant])
    assert listed.exit_code == 0
    assert listed.stdout.split("\t")[:6] == [key_id, tenant, "bob", "user", "-", "ci"]
    assert key not in listed.stdout
    assert runner.invoke(cli, ["apikey", "revoke", key_id, "--tenant", "another"]).exit_code != 0
    revoked = runner.invoke(cli, ["apikey", "revoke", key_id, "--tenant", tenant])
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout

    async def still_valid() -> bool:
        conn = await asyncpg.connect(infra.database_url)
        try:
            return bool(await conn.fetchval("SELECT revoked_at IS NULL FROM api_keys WHERE key_id = $1", key_id))
        finally:
            await conn.close()

    import asyncio

    assert asyncio.run(still_valid()) is False
    assert "revoked" in runner.invoke(cli, ["apikey", "list", "--tenant", tenant]).stdout


async def test_short_secret_refuses_to_start_outside_dev(make_app: Callable[..., Any]) -> None:
    with pytest.raises(SystemExit, match="at least 32 bytes"):
        async with make_app(jwt_secret_key="short"):
            pass
    async with make_app(jwt_secret_key="short", relaygate_dev=True) as app, app.client() as client:
        assert (await client.get("/api/v1/me")).status_code == 200


def test_algorithm_is_one_of_a_fixed_set() -> None:
    with pytest.raises(ValidationError):
        Settings(jwt_algorithm="none")
    with pytest.raises(ValidationError):
        Settings(jwt_algorithm="HS1")
    assert Settings(jwt_algorithm="RS256").jwt_algorithm == "RS256"
