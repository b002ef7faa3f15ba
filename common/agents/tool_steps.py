"""`tool_steps`: the checkpoint of every tool call an agent makes (migration 0008), for workers and the API."""

from __future__ import annotations

from typing import Any

import asyncpg

_COLUMNS = "call_id, step, position, tool, arguments, reply, status, output, error, attempt, started_at, finished_at"


async def load(db: asyncpg.Pool, request_id: str) -> list[asyncpg.Record]:
    """The request's calls in the order the model asked for them."""
    rows: list[asyncpg.Record] = await db.fetch(
        f"SELECT {_COLUMNS} FROM tool_steps WHERE request_id = $1 ORDER BY step, position", request_id
    )
    return rows


async def of_requests(db: asyncpg.Pool, request_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The public steps of each of these requests that has any, each in the order the model asked."""
    rows = await db.fetch(
        f"SELECT request_id::text, {_COLUMNS} FROM tool_steps WHERE request_id = ANY($1::uuid[])"
        " ORDER BY request_id, step, position",
        request_ids,
    )
    steps: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        steps.setdefault(row["request_id"], []).append(public(row))
    return steps


async def begin(
    db: asyncpg.Pool,
    request_id: str,
    attempt: int,
    step: int,
    reply: str,
    calls: list[tuple[str, str, dict[str, Any]]],
    awaiting: frozenset[str] = frozenset(),
) -> None:
    """Record calls (call_id, tool, arguments) as running before they start, or as `awaiting` a person's
    approval; a call begun again (an idempotent or approved one) takes the new attempt."""
    await db.executemany(
        "INSERT INTO tool_steps (request_id, call_id, step, position, tool, arguments, reply, status, attempt)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $8)"
        " ON CONFLICT (request_id, call_id) DO UPDATE SET status = EXCLUDED.status, attempt = EXCLUDED.attempt,"
        " output = NULL, error = NULL, started_at = clock_timestamp(), finished_at = NULL",
        [
            (
                request_id,
                call_id,
                step,
                i,
                tool,
                arguments,
                reply,
                attempt,
                "awaiting" if call_id in awaiting else "running",
            )
            for i, (call_id, tool, arguments) in enumerate(calls)
        ],
    )


async def decide(conn: asyncpg.Connection, request_id: str, call_id: str, approve: bool, reason: str) -> bool:
    """A person's decision on a call awaiting approval (the reason of a denial is kept as its error)."""
    status = await conn.execute(
        "UPDATE tool_steps SET status = $3, error = $4 WHERE request_id = $1 AND call_id = $2 AND status = 'awaiting'",
        request_id,
        call_id,
        "approved" if approve else "denied",
        reason or None,
    )
    return bool(status.endswith(" 1"))


async def status(conn: asyncpg.Connection, request_id: str, call_id: str) -> str | None:
    """Where a call of the request stands (None: the request has no such call)."""
    found: str | None = await conn.fetchval(
        "SELECT status FROM tool_steps WHERE request_id = $1 AND call_id = $2", request_id, call_id
    )
    return found


async def decided(db: asyncpg.Pool, request_id: str) -> bool:
    """Whether the request has approval decisions its next attempt acts on."""
    return bool(
        await db.fetchval(
            "SELECT 1 FROM tool_steps WHERE request_id = $1 AND status IN ('approved', 'denied') LIMIT 1", request_id
        )
    )


async def finish(
    db: asyncpg.Pool, request_id: str, attempt: int, call_id: str, ok: bool, output: str, error: str | None
) -> bool:
    """Checkpoint a finished call; False when a newer attempt owns it now."""
    status = await db.execute(
        "UPDATE tool_steps SET status = $4, output = $5, error = $6, finished_at = clock_timestamp()"
        " WHERE request_id = $1 AND call_id = $2 AND attempt = $3",
        request_id,
        call_id,
        attempt,
        "ok" if ok else "error",
        output,
        error,
    )
    return bool(status.endswith(" 1"))


def public(row: asyncpg.Record) -> dict[str, Any]:
    """A step as the API shows it (a request, a session's history, a `stream.reset`)."""
    started, finished = row["started_at"], row["finished_at"]
    return {
        "call_id": row["call_id"],
        "step": row["step"],
        "tool": row["tool"],
        "arguments": row["arguments"],
        "status": row["status"],
        "output": row["output"],
        "error": row["error"],
        "attempt": row["attempt"],
        "started_at": started,
        "finished_at": finished,
        "duration_ms": int((finished - started).total_seconds() * 1000) if finished else None,
    }
