"""Turns from clients that send the whole conversation (AI SDK, OpenAI): their named chats, built on the
sessions, and their way into the one intake (`service.accept`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from api.deps import Gateway
from api.errors import Invalid
from api.requests import service
from api.requests.schemas import ConversationRequest
from api.streams.sse import just_before
from common.platform import logging as rg_logging
from common.platform.credentials import Principal
from common.platform.keys import stream_key
from common.platform.logging import correlation_id
from common.platform.metrics import PROTOCOL_REQUESTS
from common.requests import repository as request_repo
from common.requests.cancelling import cancel_many
from common.sessions import repository as session_repo


@dataclass
class Turn:
    """An accepted request and where its events start on its session's stream."""

    request_id: str
    session_id: str
    key: str
    after: tuple[int, int]
    attempt: int = 1


def chat_name(protocol: str, chat_id: str) -> str:
    """The external session id of a client's chat: one session per (tenant, user, protocol, chat id)."""
    return f"{protocol}:{chat_id}"


async def chat_session(gw: Gateway, who: Principal, protocol: str, chat_id: str) -> tuple[str, bool]:
    """The chat's session, created on its first turn; and whether this call created it."""
    return await session_repo.for_external_id(gw.db, who, chat_name(protocol, chat_id), gw.settings.session_ttl_seconds)


async def find_chat_session(gw: Gateway, who: Principal, protocol: str, chat_id: str) -> str | None:
    return await session_repo.find_external_id(gw.db, who, chat_name(protocol, chat_id))


def turn_body(**fields: Any) -> ConversationRequest:
    """The intake body of a turn; what the protocol's schema let through but relaygate cannot store is a 422."""
    try:
        return ConversationRequest(**fields)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise Invalid(problems) from None


async def accept(
    gw: Gateway,
    who: Principal,
    protocol: str,
    body: ConversationRequest,
    *,
    unseen_session: bool = False,
    via: str = "stream",
) -> Turn:
    """Store and queue the turn through the same intake as every other route."""
    accepted = await service.accept(
        gw, who, body, idempotency_key=None, correlation_id=correlation_id.get(), unseen_session=unseen_session
    )
    rg_logging.bind(request=accepted.request_id, session=accepted.session_id, tenant=who.tenant_id)
    PROTOCOL_REQUESTS.labels(protocol, via).inc()
    after = just_before(accepted.stream_entry_id) if accepted.stream_entry_id else (0, 0)
    return Turn(
        accepted.request_id, accepted.session_id, stream_key(accepted.session_id, gw.settings.stream_buckets), after
    )


async def reply_in_progress(gw: Gateway, who: Principal, session_id: str) -> Turn | None:
    """The session's newest queued or running request (the reply a client would rejoin), from its first event."""
    active = await request_repo.active_in_session(gw.db, session_id)
    if not active:
        return None
    row = await service.get(gw, who, active[-1]["request_id"])
    entry = row["stream_entry_id"]
    return Turn(
        row["request_id"],
        session_id,
        stream_key(session_id, gw.settings.stream_buckets),
        just_before(entry) if entry else (0, 0),
        attempt=row["attempt"],
    )


async def stop(gw: Gateway, who: Principal, session_id: str, reason: str) -> list[str]:
    """Cancel every queued and running request of the session; returns their ids."""
    unfinished = await request_repo.unfinished_in_session(gw.db, who, session_id)
    if unfinished:
        await cancel_many(gw, session_id, unfinished, reason)
    return unfinished
