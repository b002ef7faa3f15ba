"""Integration defaults and user overrides over HTTP: lazy, partial, reset, validated, tenant-scoped."""

from __future__ import annotations

import uuid

import httpx

from common.platform.credentials import mint_token
from tests.conftest import Stack, settings_for

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="


def ids() -> tuple[str, str]:
    return f"u-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"


def test_defaults_follow_the_guide_and_what_is_configured(stack: Stack) -> None:
    uid, tenant = ids()
    with stack.client(uid, tenant) as c:
        system = c.get("/api/v1/integration-defaults").json()["integration_defaults"]
        assert list(system) == ["SLACK", "EMAIL", "WEBHOOK", "SMS", "TEST"]
        assert [(v["priority"], v["retry_count"], v["retry_delay_seconds"]) for v in system.values()] == [
            (1, 3, 60),
            (2, 3, 60),
            (3, 1, 30),
            (4, 2, 45),
            (5, 1, 10),
        ]
        # The shared stack configures no Slack, SMTP or TEST channel: none is on by default.
        assert not any(v["enabled"] for v in system.values())
        assert system["SLACK"]["config"] == {"thread_replies": False, "mention_user": False, "include_agent_info": True}
        mine = c.get(f"/api/v1/users/{uid}/integration-defaults").json()
        assert mine["user_overrides"] == {} and mine["using_integration_defaults"] is True
        assert mine["effective_configs"] == system


def test_partial_override_update_disable_and_reset(stack: Stack) -> None:
    uid, tenant = ids()
    with stack.client(uid, tenant) as c:
        r = c.post(
            f"/api/v1/users/{uid}/integrations",
            json={
                "integration_type": "EMAIL",
                "config": {"email_address": "john@company.com"},
                "priority": 1,
                "retry_count": 5,
                "retry_delay_seconds": 30,
            },
        )
        assert r.status_code == 201, r.text
        mine = c.get(f"/api/v1/users/{uid}/integration-defaults").json()
        assert mine["using_integration_defaults"] is False
        assert mine["user_overrides"]["EMAIL"] == {
            "enabled": True,
            "priority": 1,
            "retry_count": 5,
            "retry_delay_seconds": 30,
            "config": {"email_address": "john@company.com", "format": "html", "include_agent_info": True},
        }
        assert mine["effective_configs"]["EMAIL"] == mine["user_overrides"]["EMAIL"]
        assert mine["effective_configs"]["SMS"]["retry_count"] == 2  # untouched channels keep the default
        r = c.put(f"/api/v1/users/{uid}/integrations/EMAIL", json={"enabled": False, "retry_count": 10})
        assert r.status_code == 200, r.text
        email = c.get(f"/api/v1/users/{uid}/integration-defaults").json()["effective_configs"]["EMAIL"]
        assert (email["enabled"], email["retry_count"], email["priority"]) == (False, 10, 1)
        r = c.put(
            f"/api/v1/users/{uid}/integrations/WEBHOOK",
            json={"enabled": True, "config": {"url": "http://127.0.0.1:9/x", "secret": SECRET}},
        )
        assert r.status_code == 200 and SECRET not in r.text and r.json()["config"]["secret"] == "********"
        assert SECRET not in c.get(f"/api/v1/users/{uid}/integration-defaults").text
        assert c.delete(f"/api/v1/users/{uid}/integrations/WEBHOOK").status_code == 204
        assert c.delete(f"/api/v1/users/{uid}/integrations/WEBHOOK").status_code == 404
        r = c.post(f"/api/v1/users/{uid}/integration-defaults/reset")
        assert r.json() == {"user_id": uid, "removed_overrides": 1, "using_integration_defaults": True}
        assert c.get(f"/api/v1/users/{uid}/integration-defaults").json()["user_overrides"] == {}


