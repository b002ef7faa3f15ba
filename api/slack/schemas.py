"""The Slack request body of the integration guide, as one of the gateway's request bodies."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from common.requests.models import IntegrationType, RequestBody


class SlackRequest(RequestBody):
    channel_id: str = Field(min_length=1, max_length=64)
    thread_id: str | None = Field(default=None, max_length=64)
    slack_user_id: str = Field(min_length=1, max_length=64)
    slack_team_id: str = Field(min_length=1, max_length=64)

    def integration(self) -> IntegrationType:
        return "slack"

    def integration_context(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "thread_id": self.thread_id,
            "slack_user_id": self.slack_user_id,
            "slack_team_id": self.slack_team_id,
        }
