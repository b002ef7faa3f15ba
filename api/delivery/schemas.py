"""Bodies and answers of the integration defaults, overrides and delivery history routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.delivery.configs import Channel, ChannelConfig, DeliveryStatus


class OverrideCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    integration_type: Channel
    enabled: bool = True
    config: dict[str, Any] | None = None
    priority: int | None = Field(default=None, ge=0, le=100)
    retry_count: int | None = Field(default=None, ge=0, le=20)
    retry_delay_seconds: int | None = Field(default=None, ge=0, le=86_400)


class OverrideUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    config: dict[str, Any] | None = None
    priority: int | None = Field(default=None, ge=0, le=100)
    retry_count: int | None = Field(default=None, ge=0, le=20)
    retry_delay_seconds: int | None = Field(default=None, ge=0, le=86_400)


class SystemDefaults(BaseModel):
    integration_defaults: dict[str, ChannelConfig]


class UserConfigs(BaseModel):
    """The integration guide's answer: overrides, what applies, and whether only defaults do."""

    user_id: str
    user_overrides: dict[str, ChannelConfig]
    effective_configs: dict[str, ChannelConfig]
    using_integration_defaults: bool


class Override(BaseModel):
    user_id: str
    integration_type: Channel
    enabled: bool
    priority: int
    retry_count: int
    retry_delay_seconds: int
    config: dict[str, Any]
    # EMAIL and SMS: whether replies may go to the destination yet (`pending`: a code was sent there).
    verification: Literal["verified", "pending"] | None = None


class VerifyCode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=16)


class Verified(BaseModel):
    integration_type: Channel
    destination: str
    verified: bool


class Delivery(BaseModel):
    delivery_id: str
    request_id: str
    session_id: str
    integration_type: Channel
    attempt: int
    status: DeliveryStatus
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime


class Deliveries(BaseModel):
    user_id: str
    deliveries: list[Delivery]
    limit: int
    offset: int
