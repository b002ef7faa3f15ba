"""The request state machine in Postgres, shared by gateway and workers.

queued -> running -> completed | failed | cancelled; running -> waiting -> queued while an agent's tool
call waits for a person's approval (no worker holds it; the deadline is the approval's expiry). A
waiting request still heads its session. A session runs one request at a
time, oldest first; every transition that can free a session returns the request that
should be queued next. Transitions are conditional updates, so a late write from a lost
attempt never overwrites a newer attempt or a terminal state.

Every transition to a terminal state sets `done_pending` and returns the row's ENDED columns:
whoever ended it then writes the closing events (common.requests.ending) and clears the flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg

from common.platform.batching import Batcher
from common.platform.db import batcher
from common.platform.presence import UNLOCKED
from common.requests.models import JobPayload
from common.usage.models import Usage, of_row

# What common.requests.ending needs of a terminal row to write its closing events.
ENDED = (
    "request_id::text, session_id::text, attempt, status, response_content, error, agent_id, "
    "processing_time_ms, input_tokens, output_tokens, cost_usd, usage_estimated"
)

# Ends an attempt no worker finished (lost, or past the deadline): what its heartbeat last stored counts, estimated.
_ADD_LOST_ATTEMPT = (
    "input_tokens = input_tokens + attempt_input_tokens, output_tokens = output_tokens"
    " + attempt_output_tokens, cost_usd = cost_usd + attempt_cost_usd, usage_estimated ="
    " usage_estimated OR attempt_input_tokens + attempt_output_tokens > 0, attempt_input_tokens = 0,"
    " attempt_output_tokens = 0, attempt_cost_usd = 0"
)
# The rows a reaper takes, with what their lost attempt used before `_ADD_LOST_ATTEMPT` adds it (LOST
# returns it, with whose budgets it counts against).
_LOST_COLUMNS = (
    "id, attempt_input_tokens AS lost_input_tokens, attempt_output_tokens AS lost_output_tokens,"
    " attempt_cost_usd AS lost_cost_usd"
)
_TAKE_LOST = f"SELECT {_LOST_COLUMNS} FROM request_logs"
LOST = "tenant_id, user_id, correlation_id, lost_input_tokens, lost_output_tokens, lost_cost_usd"
# A worker ends its own attempt with what it measured: the heartbeat's estimate is dropped.
_DROP_ESTIMATE = "attempt_input_tokens = 0, attempt_output_tokens = 0, attempt_cost_usd = 0"

# The head of each of the sessions $1: its oldest request not yet ended.
_HEADS = """
SELECT DISTINCT ON (session_id)
       request_id::text, session_id::text, tenant_id, attempt, status, feature, correlation_id
  FROM request_logs WHERE session_id = ANY($1::uuid[]) AND status IN ('queued', 'running', 'waiting')
 ORDER BY session_id, id
"""


# What a worker needs of the row it ended, read by the ending statement itself: the request's usage
# and user, and whether its reply awaits delivery (no second query per request).
_FINISHED = """
input_tokens, output_tokens, cost_usd, usage_estimated, user_id,
normalized_request->>'integration_type' AS integration_type, delivery_pending
"""
# Set with a completed ending, in the same statement, when a channel may want the reply: the request may
# be delivered (a scheduled run without `deliver` may not) and its user has delivery settings of their
# own, or the defaults deliver alone ($12, per ending). The dispatcher clears it (dispatcher/repair.py).
_DELIVERY_PENDING = """
v.new_status = 'completed'
AND coalesce(request_logs.normalized_request->'integration_context'->>'deliver', 'true') <> 'false'
AND (v.defaults_deliver OR EXISTS (
      SELECT 1 FROM user_integration_configs u
       WHERE u.tenant_id = request_logs.tenant_id AND u.user_id = request_logs.user_id AND u.enabled))
"""


@dataclass(frozen=True)
class Finished:
    """A request its worker ended: its total usage, its user, and whether its reply awaits delivery."""

    usage: Usage
    user_id: str
    integration_type: str
    delivery_pending: bool

    @classmethod
    def of(cls, row: asyncpg.Record) -> Finished:
        return cls(of_row(row), row["user_id"], row["integration_type"] or "", row["delivery_pending"])


def job_for(row: asyncpg.Record) -> tuple[str, JobPayload]:
    """(feature, job) of a request row carrying the job's columns."""
    return row["feature"], JobPayload(
        request_id=row["request_id"],
        session_id=row["session_id"],
        tenant_id=row["tenant_id"],
        attempt=row["attempt"],
        correlation_id=row["correlation_id"] or "",
    )


