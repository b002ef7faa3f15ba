"""AI SDK chats over relaygate sessions: one session per (tenant, user, chat id), each POST a turn of it."""

from __future__ import annotations

from starlette.responses import Response, StreamingResponse

from api.aisdk.chunks import UiMessageStream
from api.aisdk.schemas import ChatRequest
from api.deps import Gateway
from api.errors import Invalid
from api.requests import turns
from api.streams.follow import rendered
from api.streams.sse import held_response, release_stream, reserve_stream
from common.platform.credentials import Principal

PROTOCOL = "aisdk"
STREAM_HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}


def _conversation(body: ChatRequest) -> tuple[str, list[dict[str, str]]]:
    """The last user message's text (the request) and the text of the turns before it (what the model sees).

    A regenerate or an edit arrives with the later messages already dropped by the client.
    """
    last = next(
        (
            i
            for i in range(len(body.messages) - 1, -1, -1)
            if body.messages[i].role == "user" and body.messages[i].text()
        ),
        None,
    )
    if last is None:
        raise Invalid("the chat has no user message with text")
    before = [{"role": m.role, "content": m.text()} for m in body.messages[:last] if m.text()]
    return body.messages[last].text(), before


async def chat(gw: Gateway, who: Principal, body: ChatRequest) -> StreamingResponse:
    """Store the turn in the chat's session and stream its reply."""
    content, before = _conversation(body)
    slot = await reserve_stream(gw, who)
    try:
        session_id, created = await turns.chat_session(gw, who, PROTOCOL, body.id)
        request = turns.turn_body(
            integration_type="web",
            session_id=session_id,
            agent_id=body.agent_id,
            content=content,
            conversation=before,
            metadata=body.metadata,
            context={"protocol": PROTOCOL, "chat_id": body.id},
        )
        turn = await turns.accept(gw, who, PROTOCOL, request, unseen_session=created)
    except BaseException:
        release_stream(gw, slot)
        raise
    return _stream(gw, slot, turn)


async def resume(gw: Gateway, who: Principal, chat_id: str) -> Response:
    """The reply in progress replayed from its start, then live; 204 when the chat has none (or never ran)."""
    session_id = await turns.find_chat_session(gw, who, PROTOCOL, chat_id)
    turn = await turns.reply_in_progress(gw, who, session_id) if session_id else None
    if turn is None:
        return Response(status_code=204)
    return _stream(gw, await reserve_stream(gw, who), turn)


async def stop(gw: Gateway, who: Principal, chat_id: str) -> list[str]:
    """Cancel the chat's replies in progress; their streams end with `finish`."""
    session_id = await turns.find_chat_session(gw, who, PROTOCOL, chat_id)
    return await turns.stop(gw, who, session_id, "stopped by user") if session_id else []


def _stream(gw: Gateway, slot: str | None, turn: turns.Turn) -> StreamingResponse:
    renderer = UiMessageStream(turn.request_id, turn.session_id, superseded_below=turn.attempt)
    response = held_response(gw, slot, rendered(gw.hub, turn.key, turn.after, turn.request_id, renderer, PROTOCOL))
    response.headers.update({**STREAM_HEADERS, "X-Session-Id": turn.session_id})
    return response
