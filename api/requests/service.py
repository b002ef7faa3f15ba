"""Accepting, looking up and cancelling requests: one transaction, then the queue."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from api.deps import Gateway
from api.errors import ApiError
from api.requests.schemas import _RequestBody
from api.sessions.service import REQUEST_COLUMNS, parse_uuid
from common import lifecycle, queue, sink
from common.auth import Principal
from common.keys import cancel_key
from common.models import ACTIVE_STATUSES, JobPayload, NormalizedRequest
from common.streams import Event, ended

log = logging.getLogger(__name__)


@dataclass
class Accepted:
    request_id: str
    session_id: str
    status: str
    stream_entry_id: str | None
    replayed: bool = False


def body_hash(body: _RequestBody) -> str:
    return hashlib.sha256(orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


async def _session_for(
    conn: asyncpg.Connection, who: Principal, user_id: str, body: _RequestBody
) -> str | None:
    """The existing session this request joins, locked for the rest of the transaction.

    None means the request starts a new session (created with the request row).
    """
    if body.session_id:
        sid = parse_uuid(body.session_id)
        row = sid and await conn.fetchrow(
            "SELECT session_id::text, status FROM request_sessions"
            " WHERE session_id = $1 AND tenant_id = $2 AND user_id = $3 FOR UPDATE",
            sid, who.tenant_id, user_id,
        )
        if not row:
            raise ApiError(404, "session not found")
        if row["status"] != "active":
            raise ApiError(409, f"session is {row['status']}; start a new one")
        return str(row["session_id"])
    if body.new_session:
        return None
    found: str | None = await conn.fetchval(
        "SELECT session_id::text FROM request_sessions"
        " WHERE tenant_id = $1 AND user_id = $2 AND integration_type = $3 AND status = 'active'"
        "   AND external_session_id IS NULL"
        " ORDER BY updated_at DESC LIMIT 1 FOR UPDATE",
        who.tenant_id, user_id, body.integration(),
    )
    return found


async def _replay(conn: asyncpg.Connection | asyncpg.Pool, who: Principal, user_id: str, key: str,
                  digest: str) -> Accepted | None:
    row = await conn.fetchrow(
        "SELECT request_id::text, session_id::text, status, stream_entry_id, body_hash FROM request_logs"
        " WHERE tenant_id = $1 AND user_id = $2 AND idempotency_key = $3",
        who.tenant_id, user_id, key,
    )
    if row is None:
        return None
    if row["body_hash"] != digest:
        raise ApiError(409, "Idempotency-Key was already used with a different request body")
    return Accepted(row["request_id"], row["session_id"], row["status"], row["stream_entry_id"], replayed=True)


async def accept(
    gw: Gateway, who: Principal, body: _RequestBody, *, idempotency_key: str | None, correlation_id: str
) -> Accepted:
    user_id = body.user_id or who.user_id
    if not who.may_act_for(user_id):
        raise ApiError(403, "this credential may not send requests for another user")
    try:
        agent = gw.agents.route(body.content, body.integration(), body.agent_id)
    except KeyError:
        raise ApiError(422, f"unknown agent_id {body.agent_id!r}") from None
    digest = body_hash(body)
    if idempotency_key:
        replay = await _replay(gw.db, who, user_id, idempotency_key, digest)
        if replay:
            return replay
    try:
        return await _accept_new(gw, who, user_id, body, agent.id, agent.feature, idempotency_key, digest,
                                 correlation_id)
    except asyncpg.UniqueViolationError:
        # A concurrent request with the same Idempotency-Key won the race.
        replay = await _replay(gw.db, who, user_id, idempotency_key or "", digest)
        if replay is None:
            raise
        return replay


_INSERT_REQUEST = """
    WITH request AS (
        INSERT INTO request_logs (request_id, session_id, tenant_id, user_id, request_type, request_content,
            normalized_request, agent_id, feature, idempotency_key, body_hash, correlation_id, stream_entry_id,
            deadline_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now() + make_interval(secs => $14)))
"""
# The session row goes with the request row, in one statement either way.
_INTO_SESSION = _INSERT_REQUEST + """
    UPDATE request_sessions
       SET last_request_id = $1, last_request_at = now(), updated_at = now(),
           total_requests = total_requests + 1, expires_at = now() + make_interval(secs => $15)
     WHERE session_id = $2
"""
_WITH_NEW_SESSION = _INSERT_REQUEST + """
    INSERT INTO request_sessions (session_id, tenant_id, user_id, integration_type, expires_at,
                                  last_request_id, last_request_at, total_requests)
    VALUES ($2, $3, $4, $5, now() + make_interval(secs => $15), $1, now(), 1)