async def lock_session(conn: asyncpg.Connection, session_id: str) -> None:
    await conn.execute("SELECT 1 FROM request_sessions WHERE session_id = $1 FOR UPDATE", session_id)


async def lock_sessions(conn: asyncpg.Connection, session_ids: set[str]) -> None:
    """Lock many sessions for the rest of the transaction, in a fixed order so two such calls never deadlock."""
    await conn.execute(
        "SELECT 1 FROM request_sessions WHERE session_id = ANY($1::uuid[]) ORDER BY session_id FOR UPDATE",
        sorted(session_ids),
    )


async def next_in_session(conn: asyncpg.Connection, session_id: str) -> tuple[str, JobPayload] | None:
    """The queued head of the session when nothing runs there (caller holds the session lock)."""
    row = await conn.fetchrow(_HEADS, [session_id])
    if row is None or row["status"] != "queued":
        return None
    return job_for(row)


async def claim_many(
    conn: asyncpg.Connection, payloads: list[JobPayload], lease_seconds: float, holder: int | None = None
) -> dict[str, asyncpg.Record]:
    """Start the attempts that are still current and head their session, in the caller's
    transaction: their rows by request id (an attempt left out has nothing to do). `holder` is the
    claiming process's presence key (common/platform/presence.py).

    The sessions are locked first (in a fixed order, so two batches never deadlock), then one
    statement, with a snapshot taken after the locks, starts every job that heads its session.
    """
    if not payloads:
        return {}
    sessions = {p.session_id for p in payloads}
    await lock_sessions(conn, sessions)
    rows = await conn.fetch(
        """
        WITH heads AS (
            SELECT DISTINCT ON (session_id) request_id FROM request_logs
             WHERE session_id = ANY($3::uuid[]) AND status IN ('queued', 'running', 'waiting')
             ORDER BY session_id, id)
        UPDATE request_logs r
           SET status = 'running', lease_expires_at = now() + make_interval(secs => $4), lease_holder = $5,
               started_at = coalesce(started_at, now()), updated_at = now()
          FROM unnest($1::uuid[], $2::int[]) AS v(request_id, attempt)
         WHERE r.request_id = v.request_id AND r.attempt = v.attempt AND r.status = 'queued'
           AND r.request_id IN (SELECT request_id FROM heads)
        RETURNING r.*
        """,
        [p.request_id for p in payloads],
        [p.attempt for p in payloads],
        list(sessions),
        lease_seconds,
        holder,
    )
    return {str(row["request_id"]): row for row in rows}


Ended = tuple[Finished | None, tuple[str, JobPayload] | None]


@dataclass(frozen=True)
class _Ending:
    payload: JobPayload
    status: str
    response: str | None
    error: str | None
    agent_id: str | None
    metadata: dict[str, Any]
    usage: Usage
    defaults_deliver: bool = False


async def finish(
    db: asyncpg.Pool,
    payload: JobPayload,
    *,
    status: str,
    response: str | None = None,
    error: str | None = None,
    agent_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    usage: Usage | None = None,
    defaults_deliver: bool = False,
) -> Ended:
    """End a running attempt, adding its usage to the request's (the daily rollup follows, by trigger).
    `defaults_deliver`: the system defaults deliver a reply alone (common.delivery.configs.defaults_deliver_alone).

    Returns (the ended request, or None when the attempt no longer held it; the next request of the
    session to queue). Concurrent endings of different sessions share one transaction and one commit.
    """
    ending = _Ending(payload, status, response, error, agent_id, metadata or {}, usage or Usage(), defaults_deliver)
    return await batcher(
        db,
        "requests.finish",
        lambda name: Batcher(
            partial(_finish_many, db), partial(_finish_one, db), name=name, key=lambda e: e.payload.session_id
        ),
    )(ending)


async def _finish_one(db: asyncpg.Pool, e: _Ending) -> Ended:
    return (await _finish_many(db, [e]))[0]


