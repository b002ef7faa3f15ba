"""Sessions in Postgres. Every query is scoped to the caller's tenant and user."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from api.sessions.schemas import SessionCreate
from common import sink
from common.auth import Principal

_COLUMNS = """
s.session_id::text, s.user_id, s.integration_type, s.status, s.channel_id, s.thread_id, s.external_session_id,
s.current_agent_id, s.integration_metadata, s.user_context, s.conversation_context, s.total_requests,
s.last_request_id::text, s.last_request_at, s.expires_at, s.created_at, s.updated_at,
(SELECT left(r.request_content, 80) FROM request_logs r WHERE r.session_id = s.session_id ORDER BY r.id LIMIT 1)
    AS title
"""

REQUEST_COLUMNS = """
r.request_id::text, r.session_id::text, r.status, r.request_content AS content, r.response_content AS response,
r.error, r.attempt, r.agent_id, r.request_type AS integration_type, r.stream_entry_id, r.processing_time_ms,
r.created_at, r.completed_at
"""


def parse_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def create(
    conn: asyncpg.Connection | asyncpg.Pool, who: Principal, user_id: str, body: SessionCreate, ttl_seconds: int
) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""
        WITH s AS (
            INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, channel_id, thread_id,
                external_session_id, user_context, integration_metadata, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))
            RETURNING *)
        SELECT {_COLUMNS} FROM s
        """,
        uuid.uuid4(), who.tenant_id, user_id, body.integration_type, body.channel_id, body.thread_id,
        body.external_session_id, body.user_context, body.integration_metadata, ttl_seconds,
    )
    assert row is not None
    sink.emit("session.created", str(row["session_id"]), {"user_id": user_id}, tenant_id=who.tenant_id)
    return dict(row)


async def for_external_id(conn: asyncpg.Connection | asyncpg.Pool, who: Principal, external_id: str,
                          ttl_seconds: int) -> str:
    """The caller's `generic` session named `external_id`, created on first use (race-free)."""
    session_id: str = await conn.fetchval(
        """
        WITH ins AS (
            INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, external_session_id,
                                          expires_at)
            VALUES (gen_random_uuid(), $1, $2, 'generic', $3, now() + make_interval(secs => $4))
            ON CONFLICT DO NOTHING RETURNING session_id)
        SELECT session_id::text FROM ins
        UNION ALL
        SELECT session_id::text FROM request_sessions
         WHERE tenant_id = $1 AND user_id = $2 AND integration_type = 'generic' AND external_session_id = $3
        LIMIT 1
        """,
        who.tenant_id, who.user_id, external_id, ttl_seconds,
    )
    return session_id


async def get(conn: asyncpg.Connection | asyncpg.Pool, who: Principal, session_id: str) -> dict[str, Any] | None:
    sid = parse_uuid(session_id)
    if sid is None:
        return None
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM request_sessions s WHERE s.session_id = $1 AND s.tenant_id = $2 AND s.user_id = $3",
        sid, who.tenant_id, who.user_id,
    )
    return dict(row) if row else None


async def list_for(
    conn: asyncpg.Connection | asyncpg.Pool, who: Principal, limit: int, offset: int, status: str | None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM request_sessions s
         WHERE s.tenant_id = $1 AND s.user_id = $2 AND ($5::text IS NULL OR s.status = $5)
         ORDER BY s.updated_at DESC, s.id DESC LIMIT $3 OFFSET $4
        """,
        who.tenant_id, who.user_id, limit, offset, status,
    )
    return [dict(r) for r in rows]


async def requests_of(
    conn: asyncpg.Connection | asyncpg.Pool, who: Principal, session_id: str, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            SELECT {REQUEST_COLUMNS}, r.id FROM request_logs r
             WHERE r.session_id = $1 AND r.tenant_id = $2 AND r.user_id = $3
             ORDER BY r.id DESC LIMIT $4) recent
        ORDER BY id
        """,
        session_id, who.tenant_id, who.user_id, limit,
    )
    return [{k: v for k, v in dict(r).items() if k != "id"} for r in rows]


async def checkpoint_of_running(conn: asyncpg.Connection | asyncpg.Pool, session_id: str) -> str | None:
    """Stream id up to which the running request's partial reply is stored in Postgres."""
    value: str | None = await conn.fetchval(
        "SELECT response_stream_id FROM request_logs WHERE session_id = $1 AND status = 'running' LIMIT 1",
        session_id,
    )
    return value


async def end(conn: asyncpg.Connection, who: Principal, session_id: str) -> list[str]:
    """Mark the session inactive; returns its unfinished requests (the caller cancels them)."""
    await conn.execute(
        "UPDATE request_sessions SET status = 'inactive', updated_at = now()"
        " WHERE session_id = $1 AND tenant_id = $2 AND user_id = $3",
        session_id, who.tenant_id, who.user_id,
    )
    sink.emit("session.ended", session_id, {"status": "inactive"}, tenant_id=who.tenant_id)
    rows = await conn.fetch(
        "SELECT request_id::text FROM request_logs WHERE session_id = $1 AND status IN ('queued','running')"
        " ORDER BY id",
        session_id,
    )
    return [r["request_id"] for r in rows]
