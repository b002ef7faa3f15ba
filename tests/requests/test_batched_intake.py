"""A burst of requests shares its Postgres statements (common.platform.batching), on real Postgres: every
request and session stored as one at a time would store it, and a bad row fails only its own request."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from api.requests.schemas import GenericRequest
from common.platform import db
from common.platform.credentials import Principal
from common.requests import intake
from common.requests import repository as request_repo
from common.sessions import repository as session_repo
from tests.support.app import App


def principal() -> Principal:
    return Principal(
        tenant_id="tenant-" + uuid.uuid4().hex[:8], user_id="user-" + uuid.uuid4().hex[:8], scopes=frozenset()
    )


def batches(app: App, name: str) -> int:
    return db.batcher(app.gateway.db, name, lambda: pytest.fail(f"no batcher {name}")).batches


def batched_calls(name: str) -> float:
    return REGISTRY.get_sample_value("relaygate_batched_calls_total", {"batch": name}) or 0.0


async def test_a_burst_of_new_sessions_is_stored_in_shared_statements(app: App) -> None:
    tenant, user = "tenant-" + uuid.uuid4().hex[:8], "user-" + uuid.uuid4().hex[:8]
    calls_before = batched_calls("requests.insert.new_session")
    async with app.client(user, tenant) as client:
        answers = await asyncio.gather(
            *(
                client.post("/api/v1/requests/web", json={"content": f"question {i}", "new_session": True})
                for i in range(30)
            )
        )
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers if a.status_code != 202]
    accepted = {a.json()["request_id"]: a.json()["session_id"] for a in answers}
    rows = await app.gateway.db.fetch(
        "SELECT r.request_id::text, r.session_id::text, r.request_content, r.deadline_at > now() AS live,"
        " s.total_requests, s.last_request_id::text, s.integration_type"
        " FROM request_logs r JOIN request_sessions s USING (session_id) WHERE r.tenant_id = $1",
        tenant,
    )
    assert {r["request_id"]: r["session_id"] for r in rows} == accepted
    assert sorted(r["request_content"] for r in rows) == sorted(f"question {i}" for i in range(30))
    for r in rows:
        assert r["live"] and r["total_requests"] == 1 and r["last_request_id"] == r["request_id"]
        assert r["integration_type"] == "web"
    assert batches(app, "requests.insert.new_session") >= 1
    assert 2 <= batched_calls("requests.insert.new_session") - calls_before <= 30


async def test_first_turns_of_named_chats_share_statements(app: App) -> None:
    """Concurrent first turns (a session made a moment ago, `unseen_session`) go into their sessions together."""
    gw, who = app.gateway, principal()
    named = await asyncio.gather(*(session_repo.for_external_id(gw.db, who, f"chat-{i}", 600) for i in range(20)))
    assert all(created for _, created in named)

    async def first_turn(session_id: str, i: int) -> intake.Admitted:
        body = GenericRequest(integration_type="generic", session_id=session_id, content=f"turn {i}")
        return await intake.accept(gw, who, body, idempotency_key=None, correlation_id="cid", unseen_session=True)

    admitted = await asyncio.gather(*(first_turn(sid, i) for i, (sid, _) in enumerate(named)))
    sessions = await gw.db.fetch(
        "SELECT session_id::text, total_requests, last_request_id::text FROM request_sessions WHERE tenant_id = $1",
        who.tenant_id,
    )
    last = {s["session_id"]: (s["total_requests"], s["last_request_id"]) for s in sessions}
    assert last == {a.session_id: (1, a.request_id) for a in admitted}
    assert batches(app, "requests.insert.into_session") >= 1
    assert batches(app, "sessions.for_external_id") >= 1


async def test_concurrent_lookups_of_one_name_create_one_session(app: App) -> None:
    gw, who = app.gateway, principal()
    found = await asyncio.gather(*(session_repo.for_external_id(gw.db, who, f"chat-{i % 5}", 600) for i in range(25)))
    by_name: dict[str, set[str]] = {}
    created: Counter[str] = Counter()
    for i, (session_id, made) in enumerate(found):
        by_name.setdefault(f"chat-{i % 5}", set()).add(session_id)
        created[f"chat-{i % 5}"] += made
    assert all(len(ids) == 1 for ids in by_name.values()), by_name
    assert created == Counter({f"chat-{i}": 1 for i in range(5)})
    stored = await gw.db.fetchval("SELECT count(*) FROM request_sessions WHERE tenant_id = $1", who.tenant_id)
    assert stored == 5
    # A later lookup finds each (and creates nothing).
    assert await session_repo.for_external_id(gw.db, who, "chat-0", 600) == (next(iter(by_name["chat-0"])), False)


def values(request_id: str, session_id: str, who: Principal) -> tuple[Any, ...]:
    return (
        request_id,
        session_id,
        who.tenant_id,
        who.user_id,
        "generic",
        "hello",
        {"request_id": request_id},
        "agent",
        "default",
        None,
        "digest",
        "cid",
        "1-1",
        600,
        600,
        None,
    )


async def test_a_bad_row_fails_only_its_own_request(app: App) -> None:
    """A request into a session that does not exist fails the shared statement; the others are stored alone."""
    gw, who = app.gateway, principal()
    sessions = [
        sid
        for sid, _ in await asyncio.gather(
            *(session_repo.for_external_id(gw.db, who, f"chat-{i}", 600) for i in range(6))
        )
    ]
    missing = str(uuid.uuid4())
    requests = [str(uuid.uuid4()) for _ in range(7)]
    targets = [*sessions[:3], missing, *sessions[3:]]
    outcomes = await asyncio.gather(
        *(
            request_repo.store(gw.db, new_session=False, values=values(rid, sid, who))
            for rid, sid in zip(requests, targets, strict=True)
        ),
        return_exceptions=True,
    )
    assert isinstance(outcomes[3], asyncpg.ForeignKeyViolationError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * 6
    stored = await gw.db.fetch("SELECT request_id::text FROM request_logs WHERE tenant_id = $1", who.tenant_id)
    assert sorted(r["request_id"] for r in stored) == sorted(requests[:3] + requests[4:])


async def test_requests_into_one_session_are_never_in_one_statement(app: App) -> None:
    """The session's count and last request are updated once per request, as one at a time would."""
    gw, who = app.gateway, principal()
    session_id, _ = await session_repo.for_external_id(gw.db, who, "chat", 600)
    requests = [str(uuid.uuid4()) for _ in range(5)]
    await asyncio.gather(
        *(request_repo.store(gw.db, new_session=False, values=values(rid, session_id, who)) for rid in requests)
    )
    total = await gw.db.fetchval("SELECT total_requests FROM request_sessions WHERE session_id = $1", session_id)
    assert total == 5
