"""OpenAI Chat Completions over relaygate: agents are models, each call a turn of a session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from api.deps import Gateway
from api.errors import ApiError, NotFound
from api.openai.chunks import CompletionChunks, Reply, completion
from api.openai.errors import error_body
from api.openai.schemas import CompletionRequest
from api.requests import service, turns
from api.responses import JSONResponse
from api.streams.follow import rendered, request_batches
from api.streams.sse import held_response, release_stream, reserve_stream
from common.agents.registry import Agent
from common.platform.credentials import Principal
from common.platform.metrics import PROTOCOL_STREAMS
from common.streams.hub import DRAIN, Entry

log = logging.getLogger(__name__)

PROTOCOL = "openai"
_cancels: set[asyncio.Task[None]] = set()


def model(agent: Agent) -> dict[str, Any]:
    return {"id": agent.id, "object": "model", "created": 0, "owned_by": "relaygate"}


def agent_for(gw: Gateway, model_id: str) -> Agent:
    agent = gw.agents.get(model_id)
    if agent is None:
        raise NotFound(
            f"The model {model_id!r} does not exist: GET /v1/models lists the agents", error="model_not_found"
        )
    return agent


async def complete(
    gw: Gateway, who: Principal, body: CompletionRequest, session_id: str | None, chat_id: str | None
) -> Response:
    """Store the call as a turn (of `session_id`, of the chat `chat_id`, else of a new session) and answer it."""
    agent = agent_for(gw, body.model)
    content, before = body.conversation()
    metadata = dict(body.metadata or {})
    if cap := body.max_completion_tokens or body.max_tokens:
        metadata["max_tokens"] = cap
    slot = await reserve_stream(gw, who) if body.stream else None
    try:
        created = False
        if session_id is None and chat_id:
            session_id, created = await turns.chat_session(gw, who, PROTOCOL, chat_id)
        context = {
            "protocol": PROTOCOL,
            **({"chat_id": chat_id} if chat_id else {}),
            **({"user": body.user} if body.user else {}),
        }
        request = turns.turn_body(
            integration_type="generic",
            session_id=session_id,
            new_session=session_id is None,
            agent_id=agent.id,
            content=content,
            conversation=before,
            metadata=metadata,
            context=context,
        )
        turn = await turns.accept(
            gw, who, PROTOCOL, request, unseen_session=created, via="stream" if body.stream else "wait"
        )
    except BaseException:
        release_stream(gw, slot)
        raise
    headers = {"X-Session-Id": turn.session_id}
    if body.stream:
        chunks = CompletionChunks(turn.request_id, body.model, body.include_usage)
        frames = rendered(gw.hub, turn.key, turn.after, turn.request_id, chunks, PROTOCOL)
        response = held_response(gw, slot, _cancel_when_abandoned(gw, who, turn.request_id, chunks, frames))
        response.headers.update(headers)
        return response
    return await _answer(gw, turn, body.model, headers)


async def _answer(gw: Gateway, turn: turns.Turn, model_id: str, headers: dict[str, str]) -> Response:
    """Wait for the reply and answer it whole; retries stay invisible (only the last attempt's text counts)."""
    reply = Reply()
    async for batch in request_batches(gw.hub, turn.key, turn.after, turn.request_id):
        for item in batch:
            if item is DRAIN:
                PROTOCOL_STREAMS.labels(PROTOCOL, "ended", "drained").inc()
                body = error_body("the gateway is shutting down; ask again", 503, "gateway_shutting_down")
                return JSONResponse(body, status_code=503, headers={**headers, "Retry-After": "1"})
            if isinstance(item, Entry):
                reply.add(item)
    PROTOCOL_STREAMS.labels(PROTOCOL, "ended", reply.status or "failed").inc()
    if reply.status == "completed":
        return JSONResponse(completion(turn.request_id, model_id, reply), headers=headers)
    status, code, message = reply.failure()
    # The worker already retried what was transient: the SDK's own retries would only repeat the turn.
    return JSONResponse(
        error_body(message, status, code), status_code=status, headers={**headers, "x-should-retry": "false"}
    )


async def _cancel_when_abandoned(
    gw: Gateway, who: Principal, request_id: str, chunks: CompletionChunks, frames: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """A client that closes the stream stops the reply, as with OpenAI: it cannot resume and would wait for it."""
    try:
        async for frame in frames:
            yield frame
    finally:
        if chunks.ended is None:
            task = asyncio.get_running_loop().create_task(_cancel(gw, who, request_id))
            _cancels.add(task)
            task.add_done_callback(_cancels.discard)


async def _cancel(gw: Gateway, who: Principal, request_id: str) -> None:
    with contextlib.suppress(ApiError):  # it ended meanwhile
        try:
            await service.cancel(gw, who, request_id, "the client closed the stream")
        except Exception as exc:
            log.warning("could not cancel an abandoned reply", extra={"request_id": request_id, "error": repr(exc)})
