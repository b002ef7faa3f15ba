"""Request bodies of the original integration guide, plus relaygate's shared options."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from common.requests.models import MAX_CONTENT, IntegrationType, RequestBody, _Metadata, lower_name

MAX_TURNS = 1_000  # messages of a conversation a client sends


class WebRequest(RequestBody):
    client_ip: str | None = Field(default=None, max_length=64)

    def integration(self) -> IntegrationType:
        return "web"

    def integration_context(self) -> dict[str, Any]:
        return {"client_ip": self.client_ip} if self.client_ip else {}


class CliMetadata(_Metadata):
    terminal: str | None = None
    command: str | None = None


class CliRequest(RequestBody):
    metadata: CliMetadata = Field(default_factory=CliMetadata)

    def integration(self) -> IntegrationType:
        return "cli"

    def integration_context(self) -> dict[str, Any]:
        return {k: v for k, v in {"terminal": self.metadata.terminal, "command": self.metadata.command}.items() if v}


class ToolMetadata(_Metadata):
    correlation_id: str | None = None
    automation_rule: str | None = None
    triggered_by: str | None = None


class ToolRequest(RequestBody):
    tool_id: str = Field(min_length=1, max_length=255)
    tool_instance_id: str | None = Field(default=None, max_length=255)
    trigger_event: str = Field(min_length=1, max_length=255)
    tool_context: dict[str, Any] = Field(default_factory=dict)
    metadata: ToolMetadata = Field(default_factory=ToolMetadata)

    def integration(self) -> IntegrationType:
        return "tool"

    def integration_context(self) -> dict[str, Any]:
        return {
            "tool_id": self.tool_id,
            "tool_instance_id": self.tool_instance_id,
            "trigger_event": self.trigger_event,
            "tool_context": self.tool_context,
            "automation_rule": self.metadata.automation_rule,
            "triggered_by": self.metadata.triggered_by,
        }


class GenericRequest(RequestBody):
    integration_type: IntegrationType

    _any_case = field_validator("integration_type", mode="before")(lower_name)

    def integration(self) -> IntegrationType:
        return self.integration_type


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT)


class ConversationRequest(GenericRequest):
    """A turn from a client that sends the whole conversation (OpenAI, AI SDK): the model sees `conversation`
    (the turns before `content`), and the session still stores the turn. Built by those routes, not posted."""

    conversation: list[ChatMessage] = Field(default_factory=list, max_length=MAX_TURNS)
    context: dict[str, Any] = Field(default_factory=dict)

    def integration_context(self) -> dict[str, Any]:
        return self.context

    def conversation_messages(self) -> list[dict[str, str]] | None:
        return [m.model_dump() for m in self.conversation]


class Accepted(BaseModel):
    request_id: str
    session_id: str
    status: str
    stream_url: str
    stream_entry_id: str | None = None


class ApprovalDecision(BaseModel):
    approve: bool
    reason: str = Field(default="", max_length=1000)


class ApprovalResult(BaseModel):
    request_id: str
    call_id: str
    approved: bool
    status: str


class ToolStep(BaseModel):
    """One tool call of an agent, as checkpointed (docs/AGENTS.md)."""

    call_id: str
    step: int
    tool: str
    arguments: dict[str, Any]
    status: str
    output: str | None = None
    error: str | None = None
    attempt: int
    started_at: datetime
    finished_at: datetime | None = None
    duration_ms: int | None = None


class UsageOut(BaseModel):
    """Tokens and cost of a request, the total of its attempts; `estimated` when a provider sent no count."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False


class RequestResult(BaseModel):
    request_id: str
    session_id: str
    status: str
    response: str | None = None
    error: str | None = None
    attempt: int = 1
    agent_id: str | None = None
    content: str | None = None
    processing_time_ms: int | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    steps: list[ToolStep] = Field(default_factory=list)
    usage: UsageOut | None = None