async def _finish_many(db: asyncpg.Pool, endings: list[_Ending]) -> list[Ended]:
    """End the attempts of distinct sessions in one transaction: the sessions are locked (`lock_sessions`, as
    the claims lock them), one statement ends every attempt still running, and one query reads each
    ended session's next head (it sees the endings: an earlier statement of the transaction).

    The statement locks its rows in `id` order, as the heartbeat does: two statements that lock many
    running rows each in its plan's order can each hold a row the other waits for (a deadlock)."""
    async with db.acquire() as conn, conn.transaction():
        await lock_sessions(conn, {e.payload.session_id for e in endings})
        rows = await conn.fetch(
            f"""
            WITH v AS (
              SELECT r.id, v.* FROM request_logs r
                JOIN unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                            $8::bigint[], $9::bigint[], $10::numeric[], $11::bool[], $12::bool[])
                  AS v(rid, att, new_status, response, err, agent, meta, input_add, output_add, cost_add, estimated,
                       defaults_deliver)
                  ON r.request_id = v.rid AND r.attempt = v.att
               WHERE r.status = 'running' ORDER BY r.id FOR UPDATE OF r
            )
            UPDATE request_logs
               SET status = v.new_status, response_content = coalesce(v.response, response_content), error = v.err,
                   agent_id = coalesce(v.agent, agent_id), response_metadata = response_metadata || v.meta,
                   processing_time_ms = (extract(epoch FROM clock_timestamp() - started_at) * 1000)::int,
                   completed_at = now(), updated_at = now(), lease_expires_at = NULL, done_pending = true,
                   input_tokens = input_tokens + v.input_add, output_tokens = output_tokens + v.output_add,
                   cost_usd = cost_usd + v.cost_add, usage_estimated = usage_estimated OR v.estimated, {_DROP_ESTIMATE},
                   delivery_pending = {_DELIVERY_PENDING}
              FROM v WHERE request_logs.id = v.id
            RETURNING request_logs.request_id::text AS ended_id, {_FINISHED}
            """,
            [e.payload.request_id for e in endings],
            [e.payload.attempt for e in endings],
            [e.status for e in endings],
            [e.response for e in endings],
            [e.error for e in endings],
            [e.agent_id for e in endings],
            [e.metadata for e in endings],
            [e.usage.input_tokens for e in endings],
            [e.usage.output_tokens for e in endings],
            [e.usage.cost_usd for e in endings],
            [e.usage.estimated for e in endings],
            [e.defaults_deliver for e in endings],
        )
        ended = {row["ended_id"]: row for row in rows}
        held = [e for e in endings if e.payload.request_id in ended]
        if not held:  # every attempt was fenced: nothing to touch, no head to read
            return [(None, None)] * len(endings)
        heads = await conn.fetch(
            f"""
            WITH touched AS (
              UPDATE request_sessions s
                 SET current_agent_id = coalesce(v.agent, s.current_agent_id), updated_at = now()
                FROM unnest($1::uuid[], $2::text[]) AS v(sid, agent) WHERE s.session_id = v.sid
            )
            {_HEADS}
            """,
            [e.payload.session_id for e in held],
            [e.agent_id for e in held],
        )
    head_of = {row["session_id"]: row for row in heads}
    results: list[Ended] = []
    for e in endings:
        row = ended.get(e.payload.request_id)
        head = head_of.get(e.payload.session_id)
        if row is None:
            results.append((None, None))
        else:
            results.append(
                (Finished.of(row), job_for(head) if head is not None and head["status"] == "queued" else None)
            )
    return results


async def ended_as(db: asyncpg.Pool, payload: JobPayload, status: str) -> Finished | None:
    """The ended request if this attempt already ended with `status` (a `finish` whose reply was lost
    did apply), else None."""
    row = await db.fetchrow(
        f"SELECT {_FINISHED} FROM request_logs WHERE request_id = $1 AND attempt = $2 AND status = $3",
        payload.request_id,
        payload.attempt,
        status,
    )
    return Finished.of(row) if row is not None else None


async def cancel_queued(
    conn: asyncpg.Connection, session_id: str, request_ids: list[str], reason: str
) -> tuple[list[asyncpg.Record], tuple[str, JobPayload] | None]:
    """Cancel requests no worker holds: not started, or waiting for an approval (caller holds the session lock)."""
    rows = await conn.fetch(
        f"""
        UPDATE request_logs SET status = 'cancelled', error = $2, completed_at = now(), updated_at = now(),
               done_pending = true
         WHERE request_id = ANY($1::uuid[]) AND status IN ('queued', 'waiting')
        RETURNING {ENDED}
        """,
        request_ids,
        reason,
    )
    return list(rows), await next_in_session(conn, session_id)


