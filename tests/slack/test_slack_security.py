"""Slack tenancy in-process: each workspace's own signing secret, signatures accepted once, no query before
the signature, and delivery overrides bound to the caller's tenant and to channels the user asked the bot in."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from arq.constants import job_key_prefix
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from slack_sdk.signature import SignatureVerifier

from api.slack import service
from api.slack.schemas import SlackRequest
from common.delivery import configs as integrations
from common.delivery import jobs as delivery
from common.platform.keys import dispatcher_queue
from common.platform.settings import Settings
from common.slack import access as slack_access
from common.slack.installations import Installation, InstallationCache
from tests.support.app import App


@dataclass
class Workspace:
    team: str
    tenant: str
    secret: str


async def install(app: App, tenant: str | None = None) -> Workspace:
    ws = Workspace(
        team=f"T{uuid.uuid4().hex[:10].upper()}",
        tenant=tenant or f"t-{uuid.uuid4().hex[:8]}",
        secret=secrets.token_hex(16),
    )
    await app.gateway.db.execute(
        "INSERT INTO slack_installations (team_id, tenant_id, bot_token, signing_secret) VALUES ($1, $2, $3, $4)",
        ws.team,
        ws.tenant,
        "xoxb-" + secrets.token_hex(8),
        ws.secret,
    )
    return ws


def signature(secret: str, body: bytes, *, age: int = 0) -> dict[str, str]:
    ts = str(int(time.time()) - age)
    return {
        "x-slack-request-timestamp": ts,
        "x-slack-signature": SignatureVerifier(secret).generate_signature(timestamp=ts, body=body) or "",
        "content-type": "application/json",
    }


def guide_body(ws: Workspace, *, user: str | None = None, channel: str = "C1", **extra: Any) -> bytes:
    """The integration guide's Slack request, as a signed caller sends it to /api/v1/requests/slack."""
    slack_user = f"U{uuid.uuid4().hex[:8].upper()}"
    return orjson.dumps(
        {
            "user_id": user or slack_user,
            "content": "hello",
            "channel_id": channel,
            "slack_user_id": slack_user,
            "slack_team_id": ws.team,
            **extra,
        }
    )


async def send(app: App, body: bytes, headers: dict[str, str], path: str = "/api/v1/requests/slack") -> httpx.Response:
    async with app.client(headers={}) as anonymous:
        return await anonymous.post(path, content=body, headers=headers)


@pytest.fixture
async def slack_app(make_app: Callable[..., Any]) -> AsyncIterator[App]:
    async with make_app() as running:
        yield running


async def test_a_workspace_is_verified_with_its_own_secret_only(slack_app: App) -> None:
    a, b = await install(slack_app), await install(slack_app)
    body = guide_body(b)
    refused = await send(slack_app, body, signature(a.secret, body))
    assert refused.status_code == 401, refused.text
    accepted = await send(slack_app, body, signature(b.secret, body))
    assert accepted.status_code == 202, accepted.text
    tenants = await slack_app.gateway.db.fetch(
        "SELECT tenant_id FROM request_logs WHERE request_id = ANY($1::uuid[])", [accepted.json()["request_id"]]
    )
    assert [r["tenant_id"] for r in tenants] == [b.tenant]
    unknown = orjson.dumps({**orjson.loads(body), "slack_team_id": "TNOWHERE"})
    assert (await send(slack_app, unknown, signature(b.secret, unknown))).status_code == 401


async def test_a_signed_request_is_accepted_once(slack_app: App) -> None:
    ws = await install(slack_app)
    body = guide_body(ws)
    headers = signature(ws.secret, body)
    assert (await send(slack_app, body, headers)).status_code == 202
    replayed = await send(slack_app, body, headers)
    assert replayed.status_code == 401 and "replay" in replayed.json()["detail"], replayed.text
    # Slack signs every request it sends, its retries too: the same body with a new timestamp is no replay.
    assert (await send(slack_app, body, signature(ws.secret, body, age=3))).status_code == 202


async def test_a_request_that_failed_gives_its_signature_back(slack_app: App) -> None:
    ws = await install(slack_app)
    body = guide_body(ws, agent_id="no-such-agent")
    headers = signature(ws.secret, body)
    for _ in range(2):
        r = await send(slack_app, body, headers)
        assert r.status_code == 422 and "no-such-agent" in r.text, r.text


