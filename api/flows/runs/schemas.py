"""Bodies of the flow run routes (the original ingress contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from common.flows.depth import ShallowObject


class RunBody(BaseModel):
    flow_id: str = Field(min_length=1, max_length=255)
    flow_definition: dict[str, Any] | None = None
    input: ShallowObject = Field(default_factory=dict)
    tenant_id: str = Field(min_length=1, max_length=255)
    request_id: str | None = Field(default=None, min_length=1, max_length=255)
    version: int | None = Field(default=None, ge=1, description="registry version when no flow_definition is sent")


class RunAccepted(BaseModel):
    run_id: str
    correlation_id: str


class RunStatus(BaseModel):
    run_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    tenant_id: str
    flow_id: str
    flow_version: str | None = None
    user_id: str
    correlation_id: str
    attempt: int
    input: dict[str, Any]
    output: Any = None
    error: str | None = None


class RunPage(BaseModel):
    items: list[RunStatus]
    next_cursor: str | None = None