"""


async def _accept_new(
    gw: Gateway, who: Principal, user_id: str, body: _RequestBody, agent_id: str, feature: str,
    idempotency_key: str | None, digest: str, correlation_id: str,
) -> Accepted:
    request_id = str(uuid.uuid4())
    cancelled: list[asyncpg.Record] = []
    interrupted: list[str] = []
    entry_id: str | None = None
    upcoming: tuple[str, JobPayload] | None = None
    session_id = ""
    new_session = False

    async def record(conn: asyncpg.Connection, existing: str | None) -> None:
        """Announce the request on its stream, then store it (and a new session) in one statement.

        The stream entry comes first so its id is stored with the row: if Redis is down,
        nothing is stored and the client gets 503.
        """
        nonlocal entry_id, session_id, new_session
        session_id, new_session = existing or str(uuid.uuid4()), existing is None
        normalized = NormalizedRequest(
            request_id=request_id, session_id=session_id, tenant_id=who.tenant_id, user_id=user_id,
            integration_type=body.integration(), request_type=body.integration(), content=body.content,
            agent_id=body.agent_id or agent_id, feature=feature, integration_context=body.integration_context(),
            metadata=body.metadata.model_dump(), correlation_id=correlation_id,
        )
        accepted_event = Event(
            type="request.accepted", request_id=request_id,
            data={"content": body.content, "session_id": session_id, "user_id": user_id,
                  "integration_type": body.integration(), "agent_id": normalized.agent_id,
                  "correlation_id": correlation_id},
        )
        (entry_id,) = await gw.writer.append(session_id, [accepted_event])
        await conn.execute(
            _INTO_SESSION if existing else _WITH_NEW_SESSION,
            request_id, session_id, who.tenant_id, user_id, normalized.request_type, body.content,
            normalized.model_dump(), normalized.agent_id, feature, idempotency_key, digest, correlation_id,
            entry_id, gw.settings.request_timeout_seconds, gw.settings.session_ttl_seconds,
        )

    try:
        async with gw.db.acquire() as conn:
            if body.new_session and not body.session_id:
                # Nothing runs in a session nobody has seen yet: no lock, no transaction needed.
                await record(conn, None)
                active: list[asyncpg.Record] = []
            else:
                async with conn.transaction():
                    existing = await _session_for(conn, who, user_id, body)
                    active = await conn.fetch(
                        "SELECT request_id::text, status FROM request_logs"
                        " WHERE session_id = $1 AND status = ANY($2::text[]) ORDER BY id",
                        existing, list(ACTIVE_STATUSES),
                    ) if existing else []
                    if active and body.multitask == "reject":
                        raise ApiError(409, "another request is still running in this session (multitask=reject)")
                    await record(conn, existing)
                    if body.multitask == "interrupt" and active:
                        cancelled, upcoming = await lifecycle.cancel_queued(
                            conn, session_id, [r["request_id"] for r in active if r["status"] == "queued"],
                            "interrupted by a newer request",
                        )
                        interrupted = [r["request_id"] for r in active if r["status"] == "running"]
            if not active:
                upcoming = feature, JobPayload(request_id=request_id, session_id=session_id,
                                               tenant_id=who.tenant_id, correlation_id=correlation_id)
    except BaseException:
        if entry_id is not None:
            # The stream already announced the request: end it there too, as the row was not kept.
            with contextlib.suppress(Exception):
                await gw.writer.append(session_id, ended(request_id, 1, "failed",
                                                         {"error": "the request was not stored"}))
        raise

    for request in interrupted:
        await gw.streams.set(cancel_key(session_id, request, gw.settings.stream_buckets), "interrupted",
                             ex=gw.settings.request_timeout_seconds)
    await announce_cancelled(gw, session_id, cancelled, "interrupted by a newer request")
    await enqueue_safely(gw, upcoming)
    if new_session:
        sink.emit("session.created", session_id, {"user_id": user_id}, tenant_id=who.tenant_id,
                  correlation_id=correlation_id)
    sink.emit("request.accepted", request_id, {"session_id": session_id, "agent_id": agent_id}, tenant_id=who.tenant_id,
              correlation_id=correlation_id)
    return Accepted(request_id, session_id, "queued", entry_id)


async def announce_cancelled(gw: Gateway, session_id: str, rows: list[asyncpg.Record], reason: str) -> None:
    for row in rows:
        await gw.writer.append(session_id, ended(row["request_id"], row["attempt"], "cancelled", {"reason": reason}))


async def enqueue_safely(gw: Gateway, upcoming: tuple[str, JobPayload] | None) -> None:
    """The request is durable in Postgres; if the queue is down, workers' sweep queues it later."""
    if upcoming is None:
        return
    feature, payload = upcoming
    try:
        await queue.enqueue(gw.queue, feature, payload)
    except Exception as exc:
        log.warning("enqueue failed; the stalled-request sweep will retry",
                    extra={"request_id": payload.request_id, "error": repr(exc)})


async def get(gw: Gateway, who: Principal, request_id: str) -> dict[str, Any]:
    rid = parse_uuid(request_id)
    row = rid and await gw.db.fetchrow(
        f"SELECT {REQUEST_COLUMNS} FROM request_logs r WHERE r.request_id = $1 AND r.tenant_id = $2"
        " AND r.user_id = $3",
        rid, who.tenant_id, who.user_id,
    )
    if not row:
        raise ApiError(404, "request not found")
    return dict(row)


async def cancel(gw: Gateway, who: Principal, request_id: str, reason: str = "cancelled by user") -> str:
    """Flag the request for its worker and cancel it outright if it has not started."""
    row = await get(gw, who, request_id)
    if row["status"] not in ACTIVE_STATUSES:
        raise ApiError(409, f"request already {row['status']}")
    await cancel_many(gw, row["session_id"], [request_id], reason)
    return "cancelling"


async def cancel_many(gw: Gateway, session_id: str, request_ids: list[str], reason: str) -> None:
    for request_id in request_ids:
        await gw.streams.set(cancel_key(session_id, request_id, gw.settings.stream_buckets), reason,
                             ex=gw.settings.request_timeout_seconds)
    async with gw.db.acquire() as conn, conn.transaction():
        await lifecycle.lock_session(conn, session_id)
        cancelled, upcoming = await lifecycle.cancel_queued(conn, session_id, request_ids, reason)
    await announce_cancelled(gw, session_id, cancelled, reason)
    await enqueue_safely(gw, upcoming)
