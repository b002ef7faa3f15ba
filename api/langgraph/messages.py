"""LangChain message dicts: the user turn read from a run's input, and a session's turns as a thread's messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from api.errors import Invalid

_HUMAN_ROLES = ("human", "user")


def human(content: str, message_id: str) -> dict[str, Any]:
    return {
        "type": "human",
        "content": content,
        "id": message_id,
        "additional_kwargs": {},
        "response_metadata": {},
        "name": None,
        "example": False,
    }


def ai(content: str, message_id: str, *, chunk: bool = False) -> dict[str, Any]:
    """The assistant's reply, or (`chunk`) one streamed piece of it as `messages-tuple` sends it."""
    message: dict[str, Any] = {
        "type": "AIMessageChunk" if chunk else "ai",
        "content": content,
        "id": message_id,
        "additional_kwargs": {},
        "response_metadata": {},
        "name": None,
        "example": False,
        "tool_calls": [],
        "invalid_tool_calls": [],
        "usage_metadata": None,
    }
    if chunk:
        message["tool_call_chunks"] = []
    return message


def ai_id(request_id: str, attempt: int) -> str:
    """One id per attempt: a retried attempt's text is a new message, never appended to the lost one's."""
    return f"run-{request_id}-{attempt}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Invalid(f"message content of type {kind!r} is not supported: send text")
        return "".join(parts)
    raise Invalid("message content must be text or a list of text parts")


def _role_and_content(message: Any) -> tuple[str, Any, str | None]:
    if isinstance(message, str):
        return "human", message, None
    if isinstance(message, list | tuple) and len(message) == 2 and isinstance(message[0], str):
        return message[0], message[1], None
    if isinstance(message, dict):
        role = message.get("type") or message.get("role")
        message_id = message.get("id")
        return str(role), message.get("content"), message_id if isinstance(message_id, str) else None
    raise Invalid("each input message must be an object with a role (or type) and content")


def user_turn(run_input: dict[str, Any] | None) -> tuple[str, str | None]:
    """The text (and client id) of the last human message of `input.messages`: the run's request.

    The thread already holds the conversation, so earlier messages of the input add nothing;
    a run without a human message has nothing to answer.
    """
    messages = (run_input or {}).get("messages")
    if isinstance(messages, dict | str):
        messages = [messages]
    if not isinstance(messages, list):
        raise Invalid("input.messages must hold the user's message")
    for message in reversed(messages):
        role, content, message_id = _role_and_content(message)
        if role in _HUMAN_ROLES:
            text = _text(content)
            if not text.strip():
                raise Invalid("the user's message is empty")
            return text, message_id
    raise Invalid("input.messages has no human (user) message to answer")


def human_of(turn: dict[str, Any]) -> dict[str, Any]:
    options = turn.get("langgraph") or {}
    return human(turn["content"], options.get("message_id") or turn["request_id"])


def conversation(turns: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A session's requests as LangGraph state: a turn's input joins it as its run starts, its reply when it completes.

    A failed or cancelled run leaves its human message without a reply, as a LangGraph node that
    raised or was interrupted writes nothing; a queued run's input is not in the state yet.
    """
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn["status"] == "queued":
            continue
        messages.append(human_of(turn))
        if turn["status"] == "completed" and turn["response"] is not None:
            messages.append(ai(turn["response"], ai_id(turn["request_id"], turn["attempt"])))
    return messages
