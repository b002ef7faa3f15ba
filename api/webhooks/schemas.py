"""Bodies of the webhook configuration routes and of an incoming webhook call."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from common.flows.depth import ShallowObject


class WebhookConfigBody(BaseModel):
    webhook_id: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    flow_id: str = Field(min_length=1, max_length=255)
    enabled: bool = True
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=255,
        description="a Standard Webhooks secret (`whsec_` + base64); generated when absent",
    )
    input_mapping: ShallowObject = Field(
        default_factory=dict,
        description='run input field -> template over the call, e.g. {"ticket": "{{ payload.id }}"}',
    )
    description: str = Field(default="", max_length=2000)


class WebhookConfigUpdate(BaseModel):
    flow_id: str | None = Field(default=None, min_length=1, max_length=255)
    enabled: bool | None = None
    input_mapping: ShallowObject | None = None
    description: str | None = Field(default=None, max_length=2000)
    rotate_secret: bool = False


class WebhookConfigOut(BaseModel):
    webhook_id: str
    flow_id: str
    enabled: bool
    input_mapping: dict[str, Any]
    description: str
    user_id: str
    created_at: datetime
    updated_at: datetime
    url: str
    secret: str | None = Field(default=None, description="only in the answer that created or rotated it")


class WebhookConfigPage(BaseModel):
    items: list[WebhookConfigOut]


class WebhookCall(BaseModel):
    """What n8n/Zapier-style callers send to `POST /v1/webhooks/{webhook_id}`."""

    webhook_id: str | None = Field(default=None, max_length=255)
    payload: ShallowObject = Field(default_factory=dict)
    headers: ShallowObject = Field(default_factory=dict)
    source: str = Field(default="", max_length=255)
