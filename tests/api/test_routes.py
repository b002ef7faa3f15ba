"""The 401/403/404/422/happy matrix of every route, in-process against the real Postgres and Valkey."""

from __future__ import annotations

import uuid

import pytest

from tests.support.app import App

MISSING = str(uuid.uuid4())

# (method, path, json body) of every authenticated route; {session} and {request} are filled in per test.
ROUTES = [
    ("GET", "/metrics", None),
    ("GET", "/api/v1/openapi.json", None),
    ("GET", "/api/v1/me", None),
    ("POST", "/api/v1/sessions", {}),
    ("GET", "/api/v1/sessions", None),
    ("GET", "/api/v1/sessions/{session}", None),
    ("POST", "/api/v1/sessions/{session}/end", None),
    ("GET", "/api/v1/sessions/{session}/requests", None),
    ("GET", "/api/v1/sessions/{session}/stream", None),
    ("POST", "/api/v1/requests/web", {"content": "hi"}),
    ("POST", "/api/v1/requests/cli", {"content": "hi"}),
    ("POST", "/api/v1/requests/tool", {"content": "hi", "tool_id": "t", "trigger_event": "e"}),
    ("POST", "/api/v1/requests/generic", {"content": "hi", "integration_type": "web"}),
    ("GET", "/api/v1/requests/{request}", None),
    ("POST", "/api/v1/requests/{request}/cancel", None),
    ("POST", "/stream?feature_id=gateway-tests&chat_id=c1", {"content": "hi"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_every_route_needs_credentials(app: App, method: str, path: str, body: object) -> None:
    async with app.client(headers={}) as anonymous:
        response = await anonymous.request(method, path.format(session=MISSING, request=MISSING), json=body)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/sessions/{id}",
        "/api/v1/sessions/{id}/requests",
        "/api/v1/sessions/{id}/stream",
        "/api/v1/requests/{id}",
    ],
)
@pytest.mark.parametrize("ident", [MISSING, "not-a-uuid"])
async def test_unknown_ids_are_404(app: App, path: str, ident: str) -> None:
    async with app.client() as client:
        response = await client.get(path.format(id=ident))
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/sessions/{id}/end", "/api/v1/requests/{id}/cancel"])
async def test_unknown_ids_are_404_on_actions(app: App, path: str) -> None:
    async with app.client() as client:
        response = await client.post(path.format(id=MISSING))
    assert response.status_code == 404


async def test_another_users_session_and_request_are_404(app: App) -> None:
    async with app.client("owner", "acme") as owner, app.client("other", "acme") as other:
        accepted = (await owner.post("/api/v1/requests/web", json={"content": "mine"})).json()
        for path in (
            f"/api/v1/sessions/{accepted['session_id']}",
            f"/api/v1/requests/{accepted['request_id']}",
            f"/api/v1/sessions/{accepted['session_id']}/stream",
        ):
            assert (await other.get(path)).status_code == 404
        assert (await other.post(f"/api/v1/requests/{accepted['request_id']}/cancel")).status_code == 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/requests/web", {}),
        ("/api/v1/requests/web", {"content": ""}),
        ("/api/v1/requests/cli", {"content": "x", "multitask": "sometimes"}),
        ("/api/v1/requests/tool", {"content": "x"}),
        ("/api/v1/requests/generic", {"content": "x", "integration_type": "carrier-pigeon"}),
        ("/api/v1/requests/web", {"content": "x", "agent_id": "nobody"}),
        ("/api/v1/sessions", {"integration_type": "nope"}),
        ("/stream?feature_id=a/b&chat_id=c", {}),
        # What Postgres or the JSON encoder cannot store is refused up front, not a 500 (found by the schema fuzzing).
        ("/api/v1/requests/web", {"content": "a\u0000b"}),
        ("/api/v1/requests/cli", {"content": "x", "metadata": {"n": 2**70}}),
        ("/api/v1/sessions", {"user_context": {"k\u0000": 1}}),
        ("/stream?feature_id=gateway-tests&chat_id=c", {"content": "a\u0000"}),
    ],
)
async def test_invalid_bodies_are_422(app: App, path: str, body: object) -> None:
    async with app.client() as client:
        response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"


async def test_acting_for_another_user_is_403(app: App) -> None:
    async with app.client() as client:
        response = await client.post("/api/v1/requests/web", json={"content": "x", "user_id": "someone-else"})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


async def test_happy_paths(app: App) -> None:
    async with app.client("happy", "acme") as client:
        me = (await client.get("/api/v1/me")).json()
        assert (me["tenant_id"], me["user_id"]) == ("acme", "happy")
        session = await client.post("/api/v1/sessions", json={"integration_type": "web"})
        assert session.status_code == 201
        sid = session.json()["session_id"]
        for kind, body in (
            ("web", {}),
            ("cli", {}),
            ("tool", {"tool_id": "t", "trigger_event": "e"}),
            ("generic", {"integration_type": "web"}),
        ):
            accepted = await client.post(
                f"/api/v1/requests/{kind}", json={"content": f"via {kind}", "session_id": sid, **body}
            )
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["session_id"] == sid
        rid = accepted.json()["request_id"]
        assert (await client.get(f"/api/v1/requests/{rid}")).json()["status"] == "queued"
        history = (await client.get(f"/api/v1/sessions/{sid}/requests")).json()["items"]
        assert [r["content"] for r in history] == ["via web", "via cli", "via tool", "via generic"]
        listed = (await client.get("/api/v1/sessions")).json()["items"]
        assert [s["session_id"] for s in listed] == [sid]
        assert (await client.post(f"/api/v1/requests/{rid}/cancel")).json()["status"] == "cancelling"
        ended = await client.post(f"/api/v1/sessions/{sid}/end")
        assert ended.json()["status"] == "inactive"
        assert [r["status"] for r in (await client.get(f"/api/v1/sessions/{sid}/requests")).json()["items"]] == [
            "cancelled"
        ] * 4
        assert (await client.get("/api/v1/openapi.json")).json()["info"]["title"] == "relaygate"
        assert (await client.get("/health")).json()["status"] == "ok"


def test_compat_chat_names_never_collide() -> None:
    from api.requests.compat import session_name

    assert session_name("a:b", "c") != session_name("a", "b:c")
    assert session_name("a", "b") == session_name("a", "b")


SCOPED = [(m, p, b) for m, p, b in ROUTES if p not in ("/metrics", "/api/v1/openapi.json", "/api/v1/me")]


@pytest.mark.parametrize(("method", "path", "body"), SCOPED, ids=[f"{m} {p}" for m, p, _ in SCOPED])
async def test_every_route_refuses_a_credential_scoped_elsewhere(
    app: App, method: str, path: str, body: object
) -> None:
    async with app.client(scopes=["metrics"]) as scraper:
        response = await scraper.request(method, path.format(session=MISSING, request=MISSING), json=body)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "forbidden"


async def test_usage_range_at_the_calendar_edges_is_no_500(app: App) -> None:
    async with app.client() as client:
        for query in ("to=0001-01-01", "from=0001-01-01&to=0001-01-02", "to=9999-12-31"):
            r = await client.get(f"/api/v1/usage?{query}")
            assert r.status_code in (200, 422), (query, r.text)
        assert (await client.get("/api/v1/usage?to=0001-01-01")).json()["from"] == "0001-01-01"