async def test_events_are_verified_with_the_named_workspaces_secret(slack_app: App) -> None:
    a, b = await install(slack_app), await install(slack_app)
    event = orjson.dumps(
        {
            "type": "event_callback",
            "team_id": b.team,
            "event_id": f"Ev{uuid.uuid4().hex}",
            "event": {"type": "app_mention", "user": "UX", "channel": "C1", "text": "hi", "ts": "1.1"},
        }
    )
    assert (await send(slack_app, event, signature(a.secret, event), "/slack/events")).status_code == 401
    challenge = orjson.dumps({"type": "url_verification", "challenge": "c-123"})
    answered = await send(slack_app, challenge, signature(a.secret, challenge), "/slack/events")
    assert answered.status_code == 200 and answered.json() == {"challenge": "c-123"}


class CountingPool:
    """Stands in for the gateway's pool and counts every use of it."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.uses = pool, 0

    def __getattr__(self, name: str) -> Any:
        self.uses += 1
        return getattr(self.pool, name)


async def test_unsigned_slack_traffic_costs_no_postgres_query(slack_app: App) -> None:
    now = [1000.0]
    slack_app.transport.app.state.slack_installations = InstallationCache(clock=lambda: now[0])  # type: ignore[attr-defined]
    ws = await install(slack_app)
    body = guide_body(ws)
    assert (await send(slack_app, body, signature(ws.secret, body))).status_code == 202  # loads the installations
    counting = CountingPool(slack_app.gateway.db)
    real, slack_app.gateway.db = slack_app.gateway.db, counting  # type: ignore[assignment]
    try:
        for n in range(20):
            forged = guide_body(ws, content=f"forged {n}")
            assert (await send(slack_app, forged, signature("not-the-secret", forged))).status_code == 401
            elsewhere = orjson.dumps({**orjson.loads(forged), "slack_team_id": f"TRANDOM{n}"})
            assert (await send(slack_app, elsewhere, signature(ws.secret, elsewhere))).status_code == 401
        assert counting.uses == 0
    finally:
        slack_app.gateway.db = real
    # A workspace installed since is found once the copy may reload (at most once a second for unknown teams).
    later = await install(slack_app)
    now[0] += InstallationCache.MISS_RELOAD
    body = guide_body(later)
    assert (await send(slack_app, body, signature(later.secret, body))).status_code == 202


def slack_override(channel: str, team: str) -> dict[str, Any]:
    return {"enabled": True, "config": {"channel_id": channel, "team_id": team}}


async def test_an_override_names_only_its_tenants_workspace_and_a_channel_the_user_asked_in(slack_app: App) -> None:
    mine, theirs = await install(slack_app), await install(slack_app)
    user = f"U{uuid.uuid4().hex[:8].upper()}"
    async with slack_app.client(user, mine.tenant) as c:
        r = await c.put(f"/api/v1/users/{user}/integrations/SLACK", json=slack_override("C-THEIRS", theirs.team))
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.team_id", r.text
        r = await c.put(f"/api/v1/users/{user}/integrations/SLACK", json={"config": {"channel_id": "C-MINE"}})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.team_id", r.text
        r = await c.put(f"/api/v1/users/{user}/integrations/SLACK", json=slack_override("C-MINE", mine.team))
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.channel_id", r.text
        asked = guide_body(mine, user=user, channel="C-MINE")
        assert (await send(slack_app, asked, signature(mine.secret, asked))).status_code == 202
        r = await c.put(f"/api/v1/users/{user}/integrations/SLACK", json=slack_override("C-MINE", mine.team))
        assert r.status_code == 200, r.text
        r = await c.put(f"/api/v1/users/{user}/integrations/SLACK", json=slack_override("C-OTHER", mine.team))
        assert r.status_code == 422, r.text
        r = await c.put(
            f"/api/v1/users/{user}/integrations/SLACK", json={**slack_override("C-OTHER", mine.team), "enabled": False}
        )
        assert r.status_code == 200, r.text  # a disabled override posts nothing; enabling it is checked again
        r = await c.put(f"/api/v1/users/{user}/integrations/SLACK", json={"enabled": True})
        assert r.status_code == 422, r.text
    other = f"U{uuid.uuid4().hex[:8].upper()}"
    async with slack_app.client(other, mine.tenant) as c:  # another user of the tenant did not ask in C-MINE
        r = await c.put(f"/api/v1/users/{other}/integrations/SLACK", json=slack_override("C-MINE", mine.team))
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.channel_id", r.text


async def test_the_operators_default_channel_is_allowed(slack_app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = await install(slack_app)

    async def default(db: Any, channel: str) -> dict[str, Any]:
        return {"channel_id": "C-OPS", "team_id": ws.team} if channel == "SLACK" else {}

    monkeypatch.setattr(integrations, "default_config", default)
    config = {"channel_id": "C-OPS", "team_id": ws.team}
    found = await slack_access.destination(slack_app.gateway.db, slack_app.settings, ws.tenant, "anyone", config)
    assert found is not None and found.team_id == ws.team
    with pytest.raises(slack_access.Refused):
        await slack_access.destination(
            slack_app.gateway.db, slack_app.settings, ws.tenant, "anyone", {**config, "channel_id": "C-ELSE"}
        )


def test_the_settings_bot_token_needs_the_workspace_it_belongs_to() -> None:
    """Without SLACK_TEAM_ID the settings' installation would answer every workspace: the process refuses to start."""
    with pytest.raises(ValidationError, match="SLACK_BOT_TOKEN needs SLACK_TEAM_ID"):
        Settings(slack_bot_token="xoxb-env", slack_signing_secret="s" * 32)


