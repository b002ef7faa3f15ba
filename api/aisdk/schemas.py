"""The body `useChat` / `DefaultChatTransport` sends to `POST /api/chat` (AI SDK 5 and later)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.requests.schemas import MAX_TURNS
from common.requests.models import MAX_CONTENT, reject_unstorable

# Printable ASCII but `/`: the chat id is a path segment of the resume and stop routes.
CHAT_ID_PATTERN = r"^[!-.0-~]{1,255}$"


class UIPart(BaseModel):
    """A message part; only `text` parts reach the model, the others (files, tools, steps) are kept out."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=255)
    text: str | None = Field(default=None, max_length=MAX_CONTENT)


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(default="", max_length=255)
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart] = Field(default_factory=list, max_length=1_000)

    def text(self) -> str:
        return "\n\n".join(p.text for p in self.parts if p.type == "text" and p.text)


class ChatRequest(BaseModel):
    """`{id, messages, trigger, messageId?}` plus what the app adds with the transport's `body` option:
    `agent_id` (else routing picks the agent) and `metadata` (relaygate's request metadata)."""

    model_config = ConfigDict(extra="ignore")
    _no_nul = model_validator(mode="before")(reject_unstorable)

    id: str = Field(pattern=CHAT_ID_PATTERN)
    messages: list[UIMessage] = Field(min_length=1, max_length=MAX_TURNS)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = Field(default=None, max_length=255)
    agent_id: str | None = Field(default=None, max_length=255)
    metadata: dict[str, Any] = Field(default_factory=dict)
