"""`request_logs` SQL, for every process. Reads a caller names are scoped to its tenant and user.

The state machine's conditional updates are in `lifecycle.py`; queries of other tables that only look
into `request_logs` (a session's listing, Slack access, admission) stay with their own table.
"""

from __future__ import annotations

from functools import partial
from typing import Any, TypeAlias

import asyncpg

from common.platform.batching import Batcher
from common.platform.credentials import Principal
from common.platform.db import batcher
from common.platform.ids import parse_uuid
from common.requests.models import ACTIVE_STATUSES

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

COLUMNS = """
r.request_id::text, r.session_id::text, r.status, r.request_content AS content, r.response_content AS response,
r.error, r.attempt, r.agent_id, r.request_type AS integration_type, r.stream_entry_id, r.processing_time_ms,
r.created_at, r.completed_at,
jsonb_build_object('input_tokens', r.input_tokens, 'output_tokens', r.output_tokens, 'cost_usd', r.cost_usd,
                   'estimated', r.usage_estimated) AS usage
"""

# A request and its session (new, or touched) in one statement, for one request or many; the values go as one
# array per column.
_ROWS = """
    WITH v AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                             $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                             $14::float8[], $15::float8[], $16::text[])
            AS v(request_id, session_id, tenant_id, user_id, request_type, request_content, normalized_request,
                 agent_id, feature, idempotency_key, body_hash, correlation_id, stream_entry_id, timeout_s, ttl_s,
                 created_by)),
    request AS (
        INSERT INTO request_logs (request_id, session_id, tenant_id, user_id, request_type, request_content,
            normalized_request, agent_id, feature, idempotency_key, body_hash, correlation_id, stream_entry_id,
            deadline_at, created_by)
        SELECT request_id, session_id, tenant_id, user_id, request_type, request_content, normalized_request,
               agent_id, feature, idempotency_key, body_hash, correlation_id, stream_entry_id,
               now() + make_interval(secs => timeout_s), created_by
          FROM v)
"""
_MANY_INTO_SESSIONS = (
    _ROWS
    + """
    UPDATE request_sessions s
       SET last_request_id = v.request_id, last_request_at = now(), updated_at = now(),
           total_requests = s.total_requests + 1, expires_at = now() + make_interval(secs => v.ttl_s)
      FROM v WHERE s.session_id = v.session_id
"""
)
_MANY_WITH_NEW_SESSIONS = (
    _ROWS
    + """
    INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, expires_at,
                                  last_request_id, last_request_at, total_requests)
    SELECT session_id, tenant_id, user_id, request_type, now() + make_interval(secs => ttl_s), request_id, now(), 1
      FROM v
"""
)


async def insert(conn: Conn, *, new_session: bool, values: tuple[Any, ...]) -> None:
    """Store a request and create (or touch) its session in one statement.

    `values`: request_id, session_id, tenant_id, user_id, request_type, content, normalized, agent_id,
    feature, idempotency_key, body_hash, correlation_id, stream_entry_id, timeout seconds, session ttl,
    created_by (the principal, when it acts for another user).
    """
    await _insert_many(conn, new_session, [values])


async def store(db: asyncpg.Pool, *, new_session: bool, values: tuple[Any, ...]) -> None:
    """`insert` outside a transaction; concurrent calls share one statement (one per session at a time)."""
    await batcher(
        db,
        "requests.insert.new_session" if new_session else "requests.insert.into_session",
        lambda name: Batcher(
            partial(_insert_many, db, new_session),
            partial(_insert_one, db, new_session),
            name=name,
            key=lambda values: values[1],
        ),
    )(values)


async def _insert_one(db: asyncpg.Pool, new_session: bool, values: tuple[Any, ...]) -> None:
    await insert(db, new_session=new_session, values=values)


