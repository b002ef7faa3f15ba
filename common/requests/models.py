"""Pydantic models that cross process boundaries: request bodies, normalised requests and job payloads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IntegrationType = Literal[
    "slack", "web", "cli", "tool", "email", "sms", "webhook", "teams", "discord", "test", "generic"
]


def lower_name(value: object) -> object:
    """The original integration guide spells integration types in capitals (`"WEB"`): accept any case."""
    return value.lower() if isinstance(value, str) else value


Multitask = Literal["enqueue", "reject", "interrupt"]
RequestStatus = Literal["queued", "running", "waiting", "completed", "failed", "cancelled"]
ACTIVE_STATUSES = ("queued", "running", "waiting")

MAX_CONTENT = 100_000


class NormalizedRequest(BaseModel):
    """Every integration's body becomes this before it is stored and queued."""

    request_id: str
    session_id: str
    tenant_id: str
    user_id: str
    integration_type: IntegrationType
    request_type: str
    content: str
    agent_id: str | None = None
    feature: str = "default"
    channel_id: str | None = None
    thread_id: str | None = None
    integration_context: dict[str, Any] = Field(default_factory=dict)
    user_context: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    correlation_id: str = ""
    # The turns before `content` as the client sent them ({role, content}; OpenAI and AI SDK clients
    # send the whole conversation): the model sees these instead of the session's stored history.
    conversation: list[dict[str, str]] | None = None


class JobPayload(BaseModel):
    """The only argument of an ARQ `process_request` job."""

    request_id: str
    session_id: str
    tenant_id: str
    attempt: int = 1
    correlation_id: str = ""
    # W3C trace context of the span that enqueued the job (empty when tracing is off).
    trace_context: dict[str, str] = Field(default_factory=dict)


def model_options(metadata: dict[str, Any]) -> dict[str, Any]:
    """The request-metadata keys relaygate passes on to the model call; anything else stays at the gateway.

    `max_tokens` caps a real model's reply; `offline` ({tokens, tokens_per_second}) tunes the offline model.
    """
    options: dict[str, Any] = {}
    max_tokens = metadata.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        options["max_tokens"] = max_tokens
    offline = metadata.get("offline")
    if isinstance(offline, dict):
        tuned = {
            k: v
            for k, v in offline.items()
            if k in ("tokens", "tokens_per_second") and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if tuned:
            options["offline"] = tuned
    return options


MAX_JSON_DEPTH = 32  # nesting of a request body's objects and lists (metadata, tool_context)


def reject_unstorable(value: Any) -> Any:
    """Refuse what Postgres and the JSON encoder cannot store: NUL characters (keys too), integers past 64 bits,
    and nesting deeper than MAX_JSON_DEPTH (the serialisers stop far above any real body's depth)."""

    def walk(item: Any, depth: int) -> None:
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("text may not contain NUL (\\u0000) characters")
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -(2**63) <= item < 2**64:
                raise ValueError("integers must fit in 64 bits")
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"objects and lists may be nested at most {MAX_JSON_DEPTH} levels deep")
            for inner in [*item.keys(), *item.values()] if isinstance(item, dict) else item:
                walk(inner, depth + 1)

    walk(value, 0)
    return value


# A request's free-form options (`model_options` picks what the model call gets). No docstring and this name:
# both are the OpenAPI schema's, which clients generate code from.
class _Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestBody(BaseModel):
    """What every way in (an HTTP route, Slack, a schedule, a flow `agent` task) sends to the intake; each
    subclass says where it came from (`integration`) and what to keep of its origin (`integration_context`)."""

    _no_nul = model_validator(mode="before")(reject_unstorable)

    user_id: str | None = Field(default=None, min_length=1, max_length=255)
    content: str = Field(min_length=1, max_length=MAX_CONTENT)
    session_id: str | None = None
    new_session: bool = False
    agent_id: str | None = Field(default=None, max_length=255)
    multitask: Multitask = "enqueue"
    metadata: _Metadata = Field(default_factory=_Metadata)

    def integration(self) -> IntegrationType:
        raise NotImplementedError

    def integration_context(self) -> dict[str, Any]:
        return {}

    def conversation_messages(self) -> list[dict[str, str]] | None:
        """The turns the client gave for the model (None: the session's stored history)."""
        return None
