"""`request_sessions` SQL. Every query that a caller names is scoped to its tenant and user."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any, TypeAlias

import asyncpg

from common.platform.batching import Batcher
from common.platform.credentials import Principal
from common.platform.db import batcher
from common.platform.ids import parse_uuid

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

_COLUMNS = """
s.session_id::text, s.user_id, s.integration_type, s.status, s.channel_id, s.thread_id, s.external_session_id,
s.current_agent_id, s.integration_metadata, s.user_context, s.conversation_context, s.total_requests,
s.last_request_id::text, s.last_request_at, s.expires_at, s.created_at, s.updated_at,
(SELECT left(r.request_content, 80) FROM request_logs r WHERE r.session_id = s.session_id ORDER BY r.id LIMIT 1)
    AS title
"""


async def create(
    conn: Conn, who: Principal, user_id: str, values: dict[str, Any], ttl_seconds: int, session_id: str | None = None
) -> dict[str, Any]:
    """A new session; `session_id` (a UUID) is the caller's choice of id, else a random one."""
    row = await conn.fetchrow(
        f"""
        WITH s AS (
            INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, channel_id, thread_id,
                external_session_id, user_context, integration_metadata, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))
            RETURNING *)
        SELECT {_COLUMNS} FROM s
        """,
        session_id or uuid.uuid4(),
        who.tenant_id,
        user_id,
        values["integration_type"],
        values.get("channel_id"),
        values.get("thread_id"),
        values.get("external_session_id"),
        values.get("user_context") or {},
        values.get("integration_metadata") or {},
        ttl_seconds,
    )
    assert row is not None
    return dict(row)


async def ensure(conn: Conn, who: Principal, session_id: str, integration: str, ttl_seconds: int) -> None:
    """Create the session `session_id` for `who` unless it exists (a flow run's session, at its first agent task)."""
    await conn.execute(
        "INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, expires_at)"
        " VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) ON CONFLICT (session_id) DO NOTHING",
        session_id,
        who.tenant_id,
        who.user_id,
        integration,
        ttl_seconds,
    )


async def for_external_id(db: asyncpg.Pool, who: Principal, external_id: str, ttl_seconds: int) -> tuple[str, bool]:
    """The caller's active `generic` session named `external_id`, created when none is (race-free),
    and whether this call created it. Concurrent calls share one statement.

    The unique index covers active sessions only: once the session ends or expires, the name
    starts a new one.
    """
    find = batcher(
        db,
        "sessions.for_external_id",
        lambda name: Batcher(partial(_named_many, db), partial(_named_one, db), name=name, key=_name_key),
    )
    return await find((who.tenant_id, who.user_id, external_id, ttl_seconds))


_Named: TypeAlias = tuple[str, str, str, int]  # tenant_id, user_id, external_id, ttl_seconds


def _name_key(named: _Named) -> tuple[str, str, str]:
    return named[:3]


async def _named_one(conn: Conn, named: _Named) -> tuple[str, bool]:
    for _ in range(2):
        try:
            return (await _named_many(conn, [named]))[0]
        except LookupError:
            continue  # the session that conflicted was committed after the statement's snapshot: look again
    raise RuntimeError(f"session {named[2]!r} neither created nor found")


async def _named_many(conn: Conn, batch: list[_Named]) -> list[tuple[str, bool]]:
    """The sessions of distinct names in one statement. A name it neither creates nor finds (a conflicting
    session committed after the statement's snapshot) raises LookupError; in a batch, each name then runs
    alone and finds its session (`created` False, the cautious answer, for one the failed batch made)."""
    tenants, users, names, ttls = (list(column) for column in zip(*batch, strict=True))
    rows = await conn.fetch(
        """
        WITH v AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[]) WITH ORDINALITY
                AS v(tenant_id, user_id, external_id, ttl_s, n)),
        ins AS (
            INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, external_session_id,
                                          expires_at)
            SELECT gen_random_uuid(), tenant_id, user_id, 'generic', external_id, now() + make_interval(secs => ttl_s)
              FROM v
            ON CONFLICT DO NOTHING RETURNING session_id, tenant_id, user_id, external_session_id)
        SELECT coalesce(ins.session_id, s.session_id)::text AS session_id, ins.session_id IS NOT NULL AS created
          FROM v
          LEFT JOIN ins ON ins.tenant_id = v.tenant_id AND ins.user_id = v.user_id
                       AND ins.external_session_id = v.external_id
          LEFT JOIN request_sessions s ON ins.session_id IS NULL AND s.tenant_id = v.tenant_id
                       AND s.user_id = v.user_id AND s.integration_type = 'generic'
                       AND s.external_session_id = v.external_id AND s.status = 'active'
         ORDER BY v.n
        """,
        tenants,
        users,
        names,
        ttls,
    )
    if len(rows) != len(batch) or any(row["session_id"] is None for row in rows):
        raise LookupError("a session was neither created nor found")
    return [(row["session_id"], row["created"]) for row in rows]


async def get(conn: Conn, who: Principal, session_id: str) -> dict[str, Any] | None:
    sid = parse_uuid(session_id)
    if sid is None:
        return None
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM request_sessions s WHERE s.session_id = $1 AND s.tenant_id = $2 AND s.user_id = $3",
        sid,
        who.tenant_id,
        who.user_id,
    )
    return dict(row) if row else None