async def _insert_many(db: Conn, new_session: bool, rows: list[tuple[Any, ...]]) -> list[None]:
    columns = [list(column) for column in zip(*rows, strict=True)]
    await db.execute(_MANY_WITH_NEW_SESSIONS if new_session else _MANY_INTO_SESSIONS, *columns)
    return [None] * len(rows)


async def by_idempotency_key(conn: Conn, tenant_id: str, user_id: str, key: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT request_id::text, session_id::text, status, stream_entry_id, body_hash, tenant_id, attempt, feature,"
        " correlation_id FROM request_logs"
        " WHERE tenant_id = $1 AND user_id = $2 AND idempotency_key = $3",
        tenant_id,
        user_id,
        key,
    )
    return row


async def lock_idempotency_key(conn: asyncpg.Connection, tenant_id: str, user_id: str, key: str) -> None:
    """A transaction lock on one (tenant, user, Idempotency-Key); read the key's row after it (new snapshot)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"idempotency\x1f{tenant_id}\x1f{user_id}\x1f{key}"
    )


async def active_in_session(conn: Conn, session_id: str) -> list[asyncpg.Record]:
    """(request_id, status) of the session's queued and running requests, oldest first."""
    return list(
        await conn.fetch(
            "SELECT request_id::text, status FROM request_logs"
            " WHERE session_id = $1 AND status = ANY($2::text[]) ORDER BY id",
            session_id,
            list(ACTIVE_STATUSES),
        )
    )


async def get(conn: Conn, who: Principal, request_id: str) -> dict[str, Any] | None:
    """The caller's request: one it sent for itself, or one it created for another user."""
    rid = parse_uuid(request_id)
    row = rid and await conn.fetchrow(
        f"SELECT {COLUMNS} FROM request_logs r WHERE r.request_id = $1 AND r.tenant_id = $2"
        " AND (r.user_id = $3 OR r.created_by = $3)",
        rid,
        who.tenant_id,
        who.user_id,
    )
    return dict(row) if row else None


async def of_session(conn: Conn, who: Principal, session_id: str, limit: int) -> list[dict[str, Any]]:
    """The session's last `limit` requests, oldest first."""
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            SELECT {COLUMNS}, r.id FROM request_logs r
             WHERE r.session_id = $1 AND r.tenant_id = $2 AND r.user_id = $3
             ORDER BY r.id DESC LIMIT $4) recent
        ORDER BY id
        """,
        session_id,
        who.tenant_id,
        who.user_id,
        limit,
    )
    return [{k: v for k, v in dict(r).items() if k != "id"} for r in rows]


async def checkpoint_of_running(conn: Conn, who: Principal, session_id: str) -> str | None:
    """Stream id up to which the running request's partial reply is stored in Postgres."""
    value: str | None = await conn.fetchval(
        "SELECT response_stream_id FROM request_logs WHERE session_id = $1 AND tenant_id = $2 AND status = 'running'"
        " LIMIT 1",
        session_id,
        who.tenant_id,
    )
    return value


async def unfinished_in_session(conn: Conn, who: Principal, session_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT request_id::text FROM request_logs"
        " WHERE session_id = $1 AND tenant_id = $2 AND status IN ('queued','running','waiting') ORDER BY id",
        session_id,
        who.tenant_id,
    )
    return [r["request_id"] for r in rows]


_TURN_COLUMNS = f"""{COLUMNS}, r.normalized_request -> 'integration_context' -> 'langgraph' AS langgraph"""


async def turns_of(
    conn: Conn, who: Principal, session_ids: list[str], per_session: int, before_request: str | None = None
) -> list[dict[str, Any]]:
    """The last `per_session` requests of each session (oldest first), with the LangGraph options they were sent with.

    `before_request`: only the requests stored before that one (its session's earlier turns).
    """
    rows = await conn.fetch(
        f"""
        SELECT t.* FROM unnest($1::uuid[]) AS s(session_id)
         CROSS JOIN LATERAL (
               SELECT {_TURN_COLUMNS}, r.id FROM request_logs r
                WHERE r.session_id = s.session_id AND r.tenant_id = $2 AND r.user_id = $3
                  AND ($5::uuid IS NULL OR r.id < (SELECT b.id FROM request_logs b WHERE b.request_id = $5))
                ORDER BY r.id DESC LIMIT $4) t
         ORDER BY t.session_id, t.id
        """,
        session_ids,
        who.tenant_id,
        who.user_id,
        per_session,
        before_request,
    )
    return [{k: v for k, v in dict(r).items() if k != "id"} for r in rows]