def test_config_is_validated_per_type(stack: Stack) -> None:
    uid, tenant = ids()
    with stack.client(uid, tenant) as c:
        cases = [
            ({"integration_type": "EMAIL", "config": {}}, "config.email_address"),
            ({"integration_type": "WEBHOOK", "config": {"secret": SECRET}}, "config.url"),
            (
                {"integration_type": "WEBHOOK", "config": {"url": "https://x.example", "secret": "nope"}},
                "config.secret",
            ),
            ({"integration_type": "SMS", "config": {"phone_number": "12"}}, "config.phone_number"),
            ({"integration_type": "FAX"}, "body.integration_type"),
        ]
        for body, field in cases:
            r = c.post(f"/api/v1/users/{uid}/integrations", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"] == "validation_error"
            assert field in [f["field"] for f in r.json()["detail"]], r.text
        # A disabled override needs no address.
        r = c.post(f"/api/v1/users/{uid}/integrations", json={"integration_type": "EMAIL", "enabled": False})
        assert r.status_code == 201, r.text


def test_webhook_urls_and_headers_are_checked_when_saved(stack: Stack) -> None:
    """The shared stack allows 127.0.0.1 only (tests/conftest.py): every other private form is refused."""
    uid, tenant = ids()
    refused = {
        "http://127.0.0.2:9/x": "127.0.0.2 is a loopback address",
        "http://2130706434/x": "2130706434 is a loopback address",
        "http://[::1]:9/x": "::1 is a loopback address",
        "http://[::ffff:127.0.0.2]/x": "::ffff:127.0.0.2 is a loopback address",
        "http://localhost:9/x": "localhost resolves to a loopback address",
        "http://localhost.:9/x": "localhost resolves to a loopback address",
        "http://169.254.169.254/latest/meta-data": "169.254.169.254 is a link-local address",
        "http://10.0.0.1/x": "10.0.0.1 is a private address",
        "http://100.64.0.1/x": "100.64.0.1 is a shared (CGNAT) address",
    }
    hint = "; relaygate only calls public addresses (an operator may allow this host with OUTBOUND_ALLOW_HOSTS)"
    with stack.client(uid, tenant) as c:
        for url, reason in refused.items():
            config = {"url": url, "secret": SECRET}
            body = {"integration_type": "WEBHOOK", "config": config}
            created = c.post(f"/api/v1/users/{uid}/integrations", json=body)
            for r in (created, c.put(f"/api/v1/users/{uid}/integrations/WEBHOOK", json={"config": config})):
                assert r.status_code == 422, (url, r.text)
                assert r.json()["detail"] == [{"field": "config.url", "message": f"URL refused: {reason}{hint}"}]
        for name in ("Host", "Transfer-Encoding", "webhook-signature", "X-Bad\r\nInjected"):
            r = c.post(
                f"/api/v1/users/{uid}/integrations",
                json={
                    "integration_type": "WEBHOOK",
                    "config": {"url": "http://127.0.0.1:9/x", "secret": SECRET, "headers": {name: "x"}},
                },
            )
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.headers", r.text
        assert c.get(f"/api/v1/users/{uid}/integration-defaults").json()["user_overrides"] == {}
        r = c.post(
            f"/api/v1/users/{uid}/integrations",
            json={
                "integration_type": "WEBHOOK",
                "config": {
                    "url": "http://127.0.0.1:9/x",
                    "secret": SECRET,
                    "headers": {"Authorization": "Bearer mine"},
                },
            },
        )
        assert r.status_code == 201, r.text


def test_users_admins_and_tenants(stack: Stack) -> None:
    uid, tenant = ids()
    other = f"u-{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack.infra)
    admin = mint_token(settings, user_id="boss", tenant_id=tenant, scopes=["admin"])
    with stack.client(uid, tenant) as c:
        r = c.post(f"/api/v1/users/{other}/integrations", json={"integration_type": "TEST"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert c.get(f"/api/v1/users/{other}/deliveries").status_code == 403
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {admin}"}) as a:
        r = a.post(f"/api/v1/users/{other}/integrations", json={"integration_type": "TEST"})
        assert r.status_code == 201, r.text
        assert "TEST" in a.get(f"/api/v1/users/{other}/integration-defaults").json()["user_overrides"]
    # The same user id in another tenant sees nothing of it, even as that tenant's admin.
    foreign = mint_token(settings, user_id="boss", tenant_id=f"t-{uuid.uuid4().hex[:8]}", scopes=["admin"])
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {foreign}"}) as f:
        assert f.get(f"/api/v1/users/{other}/integration-defaults").json()["user_overrides"] == {}
        assert f.get(f"/api/v1/users/{other}/deliveries").json()["deliveries"] == []
    assert httpx.get(f"{stack.base_url}/api/v1/integration-defaults").status_code == 401
