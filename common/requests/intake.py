"""The one request intake: every way a request comes in (the gateway's routes, Slack, schedules, a flow's
`agent` task) stores, announces, counts and limits it here, then queues it.

It raises `Refused` subclasses, which the gateway answers as HTTP errors (api.requests.service) and the
workers record as a refused firing or a failed task.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import asyncpg
import orjson

from common.flows.admission import unfinished
from common.platform import sink
from common.platform.credentials import SCOPE_JOIN_SESSIONS, Principal
from common.platform.keys import intake_key
from common.requests import ending, lifecycle
from common.requests import repository as request_repo
from common.requests.cancelling import end_streams, enqueue_safely, flag_running
from common.requests.limits import REFUSALS, Refusal, max_reply_tokens_refusal
from common.requests.models import JobPayload, NormalizedRequest, RequestBody, model_options
from common.requests.stores import IntakeStores
from common.sessions import repository as session_repo
from common.streams.protocol import Event, intake_member
from common.usage import budgets
from common.usage.budgets import Budget


class Refused(Exception):
    """The intake will not take this request; `detail` says why, in words for the sender, and `code` is the
    error code every caller reports it under (the gateway's answers use the same)."""

    code: ClassVar[str] = "refused"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotPermitted(Refused):
    """The credential may not send this request (for another user, or into their session)."""

    code = "forbidden"


class UnknownAgent(Refused):
    """No agent has the `agent_id` the request names."""

    code = "validation_error"


class TooLarge(Refused):
    """The request asks for more than a configured ceiling (e.g. `max_reply_tokens`)."""

    code = "limit_exceeded"


class Limited(Refused):
    """A rate, concurrency or budget limit; `refusal` names it and when to try again."""

    code = "rate_limited"

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


class NoSuchSession(Refused):
    """The session the request names is not the sender's (or does not exist)."""

    code = "not_found"


class Conflicting(Refused):
    """The session's or the Idempotency-Key's state does not allow the request now."""

    code = "conflict"


@dataclass
class Admitted:
    """A request the intake took: stored and queued (`queued`), or an earlier one an Idempotency-Key named
    (`replayed`, with that request's status)."""

    request_id: str
    session_id: str
    status: str
    stream_entry_id: str | None
    replayed: bool = False
    # A replayed request still queued: its job, queued again (a no-op if it is there) in case the first
    # intake stored the request and died before queueing it.
    job: tuple[str, JobPayload] | None = None


@dataclass
class _Intake:
    """A request on its way in: what accept decided about it, and how far storing it got."""

    who: Principal
    user_id: str
    body: RequestBody
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


def body_hash(body: RequestBody) -> str:
    return hashlib.sha256(orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


async def accept(
    stores: IntakeStores,
    who: Principal,
    body: RequestBody,
    *,
    idempotency_key: str | None,
    correlation_id: str,
    unseen_session: bool = False,
    request_id: str | None = None,
) -> Admitted:
    """Store and queue a request. `unseen_session`: the caller created `body.session_id` a moment ago
    and nothing else sends into it yet (a named chat's first turn), so it needs no session lock.
    `request_id`: the id to store a new request under (a fresh one when None), for a caller that
    publishes it before the intake ends."""
    user_id = body.user_id or who.user_id
    if not who.may_act_for(user_id):
        raise NotPermitted("this credential may not send requests for another user")
    try:
        agent = stores.agents.route(body.content, body.integration(), body.agent_id)
    except KeyError:
        raise UnknownAgent(f"unknown agent_id {body.agent_id!r}") from None
    digest = body_hash(body)
    if idempotency_key:
        replay = await _replay(stores.db, who, user_id, idempotency_key, digest)
        if replay:
            await enqueue_safely(stores, replay.job)
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
    if request_id:
        intake.request_id = request_id
    await _admit(stores, intake)
    try:
        admitted = await _accept_new(stores, intake)
    except asyncpg.UniqueViolationError:
        await _release(stores, intake)
        # A concurrent request with the same Idempotency-Key won the race.
        replay = await _replay(stores.db, who, user_id, idempotency_key or "", digest)
        if replay is None:
            raise
        await enqueue_safely(stores, replay.job)
        return replay
    except BaseException:
        await _release(stores, intake)
        raise
    if admitted.replayed:
        await _release(stores, intake)
        await enqueue_safely(stores, admitted.job)
    return admitted


async def _admit(stores: IntakeStores, intake: _Intake) -> None:
    """The per-request ceiling, then the rate and concurrency limits (one Redis round trip)."""
    too_long = max_reply_tokens_refusal(intake.body.metadata.model_dump(), stores.settings.max_reply_tokens)
    if too_long:
        REFUSALS.labels("max_reply_tokens").inc()
        raise TooLarge(too_long)
    if stores.limits is None:
        return
    tenant_id = intake.who.tenant_id

    async def still_active(request_ids: list[str]) -> set[str]:
        return await unfinished(stores.db, tenant_id, request_ids)

    async def seed(budget: Budget) -> None:
        await budgets.seed(stores.streams, stores.db, budget)

    spendable = await stores.budgets.budgets(tenant_id, intake.user_id) if stores.budgets is not None else []
    refusal = await stores.limits.admit_request(
        tenant_id,
        intake.user_id,
        intake.body.integration(),
        intake.request_id,
        still_active,
        budgets=spendable,
        seed=seed,
    )
    if refusal:
        raise Limited(refusal)


async def _release(stores: IntakeStores, intake: _Intake) -> None:
    if stores.limits is not None:
        await stores.limits.release_request(intake.who.tenant_id, intake.user_id, intake.request_id)


async def _replay(
    conn: asyncpg.Connection | asyncpg.Pool, who: Principal, user_id: str, key: str, digest: str
) -> Admitted | None:
    row = await request_repo.by_idempotency_key(conn, who.tenant_id, user_id, key)
    if row is None:
        return None
    if row["body_hash"] != digest:
        raise Conflicting("Idempotency-Key was already used with a different request body")
    job = lifecycle.job_for(row) if row["status"] == "queued" else None
    return Admitted(row["request_id"], row["session_id"], row["status"], row["stream_entry_id"], True, job)


async def _accept_new(stores: IntakeStores, intake: _Intake) -> Admitted:
    """Store the request (in a new or an existing session), then queue it or flag what it interrupts."""
    try:
        if (_starts_session(intake) or intake.unseen_session) and not intake.idempotency_key:
            # Nothing runs in a session nobody has seen yet: no lock, no transaction needed.
            await _record(stores, None, intake, existing=intake.body.session_id if intake.unseen_session else None)
            upcoming: tuple[str, JobPayload] | None = intake.job()
            interrupted: list[str] = []
            cancelled: list[asyncpg.Record] = []
        else:
            async with stores.db.acquire() as conn, conn.transaction():
                replay = await _hold_idempotency_key(conn, intake)
                if replay is not None:
                    return replay
                upcoming, interrupted, cancelled = await _join_session(stores, conn, intake)
    except BaseException:
        await _end_unstored(stores, intake)
        raise
    await end_streams(stores, cancelled)
    await flag_running(stores, intake.session_id, interrupted, "interrupted by a newer request")
    await enqueue_safely(stores, upcoming)
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
    return Admitted(intake.request_id, intake.session_id, "queued", intake.entry_id)


async def _hold_idempotency_key(conn: asyncpg.Connection, intake: _Intake) -> Admitted | None:
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
    stores: IntakeStores, conn: asyncpg.Connection, intake: _Intake
) -> tuple[tuple[str, JobPayload] | None, list[str], list[asyncpg.Record]]:
    """In the caller's transaction: lock the session, apply `multitask`, store the request.

    Returns (the job to queue now, the running requests to interrupt, the queued ones it cancelled).
    """
    existing = await _session_for(conn, intake)
    active = await request_repo.active_in_session(conn, existing) if existing else []
    multitask = intake.body.multitask
    if active and multitask == "reject":
        raise Conflicting("another request is still running in this session (multitask=reject)")
    await _record(stores, conn, intake, existing=existing)
    if not active:
        return intake.job(), [], []
    if multitask != "interrupt":
        return None, [], []
    queued = [r["request_id"] for r in active if r["status"] in ("queued", "waiting")]
    reason = "interrupted by a newer request"
    cancelled, upcoming = await lifecycle.cancel_queued(conn, intake.session_id, queued, reason)
    return upcoming, [r["request_id"] for r in active if r["status"] == "running"], cancelled


async def _session_for(conn: asyncpg.Connection, intake: _Intake) -> str | None:
    """The existing session this request joins, locked for the rest of the transaction.

    None means the request starts a new session (created with the request row).
    """
    who, body = intake.who, intake.body
    if body.session_id:
        if _acting_without_join(intake):
            raise NotPermitted(f"joining another user's session needs the {SCOPE_JOIN_SESSIONS!r} scope")
        row = await session_repo.lock_owned(conn, who.tenant_id, intake.user_id, body.session_id)
        if not row:
            raise NoSuchSession("session not found")
        if row["status"] != "active":
            raise Conflicting(f"session is {row['status']}; start a new one")
        return str(row["session_id"])
    if body.new_session or _acting_without_join(intake):
        return None
    return await session_repo.lock_latest_active(conn, who.tenant_id, intake.user_id, body.integration())


async def _record(
    stores: IntakeStores, conn: asyncpg.Connection | None, intake: _Intake, *, existing: str | None
) -> None:
    """Announce the request on its stream, then store it (and a new session) in one statement: in the
    caller's transaction (`conn`), or outside any, sharing the statement with concurrent intakes.

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
    (intake.entry_id,) = await stores.writer.announce(intake.session_id, intake.request_id, [accepted_event])
    store = partial(request_repo.store, stores.db) if conn is None else partial(request_repo.insert, conn)
    await store(
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
            stores.settings.request_timeout_seconds,
            stores.settings.session_ttl_seconds,
            None if intake.user_id == intake.who.user_id else intake.who.user_id,
        ),
    )


async def _end_unstored(stores: IntakeStores, intake: _Intake) -> None:
    """The stream announced a request whose row was not kept: end it there too."""
    if intake.entry_id is None:
        return
    with contextlib.suppress(Exception):
        await ending.end_unstored(stores.writer, intake.session_id, intake.request_id)
        await stores.streams.zrem(
            intake_key(intake.session_id, stores.settings.stream_buckets),
            intake_member(intake.session_id, intake.request_id),
        )
