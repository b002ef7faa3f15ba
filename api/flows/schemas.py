"""Bodies of the flow registry routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class FlowBody(BaseModel):
    """A flow to register; `definition` is the DAG (its `id` is the flow id)."""

    definition: dict[str, Any]
    name: str = Field(default="", max_length=255)
    description: str = Field(default="", max_length=4000)
    tags: list[str] = Field(default_factory=list, max_length=50)


class FlowOut(BaseModel):
    flow_id: str
    version: int
    name: str
    description: str
    tags: list[str]
    definition: dict[str, Any]
    created_by: str
    created_at: datetime


class FlowPage(BaseModel):
    items: list[FlowOut]
    next_cursor: str | None = None