async def list_for(conn: Conn, who: Principal, limit: int, offset: int, status: str | None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM request_sessions s
         WHERE s.tenant_id = $1 AND s.user_id = $2 AND ($5::text IS NULL OR s.status = $5)
         ORDER BY s.updated_at DESC, s.id DESC LIMIT $3 OFFSET $4
        """,
        who.tenant_id,
        who.user_id,
        limit,
        offset,
        status,
    )
    return [dict(r) for r in rows]


async def lock_owned(conn: asyncpg.Connection, tenant_id: str, user_id: str, session_id: str) -> asyncpg.Record | None:
    """(session_id, status) of the user's session, locked for the rest of the transaction."""
    sid = parse_uuid(session_id)
    if sid is None:
        return None
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT session_id::text, status FROM request_sessions"
        " WHERE session_id = $1 AND tenant_id = $2 AND user_id = $3 FOR UPDATE",
        sid,
        tenant_id,
        user_id,
    )
    return row


async def lock_latest_active(conn: asyncpg.Connection, tenant_id: str, user_id: str, integration: str) -> str | None:
    """The user's most recent active session of this integration (not a named one), locked."""
    found: str | None = await conn.fetchval(
        "SELECT session_id::text FROM request_sessions"
        " WHERE tenant_id = $1 AND user_id = $2 AND integration_type = $3 AND status = 'active'"
        "   AND external_session_id IS NULL"
        " ORDER BY updated_at DESC LIMIT 1 FOR UPDATE",
        tenant_id,
        user_id,
        integration,
    )
    return found


async def mark_inactive(conn: Conn, who: Principal, session_id: str) -> None:
    await conn.execute(
        "UPDATE request_sessions SET status = 'inactive', updated_at = now()"
        " WHERE session_id = $1 AND tenant_id = $2 AND user_id = $3",
        session_id,
        who.tenant_id,
        who.user_id,
    )


# A session's state as a LangGraph thread: busy while a request is unfinished, error when its last one failed.
_THREAD_STATUS = """
CASE WHEN EXISTS (SELECT 1 FROM request_logs r
                   WHERE r.session_id = s.session_id AND r.status IN ('queued','running','waiting'))
     THEN 'busy'
     WHEN (SELECT r.status FROM request_logs r WHERE r.session_id = s.session_id ORDER BY r.id DESC LIMIT 1) = 'failed'
     THEN 'error'
     ELSE 'idle' END
"""
_THREAD_SORT = {
    "thread_id": "session_id",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "status": "thread_status",
}


async def search_threads(
    conn: Conn,
    who: Principal,
    *,
    metadata: dict[str, Any],
    status: str | None,
    ids: list[str] | None,
    sort_by: str,
    descending: bool,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """The caller's sessions that are not archived, as threads: `integration_metadata` holds `metadata`."""
    order = _THREAD_SORT[sort_by]
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            SELECT {_COLUMNS}, {_THREAD_STATUS} AS thread_status, s.id FROM request_sessions s
             WHERE s.tenant_id = $1 AND s.user_id = $2 AND s.status <> 'archived'
               AND s.integration_metadata @> $3::jsonb
               AND ($4::uuid[] IS NULL OR s.session_id = ANY($4::uuid[]))) t
         WHERE ($5::text IS NULL OR t.thread_status = $5)
         ORDER BY t.{order} {"DESC" if descending else "ASC"}, t.id {"DESC" if descending else "ASC"}
         LIMIT $6 OFFSET $7
        """,
        who.tenant_id,
        who.user_id,
        metadata,
        ids,
        status,
        limit,
        offset,
    )
    return [{k: v for k, v in dict(r).items() if k != "id"} for r in rows]


async def tag_graph(conn: Conn, session_id: str, agent_id: str) -> None:
    """Name the agent in a session's metadata the first time it runs there, as LangGraph does for a thread's graph."""
    await conn.execute(
        "UPDATE request_sessions"
        "   SET integration_metadata = jsonb_build_object('graph_id', $2::text, 'assistant_id', $2::text)"
        "       || integration_metadata"
        " WHERE session_id = $1 AND NOT integration_metadata ? 'graph_id'",
        session_id,
        agent_id,
    )


async def mark_archived(conn: Conn, who: Principal, session_id: str) -> None:
    await conn.execute(
        "UPDATE request_sessions SET status = 'archived', updated_at = now()"
        " WHERE session_id = $1 AND tenant_id = $2 AND user_id = $3",
        session_id,
        who.tenant_id,
        who.user_id,
    )


async def find_external_id(conn: Conn, who: Principal, external_id: str) -> str | None:
    """The caller's active session named `external_id` (see `for_external_id`), without creating one."""
    found: str | None = await conn.fetchval(
        "SELECT session_id::text FROM request_sessions WHERE tenant_id = $1 AND user_id = $2"
        " AND integration_type = 'generic' AND external_session_id = $3 AND status = 'active'",
        who.tenant_id,
        who.user_id,
        external_id,
    )
    return found