async def with_options(conn: Conn, who: Principal, request_id: str) -> dict[str, Any] | None:
    """The caller's request (as `get`), with the LangGraph options it was sent with (None for other routes)."""
    rid = parse_uuid(request_id)
    row = rid and await conn.fetchrow(
        f"SELECT {_TURN_COLUMNS} FROM request_logs r WHERE r.request_id = $1 AND r.tenant_id = $2"
        " AND (r.user_id = $3 OR r.created_by = $3)",
        rid,
        who.tenant_id,
        who.user_id,
    )
    return dict(row) if row else None


async def status(conn: Conn, request_id: str) -> str | None:
    """A request's status (the caller has checked whose it is)."""
    found: str | None = await conn.fetchval("SELECT status FROM request_logs WHERE request_id = $1", request_id)
    return found


async def outcome(conn: Conn, tenant_id: str, request_id: str) -> asyncpg.Record | None:
    """Status, reply, error and agent of a tenant's request."""
    return await conn.fetchrow(
        "SELECT status, response_content, error, agent_id FROM request_logs WHERE request_id = $1 AND tenant_id = $2",
        request_id,
        tenant_id,
    )


async def stored(conn: Conn, request_ids: list[str]) -> set[str]:
    """Which of these requests have a row."""
    rows = await conn.fetch("SELECT request_id::text FROM request_logs WHERE request_id = ANY($1::uuid[])", request_ids)
    return {r["request_id"] for r in rows}


async def set_cloudevent(conn: Conn, tenant_id: str, request_id: str, event_id: str, event_type: str) -> None:
    """Note the CloudEvent a request came from."""
    await conn.execute(
        "UPDATE request_logs SET cloudevent_id = $2, cloudevent_type = $3 WHERE request_id = $1 AND tenant_id = $4",
        request_id,
        event_id,
        event_type,
        tenant_id,
    )


async def earlier_turns(
    conn: Conn, request_ids: list[str], session_ids: list[str], before_ids: list[int], turns: int
) -> list[asyncpg.Record]:
    """The last `turns` completed exchanges before each request in its session (`for_request`,
    `request_content`, `response_content`), oldest first per request."""
    return list(
        await conn.fetch(
            """
            SELECT c.request_id::text AS for_request, h.request_content, h.response_content
              FROM unnest($1::uuid[], $2::uuid[], $3::bigint[]) AS c(request_id, session_id, before_id)
             CROSS JOIN LATERAL (
                   SELECT id, request_content, response_content FROM request_logs
                    WHERE session_id = c.session_id AND id < c.before_id AND status = 'completed'
                      AND response_content IS NOT NULL
                    ORDER BY id DESC LIMIT $4) h
             ORDER BY c.request_id, h.id
            """,
            request_ids,
            session_ids,
            before_ids,
            turns,
        )
    )


async def reply(conn: Conn, tenant_id: str, request_id: str) -> asyncpg.Record | None:
    """What delivering a request's reply needs of its row."""
    return await conn.fetchrow(
        """
        SELECT request_id::text, session_id::text, tenant_id, user_id, request_content, response_content, agent_id,
               attempt, status, normalized_request->>'integration_type' AS integration_type,
               extract(epoch FROM completed_at)::float8 AS completed_at
          FROM request_logs WHERE request_id = $1 AND tenant_id = $2
        """,
        request_id,
        tenant_id,
    )
