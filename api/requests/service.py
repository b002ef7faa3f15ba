"""Accepting, looking up and cancelling requests: one transaction, then the queue."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from api.deps import Gateway
from api.errors import Conflict, Forbidden, Invalid, LimitExceeded, NotFound, refused
from api.requests.cancelling import cancel_many, cancel_queued, end_streams, enqueue_safely, flag_running
from api.requests.schemas import _RequestBody
from common.agents import tool_steps
from common.flows.admission import unfinished
from common.platform import sink
from common.platform.credentials import SCOPE_JOIN_SESSIONS, Principal
from common.platform.keys import intake_key
from common.requests import lifecycle
from common.requests import repository as request_repo
from common.requests.ending import closing_events
from common.requests.limits import REFUSALS, max_reply_tokens_refusal
from common.requests.models import ACTIVE_STATUSES, JobPayload, NormalizedRequest, model_options
from common.sessions import repository as session_repo
from common.streams.protocol import Event, intake_member
from common.usage import budgets
from common.usage.budgets import Budget


@dataclass
class Accepted:
    request_id: str
    session_id: str
    status: str
    stream_entry_id: str | None
    replayed: bool = False


@dataclass
class _Intake:
    """A request on its way in: what accept decided about it, and how far storing it got."""

    who: Principal
    user_id: str
    body: _RequestBody
    agent_id: str
    feature: str
    idempotency_key: str | None
    digest: str
    correlation_id: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    session_id: str = ""
    entry_id: str | None = None
    new_session: bool = False
    unseen_session: bool = False

    def normalized(self) -> NormalizedRequest:
        body = self.body
        return NormalizedRequest(
            request_id=self.request_id,
            session_id=self.session_id,
            tenant_id=self.who.tenant_id,
            user_id=self.user_id,
            integration_type=body.integration(),
            request_type=body.integration(),
            content=body.content,
            agent_id=body.agent_id or self.agent_id,
            feature=self.feature,
            integration_context=body.integration_context(),
            metadata=model_options(body.metadata.model_dump()),
            correlation_id=self.correlation_id,
            conversation=body.conversation_messages(),
        )

    def job(self) -> tuple[str, JobPayload]:
        return self.feature, JobPayload(
            request_id=self.request_id,
            session_id=self.session_id,
            tenant_id=self.who.tenant_id,
            correlation_id=self.correlation_id,
        )


def body_hash(body: _RequestBody) -> str:
    return hashlib.sha256(orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


async def accept(
    gw: Gateway,
    who: Principal,
    body: _RequestBody,
    *,
    idempotency_key: str | None,
    correlation_id: str,
    unseen_session: bool = False,
) -> Accepted:
    """Store and queue a request. `unseen_session`: the caller created `body.session_id` a moment ago
    and nothing else sends into it yet (a named chat's first turn), so it needs no session lock."""
    user_id = body.user_id or who.user_id
    if not who.may_act_for(user_id):
        raise Forbidden("this credential may not send requests for another user")
    try:
        agent = gw.agents.route(body.content, body.integration(), body.agent_id)
    except KeyError:
        raise Invalid(f"unknown agent_id {body.agent_id!r}") from None
    digest = body_hash(body)
    if idempotency_key:
        replay = await _replay(gw.db, who, user_id, idempotency_key, digest)
        if replay:
            return replay
    intake = _Intake(
        who,
        user_id,
        body,
        agent.id,
        agent.feature,
        idempotency_key,
        digest,
        correlation_id,
        unseen_session=unseen_session,
    )
    await _admit(gw, intake)
    try:
        accepted = await _accept_new(gw, intake)
    except asyncpg.UniqueViolationError:
        await _release(gw, intake)
        # A concurrent request with the same Idempotency-Key won the race.
        replay = await _replay(gw.db, who, user_id, idempotency_key or "", digest)
        if replay is None:
            raise
        return replay
    except BaseException:
        await _release(gw, intake)
        raise
    if accepted.replayed:
        await _release(gw, intake)
    return accepted


async def _admit(gw: Gateway, intake: _Intake) -> None:
    """The per-request ceiling, then the rate and concurrency limits (one Redis round trip)."""
    too_long = max_reply_tokens_refusal(intake.body.metadata.model_dump(), gw.settings.max_reply_tokens)
    if too_long:
        REFUSALS.labels("max_reply_tokens").inc()
        raise LimitExceeded(too_long)
    if gw.limits is None:
        return
    tenant_id = intake.who.tenant_id

    async def still_active(request_ids: list[str]) -> set[str]:
        return await unfinished(gw.db, tenant_id, request_ids)

    async def seed(budget: Budget) -> None:
        await budgets.seed(gw.streams, gw.db, budget)

    spendable = await gw.budgets.budgets(tenant_id, intake.user_id) if gw.budgets is not None else []
    refusal = await gw.limits.admit_request(
        tenant_id,
        intake.user_id,
        intake.body.integration(),
        intake.request_id,
        still_active,
        budgets=spendable,
        seed=seed,
    )
    if refusal:
        raise refused(refusal)


async def _release(gw: Gateway, intake: _Intake) -> None:
    if gw.limits is not None:
        await gw.limits.release_request(intake.who.tenant_id, intake.user_id, intake.request_id)


async def _replay(
    conn: asyncpg.Connection | asyncpg.Pool, who: Principal, user_id: str, key: str, digest: str
) -> Accepted | None:
    row = await request_repo.by_idempotency_key(conn, who.tenant_id, user_id, key)
    if row is None:
        return None
    if row["body_hash"] != digest:
        raise Conflict("Idempotency-Key was already used with a different request body")
    return Accepted(row["request_id"], row["session_id"], row["status"], row["stream_entry_id"], replayed=True)


async def _accept_new(gw: Gateway, intake: _Intake) -> Accepted:
    """Store the request (in a new or an existing session), then queue it or flag what it interrupts."""
    try:
        async with gw.db.acquire() as conn:
            if (_starts_session(intake) or intake.unseen_session) and not intake.idempotency_key:
                # Nothing runs in a session nobody has seen yet: no lock, no transaction needed.
                await _record(gw, conn, intake, existing=intake.body.session_id if intake.unseen_session else None)
                upcoming: tuple[str, JobPayload] | None = intake.job()
                interrupted: list[str] = []
                cancelled: list[asyncpg.Record] = []
            else:
                async with conn.transaction():
                    replay = await _hold_idempotency_key(conn, intake)
                    if replay is not None:
                        return replay
                    upcoming, interrupted, cancelled = await _join_session(gw, conn, intake)
    except BaseException:
        await _end_unstored(gw, intake)
        raise
    await end_streams(gw, cancelled)
    await flag_running(gw, intake.session_id, interrupted, "interrupted by a newer request")
    await enqueue_safely(gw, upcoming)
    tenant, cid = intake.who.tenant_id, intake.correlation_id
    if intake.new_session:
        sink.emit(
            "session.created", intake.session_id, {"user_id": intake.user_id}, tenant_id=tenant, correlation_id=cid
        )
    sink.emit(
        "request.accepted",
        intake.request_id,
        {"session_id": intake.session_id, "agent_id": intake.agent_id},
        tenant_id=tenant,
        correlation_id=cid,
    )
    return Accepted(intake.request_id, intake.session_id, "queued", intake.entry_id)


async def _hold_idempotency_key(conn: asyncpg.Connection, intake: _Intake) -> Accepted | None:
    """Serialise requests that share an Idempotency-Key (for the rest of the transaction).

    The loser of a race finds the winner's row here, before it announces anything on the
    stream: no "not stored" turn ever appears in the session.
    """
    if not intake.idempotency_key:
        return None
    who = intake.who
    await request_repo.lock_idempotency_key(conn, who.tenant_id, intake.user_id, intake.idempotency_key)
    return await _replay(conn, who, intake.user_id, intake.idempotency_key, intake.digest)


def _acting_without_join(intake: _Intake) -> bool:
    return intake.user_id != intake.who.user_id and not intake.who.may_join_sessions_of_others()


def _starts_session(intake: _Intake) -> bool:
    """True when the request opens a new session: asked for, or a tool acting for a user it may not join."""
    if intake.body.session_id:
        return False
    return intake.body.new_session or _acting_without_join(intake)


async def _join_session(
    gw: Gateway, conn: asyncpg.Connection, intake: _Intake
) -> tuple[tuple[str, JobPayload] | None, list[str], list[asyncpg.Record]]:
    """In the caller's transaction: lock the session, apply `multitask`, store the request.

    Returns (the job to queue now, the running requests to interrupt, the queued ones it cancelled).
    """
    existing = await _session_for(conn, intake)
    active = await request_repo.active_in_session(conn, existing) if existing else []
    multitask = intake.body.multitask
    if active and multitask == "reject":
        raise Conflict("another request is still running in this session (multitask=reject)")
    await _record(gw, conn, intake, existing=existing)
    if not active:
        return intake.job(), [], []
    if multitask != "interrupt":
        return None, [], []
    queued = [r["request_id"] for r in active if r["status"] in ("queued", "waiting")]
    upcoming, cancelled = await cancel_queued(conn, intake.session_id, queued, "interrupted by a newer request")
    return upcoming, [r["request_id"] for r in active if r["status"] == "running"], cancelled


async def _session_for(conn: asyncpg.Connection, intake: _Intake) -> str | None:
    """The existing session this request joins, locked for the rest of the transaction.

    None means the request starts a new session (created with the request row).
    """
    who, body = intake.who, intake.body
    if body.session_id:
        if _acting_without_join(intake):
            raise Forbidden(f"joining another user's session needs the {SCOPE_JOIN_SESSIONS!r} scope")
        row = await session_repo.lock_owned(conn, who.tenant_id, intake.user_id, body.session_id)
        if not row:
            raise NotFound("session not found")
        if row["status"] != "active":
            raise Conflict(f"session is {row['status']}; start a new one")
        return str(row["session_id"])
    if body.new_session or _acting_without_join(intake):
        return None
    return await session_repo.lock_latest_active(conn, who.tenant_id, intake.user_id, body.integration())


async def _record(gw: Gateway, conn: asyncpg.Connection, intake: _Intake, *, existing: str | None) -> None:
    """Announce the request on its stream, then store it (and a new session) in one statement.

    The stream entry comes first so its id is stored with the row: if Redis is down,
    nothing is stored and the client gets 503.
    """
    intake.session_id, intake.new_session = existing or str(uuid.uuid4()), existing is None
    normalized = intake.normalized()
    accepted_event = Event(
        type="request.accepted",
        request_id=intake.request_id,
        data={
            "content": intake.body.content,
            "session_id": intake.session_id,
            "user_id": intake.user_id,
            "integration_type": normalized.integration_type,
            "agent_id": normalized.agent_id,
            "correlation_id": intake.correlation_id,
        },
    )
    (intake.entry_id,) = await gw.writer.announce(intake.session_id, intake.request_id, [accepted_event])
    await request_repo.insert(
        conn,
        new_session=existing is None,
        values=(
            intake.request_id,
            intake.session_id,
            intake.who.tenant_id,
            intake.user_id,
            normalized.request_type,
            intake.body.content,
            normalized.model_dump(),
            normalized.agent_id,
            intake.feature,
            intake.idempotency_key,
            intake.digest,
            intake.correlation_id,
            intake.entry_id,
            gw.settings.request_timeout_seconds,
            gw.settings.session_ttl_seconds,
            None if intake.user_id == intake.who.user_id else intake.who.user_id,
        ),
    )


async def _end_unstored(gw: Gateway, intake: _Intake) -> None:
    """The stream announced a request whose row was not kept: end it there too."""
    if intake.entry_id is None:
        return
    with contextlib.suppress(Exception):
        await gw.writer.end(
            intake.session_id, closing_events(intake.request_id, 1, "failed", error="the request was not stored")
        )
        await gw.streams.zrem(
            intake_key(intake.session_id, gw.settings.stream_buckets),
            intake_member(intake.session_id, intake.request_id),
        )


async def get(gw: Gateway, who: Principal, request_id: str) -> dict[str, Any]:
    row = await request_repo.get(gw.db, who, request_id)
    if row is None:
        raise NotFound("request not found")
    return row


async def decide(gw: Gateway, who: Principal, request_id: str, call_id: str, approve: bool, reason: str) -> str:
    """Record a person's decision on a call awaiting approval; returns the request's status after it."""
    row = await get(gw, who, request_id)
    async with gw.db.acquire() as conn, conn.transaction():
        await lifecycle.lock_session(conn, row["session_id"])
        status = await conn.fetchval("SELECT status FROM request_logs WHERE request_id = $1", row["request_id"])
        if status != "waiting":
            raise Conflict(f"request is {status}, not waiting for an approval")
        if not await tool_steps.decide(conn, row["request_id"], call_id, approve, reason):
            raise NotFound("no tool call of this request awaits approval with this call_id")
        upcoming = await lifecycle.unpark(conn, row["request_id"], gw.settings.request_timeout_seconds)
    await enqueue_safely(gw, upcoming)
    return "queued" if upcoming else "waiting"


async def cancel(gw: Gateway, who: Principal, request_id: str, reason: str = "cancelled by user") -> str:
    """Flag the request for its worker and cancel it outright if it has not started."""
    row = await get(gw, who, request_id)
    if row["status"] not in ACTIVE_STATUSES:
        raise Conflict(f"request already {row['status']}")
    await cancel_many(gw, row["session_id"], [request_id], reason)
    return "cancelling"