async def heartbeat(
    conn: asyncpg.Connection | asyncpg.Pool,
    leases: list[tuple[str, int, str | None, str | None, Usage, str]],
    lease_seconds: float,
) -> set[str]:
    """Extend leases, checkpoint the partial replies given (None keeps the stored one) and store each
    attempt's usage so far and its model (the usage rollup's key if the attempt is lost); returns the
    request ids still held. Rows are locked in `id` order, as a batch of endings locks them (`finish`)."""
    if not leases:
        return set()
    ids, attempts, partials, stream_ids, used, models = (list(col) for col in zip(*leases, strict=True))
    rows = await conn.fetch(
        """
        WITH v AS (
          SELECT r.id, v.* FROM request_logs r
            JOIN unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $6::bigint[], $7::bigint[], $8::float8[],
                        $9::text[]) AS v(rid, att, partial, stream_id, input_tokens, output_tokens, cost_usd, model)
              ON r.request_id = v.rid AND r.attempt = v.att
           WHERE r.status = 'running' ORDER BY r.id FOR UPDATE OF r
        )
        UPDATE request_logs r
           SET lease_expires_at = now() + make_interval(secs => $5),
               response_content = coalesce(v.partial, r.response_content),
               response_stream_id = coalesce(v.stream_id, r.response_stream_id), updated_at = now(),
               attempt_input_tokens = v.input_tokens, attempt_output_tokens = v.output_tokens,
               attempt_cost_usd = v.cost_usd,
               response_metadata = CASE WHEN v.model = '' OR r.response_metadata ->> 'model' = v.model
                                        THEN r.response_metadata
                                        ELSE r.response_metadata || jsonb_build_object('model', v.model) END
          FROM v WHERE r.id = v.id
        RETURNING r.request_id::text
        """,
        ids,
        attempts,
        partials,
        stream_ids,
        lease_seconds,
        [u.input_tokens for u in used],
        [u.output_tokens for u in used],
        [u.cost_usd for u in used],
        models,
    )
    return {r["request_id"] for r in rows}


async def release(
    db: asyncpg.Pool | asyncpg.Connection, payload: JobPayload, usage: Usage | None = None
) -> tuple[str, JobPayload] | None:
    """Give a running attempt back to the queue as the next attempt (its worker is stopping), adding
    what it used to the request's usage.

    Returns the job to enqueue, or None when the attempt no longer holds the request.
    """
    usage = usage or Usage()
    row = await db.fetchrow(
        f"""
        UPDATE request_logs SET status = 'queued', attempt = attempt + 1, lease_expires_at = NULL,
               updated_at = now(), input_tokens = input_tokens + $3, output_tokens = output_tokens + $4,
               cost_usd = cost_usd + $5, usage_estimated = usage_estimated OR $6, {_DROP_ESTIMATE}
         WHERE request_id = $1 AND attempt = $2 AND status = 'running'
        RETURNING request_id::text, session_id::text, tenant_id, attempt, feature, correlation_id
        """,
        payload.request_id,
        payload.attempt,
        usage.input_tokens,
        usage.output_tokens,
        usage.cost_usd,
        usage.estimated,
    )
    return job_for(row) if row is not None else None


async def park(
    db: asyncpg.Pool, payload: JobPayload, expires_in_seconds: float, usage: Usage | None = None
) -> tuple[bool, tuple[str, JobPayload] | None]:
    """A running attempt waits for an approval with no worker, adding what it used to the request's usage.

    Returns (True, None) once parked. If a person already decided every call it waits on (they may,
    from the call's event on, before the attempt gets here), the next attempt is queued at once instead:
    (False, its job). (False, None): the attempt no longer holds the request. Under the session's lock,
    as a decision is, so a decision lands either before the park (and is seen here) or after it (and
    queues the request itself)."""
    usage = usage or Usage()
    async with db.acquire() as conn, conn.transaction():
        await lock_session(conn, payload.session_id)
        parked = await conn.fetchval(
            f"""
            UPDATE request_logs SET status = 'waiting', lease_expires_at = NULL, updated_at = now(),
                   deadline_at = now() + make_interval(secs => $3), input_tokens = input_tokens + $4,
                   output_tokens = output_tokens + $5, cost_usd = cost_usd + $6,
                   usage_estimated = usage_estimated OR $7, {_DROP_ESTIMATE}
             WHERE request_id = $1 AND attempt = $2 AND status = 'running'
               AND EXISTS (SELECT 1 FROM tool_steps WHERE request_id = $1 AND status = 'awaiting')
            RETURNING 1
            """,
            payload.request_id,
            payload.attempt,
            expires_in_seconds,
            usage.input_tokens,
            usage.output_tokens,
            usage.cost_usd,
            usage.estimated,
        )
        if parked:
            return True, None
        return False, await release(conn, payload, usage)


