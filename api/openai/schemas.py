"""Chat Completions request bodies as the `openai` SDKs, Open WebUI and LibreChat send them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.errors import BadRequest
from api.requests.schemas import MAX_TURNS
from common.requests.models import MAX_CONTENT, reject_unstorable


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: str | None = Field(default=None, max_length=MAX_CONTENT)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = Field(default=None, max_length=MAX_CONTENT)

    def text(self) -> str:
        """The message's text; a part that is not text (an image, audio) is a 400."""
        if isinstance(self.content, str) or self.content is None:
            return self.content or ""
        kinds = {p.type for p in self.content} - {"text"}
        if kinds:
            raise BadRequest(f"only text content is supported, not {sorted(kinds)[0]!r}", error="invalid_request")
        return "".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """Sampling options relaygate does not apply (temperature, top_p, stop, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    _no_nul = model_validator(mode="before")(reject_unstorable)

    model: str = Field(min_length=1, max_length=255)
    messages: list[Message] = Field(min_length=1, max_length=MAX_TURNS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request")
    user: str | None = Field(default=None, max_length=255)
    metadata: dict[str, Any] | None = None
    tools: list[Any] | None = Field(default=None, max_length=0, description="client-side tools are not supported")

    def conversation(self) -> tuple[str, list[dict[str, str]]]:
        """The last message (a user's) is the request; the ones before it are what the model sees first."""
        last = self.messages[-1]
        if last.role != "user" or not last.text():
            raise BadRequest("the last message must be a user message with text", error="invalid_request")
        before = []
        for m in self.messages[:-1]:
            if m.role in ("tool", "function"):
                raise BadRequest(f"{m.role} messages are not supported", error="invalid_request")
            if text := m.text():
                before.append({"role": "system" if m.role == "developer" else m.role, "content": text})
        return last.text(), before

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
