"""Bodies the LangGraph SDK sends, and the relaygate request a run becomes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.requests.models import IntegrationType, RequestBody, reject_unstorable

StreamMode = Literal[
    "values", "messages", "messages-tuple", "updates", "events", "debug", "custom", "tasks", "checkpoints"
]
# The modes relaygate has content for; the others are accepted and stay silent (relaygate agents
# emit no custom events, debug or task records).
RENDERED_MODES = frozenset({"values", "messages-tuple", "updates"})
DEFAULT_MODES: list[StreamMode] = ["values"]


class _Body(BaseModel):
    """Fields the SDK sends that relaygate has no use for are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")
    _no_nul = model_validator(mode="before")(reject_unstorable)


class ThreadCreate(_Body):
    thread_id: str | None = Field(default=None, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"


class ThreadSearch(_Body):
    metadata: dict[str, Any] = Field(default_factory=dict)
    values: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    ids: list[str] | None = Field(default=None, max_length=1000)
    limit: int = Field(default=10, ge=1, le=100)
    offset: int = Field(default=0, ge=0)
    sort_by: Literal["thread_id", "status", "created_at", "updated_at"] = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"


class HistoryQuery(_Body):
    limit: int = Field(default=10, ge=1)


class AssistantSearch(_Body):
    metadata: dict[str, Any] = Field(default_factory=dict)
    graph_id: str | None = None
    name: str | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class RunCreate(_Body):
    """`POST /threads/{id}/runs[/stream|/wait]`: the new user turn is the last human message of `input`."""

    assistant_id: str = Field(min_length=1, max_length=255)
    input: dict[str, Any] | None = None
    command: dict[str, Any] | None = None
    stream_mode: StreamMode | list[StreamMode] | None = None
    metadata: dict[str, Any] | None = None
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] | None = None
    if_not_exists: Literal["reject", "create"] | None = None
    on_disconnect: Literal["cancel", "continue"] | None = None
    after_seconds: float | None = None
    webhook: str | None = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_id: str | None = None
    interrupt_before: str | list[str] | None = None
    interrupt_after: str | list[str] | None = None

    def modes(self) -> list[StreamMode]:
        if self.stream_mode is None:
            return list(DEFAULT_MODES)
        modes = [self.stream_mode] if isinstance(self.stream_mode, str) else self.stream_mode
        return list(dict.fromkeys(modes)) or list(DEFAULT_MODES)

    def unsupported(self) -> str | None:
        """Why relaygate cannot run this as asked, or None."""
        if self.command is not None:
            return "command is not supported: relaygate agents never interrupt a run for input"
        if self.multitask_strategy == "rollback":
            return "multitask_strategy 'rollback' is not supported; use reject, interrupt or enqueue"
        if self.after_seconds:
            return "after_seconds is not supported: runs start when they are sent"
        if self.webhook:
            return "webhook is not supported; configure delivery with relaygate's integrations"
        if self.checkpoint is not None or self.checkpoint_id is not None:
            return "checkpoint is not supported: a run continues the thread from its latest turn"
        if self.interrupt_before or self.interrupt_after:
            return "interrupt_before/interrupt_after are not supported: relaygate agents have no nodes to stop at"
        return None


class RunOptions(BaseModel):
    """What a request remembers of the LangGraph run it was sent as (in its integration context)."""

    stream_mode: list[str]
    multitask_strategy: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    message_id: str | None = None


class LangGraphRequest(RequestBody):
    """A run as a relaygate request: it goes through the same intake as every other route."""

    langgraph: RunOptions

    def integration(self) -> IntegrationType:
        return "web"

    def integration_context(self) -> dict[str, Any]:
        return {"langgraph": self.langgraph.model_dump()}