async def unpark(conn: asyncpg.Connection, request_id: str, timeout_seconds: float) -> tuple[str, JobPayload] | None:
    """A waiting request whose approvals are all decided goes back to the queue as its next attempt."""
    row = await conn.fetchrow(
        """
        UPDATE request_logs SET status = 'queued', attempt = attempt + 1, updated_at = now(),
               deadline_at = now() + make_interval(secs => $2)
         WHERE request_id = $1 AND status = 'waiting'
           AND NOT EXISTS (SELECT 1 FROM tool_steps WHERE request_id = $1 AND status = 'awaiting')
        RETURNING request_id::text, session_id::text, tenant_id, attempt, feature, correlation_id
        """,
        request_id,
        timeout_seconds,
    )
    return job_for(row) if row is not None else None


async def suspects(conn: asyncpg.Connection, unrenewed_seconds: float) -> tuple[list[int], list[int]]:
    """Holders of running attempts that may be lost: (those with a lapsed lease, those with an attempt
    unrenewed for `unrenewed_seconds` within its lease and no presence lock: dead, or only cut off from
    Postgres; common.platform.presence.judge tells which)."""
    rows = await conn.fetch(
        f"""
        SELECT lease_holder, bool_or(lease_expires_at < now()) AS lapsed,
               bool_or(lease_expires_at >= now() AND {UNLOCKED}) AS unlocked
          FROM request_logs
         WHERE status = 'running' AND lease_holder IS NOT NULL
           AND (lease_expires_at < now() OR updated_at < now() - make_interval(secs => $1))
         GROUP BY lease_holder
        """,
        unrenewed_seconds,
    )
    return [r["lease_holder"] for r in rows if r["lapsed"]], [r["lease_holder"] for r in rows if r["unlocked"]]


