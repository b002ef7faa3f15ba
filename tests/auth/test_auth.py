"""Authentication and tenant isolation over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
from jose import jwt

from tests.auth.test_jwt import claims, forge, rsa_keypair
from tests.conftest import JWT_SECRET, ROOT, Stack
from tests.support.streams import offline, wait_status


def _create_key(stack: Stack, tenant: str, user: str, *extra: str) -> str:
    env = {**os.environ, "DATABASE_URL": stack.infra.database_url}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "apikey", "create", "--tenant", tenant, "--user", user, *extra],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_requests_without_valid_credentials_get_401(stack: Stack) -> None:
    url = f"{stack.base_url}/api/v1/sessions"
    tokens = {
        "expired": jwt.encode(claims(exp=int(time.time()) - 5), JWT_SECRET, algorithm="HS256"),
        "alg-none": forge({"alg": "none", "typ": "JWT"}, claims(), b""),
        "wrong-secret": jwt.encode(claims(), "not-the-secret", algorithm="HS256"),
        "garbage": "abc",
        "unknown-api-key": "rgk_deadbeef_nope",
    }
    assert httpx.get(url).status_code == 401
    for name, token in tokens.items():
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, name
        assert r.json()["error"] == "unauthorized"
    assert httpx.get(f"{stack.base_url}/metrics").status_code == 401
    assert httpx.get(f"{stack.base_url}/api/v1/openapi.json").status_code == 401
    for public_schema in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{stack.base_url}{public_schema}").status_code == 404, public_schema
    assert httpx.get(f"{stack.base_url}/health").status_code == 200


def test_a_token_that_worked_is_refused_once_it_expires(stack: Stack) -> None:
    token = jwt.encode(claims(exp=int(time.time()) + 2), JWT_SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{stack.base_url}/api/v1/me", headers=headers).status_code == 200
    # python-jose compares whole seconds: the token is valid through the second `exp` names.
    time.sleep(max(0.0, jwt.get_unverified_claims(token)["exp"] + 1 - time.time()) + 0.2)
    r = httpx.get(f"{stack.base_url}/api/v1/me", headers=headers)
    assert r.status_code == 401
    assert r.json()["detail"] == "token expired"


def test_api_keys_authenticate_and_tools_act_for_users(stack: Stack) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    user_key = _create_key(stack, tenant, "bob")
    tool_key = _create_key(stack, tenant, "snow-integration", "--tool")
    assert user_key.startswith("rgk_")
    me = httpx.get(f"{stack.base_url}/api/v1/me", headers={"x-api-key": user_key}).json()
    assert me == {"tenant_id": tenant, "user_id": "bob", "kind": "user", "scopes": []}
    bearer = httpx.get(f"{stack.base_url}/api/v1/me", headers={"Authorization": f"Bearer {user_key}"})
    assert bearer.json()["user_id"] == "bob"
    schema = httpx.get(f"{stack.base_url}/api/v1/openapi.json", headers={"x-api-key": user_key}).json()
    assert "/api/v1/requests/web" in schema["paths"]
    as_other = httpx.post(
        f"{stack.base_url}/api/v1/requests/web",
        headers={"x-api-key": user_key},
        json={"user_id": "carol", "content": "hi"},
    )
    assert as_other.status_code == 403
    by_tool = httpx.post(
        f"{stack.base_url}/api/v1/requests/tool",
        headers={"x-api-key": tool_key},
        json={"user_id": "carol", "content": "ticket", "tool_id": "snow", "trigger_event": "incident.created"},
    )
    assert by_tool.status_code == 202
    carol = stack.client("carol", tenant)
    assert carol.get(f"/api/v1/sessions/{by_tool.json()['session_id']}").status_code == 200
    assert httpx.get(f"{stack.base_url}/metrics", headers={"x-api-key": tool_key}).status_code == 403
    scraper_key = _create_key(stack, tenant, "prometheus", "--scope", "metrics")
    metrics = httpx.get(f"{stack.base_url}/metrics", headers={"x-api-key": scraper_key})
    assert metrics.status_code == 200 and "relaygate_http_requests_total" in metrics.text


def test_other_tenants_and_users_see_404(stack: Stack) -> None:
    owner = stack.client("alice", "tenant-a")
    r = owner.post(
        "/api/v1/requests/web", json={"content": "secret plans", "new_session": True, "metadata": offline(200, 50)}
    ).json()
    sid, rid = r["session_id"], r["request_id"]
    wait_status(owner, rid, {"running", "completed"})
    for intruder in (stack.client("alice", "tenant-b"), stack.client("mallory", "tenant-a")):
        for method, path in (
            ("GET", f"/api/v1/sessions/{sid}"),
            ("GET", f"/api/v1/sessions/{sid}/stream"),
            ("GET", f"/api/v1/sessions/{sid}/requests"),
            ("GET", f"/api/v1/requests/{rid}"),
            ("POST", f"/api/v1/requests/{rid}/cancel"),
            ("POST", f"/api/v1/sessions/{sid}/end"),
        ):
            assert intruder.request(method, path).status_code == 404, (method, path)
        joined = intruder.post("/api/v1/requests/web", json={"content": "let me in", "session_id": sid})
        assert joined.status_code == 404
        assert sid not in {s["session_id"] for s in intruder.get("/api/v1/sessions").json()["items"]}
    owner.post(f"/api/v1/requests/{rid}/cancel")


def test_rs256_gateway_rejects_hs256_token_made_with_its_public_key(new_stack: Stack) -> None:
    private_pem, public_pem, public_der = rsa_keypair()
    new_stack.start_gateway(JWT_ALGORITHM="RS256", JWT_PUBLIC_KEY=public_pem, JWT_SECRET_KEY="")
    url = f"{new_stack.base_url}/api/v1/me"
    genuine = jwt.encode(claims(), private_pem, algorithm="RS256")
    assert httpx.get(url, headers={"Authorization": f"Bearer {genuine}"}).json()["user_id"] == "alice"
    forged = forge({"alg": "HS256", "typ": "JWT"}, claims(), public_der)
    assert httpx.get(url, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    pem_forged = forge({"alg": "HS256", "typ": "JWT"}, claims(), public_pem.encode())
    assert httpx.get(url, headers={"Authorization": f"Bearer {pem_forged}"}).status_code == 401