async def test_the_settings_installation_answers_only_its_workspace_and_tenant(make_app: Callable[..., Any]) -> None:
    """The SLACK_BOT_TOKEN installation serves SLACK_TEAM_ID for SLACK_TENANT_ID, and nothing else."""
    secret, env_tenant = secrets.token_hex(16), f"env-{uuid.uuid4().hex[:6]}"
    env_ws = Workspace(team=f"T{uuid.uuid4().hex[:8].upper()}", tenant=env_tenant, secret=secret)
    async with make_app(
        slack_bot_token="xoxb-env", slack_signing_secret=secret, slack_tenant_id=env_tenant, slack_team_id=env_ws.team
    ) as app:
        stranger = Workspace(team=f"T{uuid.uuid4().hex[:8].upper()}", tenant=env_tenant, secret=secret)
        foreign = guide_body(stranger, channel="C1")
        assert (await send(app, foreign, signature(secret, foreign))).status_code == 401
        outsider = f"U{uuid.uuid4().hex[:8].upper()}"
        async with app.client(outsider, f"t-{uuid.uuid4().hex[:8]}") as c:
            r = await c.put(f"/api/v1/users/{outsider}/integrations/SLACK", json=slack_override("C1", env_ws.team))
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.team_id", r.text
        user = f"U{uuid.uuid4().hex[:8].upper()}"
        asked = guide_body(env_ws, user=user, channel="C1")
        assert (await send(app, asked, signature(secret, asked))).status_code == 202
        async with app.client(user, env_tenant) as c:
            r = await c.put(f"/api/v1/users/{user}/integrations/SLACK", json=slack_override("C1", env_ws.team))
            assert r.status_code == 200, r.text
            r = await c.put(f"/api/v1/users/{user}/integrations/SLACK", json=slack_override("C1", stranger.team))
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.team_id", r.text


async def test_a_retried_event_follows_its_reply_even_when_the_first_try_could_not(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try stored the request, then Redis failed before its thread's follow job was queued (the
    gateway answered 5xx): Slack's retry replays the request and queues the follow, so the reply still
    reaches the thread."""
    inst = Installation(team_id=f"T{uuid.uuid4().hex[:8]}", tenant_id=f"t-{uuid.uuid4().hex[:8]}", bot_token="x")
    body = SlackRequest(user_id="U1", content="hello", channel_id="C1", slack_user_id="U1", slack_team_id=inst.team_id)
    real = delivery.enqueue_slack
    tries: list[str] = []

    async def flaky(pool: Any, follow: Any) -> bool:
        tries.append(follow.request_id)
        if len(tries) == 1:
            raise RedisConnectionError("Connection refused")
        return await real(pool, follow)

    monkeypatch.setattr(delivery, "enqueue_slack", flaky)
    args: dict[str, Any] = {"key": None, "reply_ts": None, "idempotency_key": f"slack-event:{uuid.uuid4()}"}
    with pytest.raises(RedisConnectionError):
        await service.start(app.gateway, inst, body, correlation_id="c", **args)
    again = await service.start(app.gateway, inst, body, correlation_id="c", **args)
    assert again.replayed and tries == [again.request_id, again.request_id]
    job = f"dlv:{again.request_id}:SLACK"
    try:
        assert await app.gateway.queue.zscore(dispatcher_queue(), job) is not None
    finally:
        await app.gateway.queue.zrem(dispatcher_queue(), job)
        await app.gateway.queue.delete(job_key_prefix + job)
