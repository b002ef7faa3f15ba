from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from api.requests.schemas import ToolStep
from common.requests.models import IntegrationType, lower_name, reject_unstorable


class SessionCreate(BaseModel):
    _no_nul = model_validator(mode="before")(reject_unstorable)

    integration_type: IntegrationType = "web"

    _any_case = field_validator("integration_type", mode="before")(lower_name)
    channel_id: str | None = Field(default=None, max_length=255)
    thread_id: str | None = Field(default=None, max_length=255)
    external_session_id: str | None = Field(default=None, max_length=255)
    user_context: dict[str, Any] = Field(default_factory=dict)
    integration_metadata: dict[str, Any] = Field(default_factory=dict)


class SessionOut(BaseModel):
    session_id: str
    user_id: str
    integration_type: str
    status: str
    title: str | None = None
    channel_id: str | None = None
    thread_id: str | None = None
    external_session_id: str | None = None
    current_agent_id: str | None = None
    integration_metadata: dict[str, Any] = Field(default_factory=dict)
    user_context: dict[str, Any] = Field(default_factory=dict)
    conversation_context: dict[str, Any] = Field(default_factory=dict)
    total_requests: int
    last_request_id: str | None = None
    last_request_at: datetime | None = None
    expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_offset: int | None


class RequestOut(BaseModel):
    request_id: str
    session_id: str
    status: str
    content: str
    response: str | None = None
    error: str | None = None
    attempt: int
    agent_id: str | None = None
    integration_type: str | None = None
    stream_entry_id: str | None = None
    processing_time_ms: int | None = None
    created_at: datetime
    completed_at: datetime | None = None
    steps: list[ToolStep] = Field(default_factory=list)


class RequestPage(BaseModel):
    items: list[RequestOut]