async def reap_expired(
    conn: asyncpg.Connection,
    max_attempts: int,
    gone: list[int] | None = None,
    unrenewed_seconds: float = 0,
    spare: list[int] | None = None,
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Requeue running requests whose worker is lost, counting what the lost attempt used (estimated).
    Lost: the lease lapsed (unless its holder is one of the `spare` processes), or the attempt went
    `unrenewed_seconds` unrenewed and its holder is one of the `gone` processes (still without its lock).
    Returns (requeued, failed for too many attempts), each row with its LOST columns and `holder_gone`
    (found by its holder, before its lease lapsed)."""
    take = f"""
        SELECT {_LOST_COLUMNS}, lease_expires_at >= now() AS holder_gone FROM request_logs
         WHERE status = 'running' AND (
               (lease_expires_at < now() AND NOT coalesce(lease_holder = ANY($4::int[]), false))
            OR (lease_holder = ANY($2::int[]) AND updated_at < now() - make_interval(secs => $3) AND {UNLOCKED}))
    """
    args = (max_attempts, gone or [], unrenewed_seconds, spare or [])
    async with conn.transaction():
        requeued = await conn.fetch(
            f"""
            WITH lost AS ({take} AND attempt < $1 ORDER BY lease_expires_at LIMIT 200 FOR UPDATE SKIP LOCKED)
            UPDATE request_logs r SET status = 'queued', attempt = attempt + 1, lease_expires_at = NULL,
                   updated_at = now(), {_ADD_LOST_ATTEMPT}
              FROM lost WHERE r.id = lost.id
            RETURNING request_id::text, session_id::text, attempt, feature, lease_holder, holder_gone, {LOST}
            """,
            *args,
        )
        failed = await conn.fetch(
            f"""
            WITH lost AS ({take} AND attempt >= $1 LIMIT 200 FOR UPDATE SKIP LOCKED)
            UPDATE request_logs r SET status = 'failed', error = 'the request''s worker was lost too many times',
                   completed_at = now(), updated_at = now(), lease_expires_at = NULL, done_pending = true,
                   {_ADD_LOST_ATTEMPT}
              FROM lost WHERE r.id = lost.id
            RETURNING {ENDED}, holder_gone, {LOST}
            """,
            *args,
        )
    return list(requeued), list(failed)


async def fail_overdue(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Fail requests past their deadline, whatever state they are stuck in (a running attempt's usage so far counts:
    its worker's own ending is fenced now); each row with its LOST columns."""
    return list(
        await conn.fetch(
            f"""
            WITH lost AS ({_TAKE_LOST} WHERE status IN ('queued', 'running', 'waiting') AND deadline_at < now()
                           LIMIT 500 FOR UPDATE SKIP LOCKED)
            UPDATE request_logs r SET status = 'failed', completed_at = now(),
                   error = CASE WHEN status = 'waiting' THEN 'no decision on the tool call awaiting approval '
                                'before it expired' ELSE 'timed out' END,
                   updated_at = now(), lease_expires_at = NULL, done_pending = true, {_ADD_LOST_ATTEMPT}
              FROM lost WHERE r.id = lost.id
            RETURNING {ENDED}, {LOST}
            """
        )
    )


async def stalled_heads(conn: asyncpg.Connection, older_than_seconds: float) -> list[tuple[str, JobPayload]]:
    """Queued session heads not picked up for a while (e.g. the queue was down when they came)."""
    rows = await conn.fetch(
        """
        SELECT * FROM (
            SELECT DISTINCT ON (session_id) request_id::text, session_id::text, tenant_id, attempt,
                   status, feature, correlation_id, updated_at
              FROM request_logs WHERE status IN ('queued', 'running', 'waiting') ORDER BY session_id, id) heads
         WHERE status = 'queued' AND updated_at < now() - make_interval(secs => $1)
         LIMIT 500
        """,
        older_than_seconds,
    )
    return [job_for(r) for r in rows]


async def unqueued_retries(conn: asyncpg.Connection, older_than_seconds: float) -> list[tuple[str, JobPayload]]:
    """Requests a reaper requeued over `older_than_seconds` ago that no worker has claimed since: their job
    was lost if the reaper died before queueing it (a retried request heads its session)."""
    rows = await conn.fetch(
        """
        SELECT request_id::text, session_id::text, tenant_id, attempt, feature, correlation_id FROM request_logs
         WHERE status = 'queued' AND attempt > 1 AND updated_at < now() - make_interval(secs => $1)
         ORDER BY id LIMIT 200
        """,
        older_than_seconds,
    )
    return [job_for(r) for r in rows]


async def expire_sessions(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """End idle sessions past their expiry; returns their (session_id, tenant_id)."""
    return list(
        await conn.fetch(
            """
        UPDATE request_sessions s SET status = 'expired', updated_at = now()
         WHERE s.status = 'active' AND s.expires_at < now()
           AND NOT EXISTS (SELECT 1 FROM request_logs r
                            WHERE r.session_id = s.session_id AND r.status IN ('queued', 'running', 'waiting'))
        RETURNING session_id::text, tenant_id
        """
        )
    )


async def advance(db: asyncpg.Pool, session_id: str) -> tuple[str, JobPayload] | None:
    """What to queue next in a session after something outside a worker ended a request."""
    async with db.acquire() as conn, conn.transaction():
        await lock_session(conn, session_id)
        return await next_in_session(conn, session_id)


async def mark_ended(db: asyncpg.Pool | asyncpg.Connection, request_ids: list[str]) -> None:
    """The closing events of these requests are on their streams (and what follows is queued)."""
    await db.execute(
        "UPDATE request_logs SET done_pending = false WHERE request_id = ANY($1::uuid[]) AND done_pending", request_ids
    )


async def unended(db: asyncpg.Pool, older_than_seconds: float, limit: int = 200) -> list[asyncpg.Record]:
    """Terminal rows whose closing events were not confirmed for a while (their writer died)."""
    return list(
        await db.fetch(
            f"""
        SELECT {ENDED} FROM request_logs
         WHERE done_pending AND completed_at < now() - make_interval(secs => $1)
         ORDER BY completed_at LIMIT $2
        """,
            older_than_seconds,
            limit,
        )
    )
