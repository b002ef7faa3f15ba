"""Where a user's replies may be posted in Slack (a SLACK override's `team_id` and `channel_id`).

Only into a workspace installed for the user's own tenant, and only into a channel (or DM)
where that same user has asked relaygate something through Slack, which proves they are in
it and the bot is too. The operator's default SLACK channel (integration_default_configs) is
allowed as well. The gateway checks this when an override is saved and the dispatcher again
before every post.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from common.delivery import configs as channel_configs
from common.platform.settings import Settings
from common.slack.installations import Installation, of_tenant

# Requests that reach relaygate only through a Slack-signed route carry their channel and workspace.
_ASKED_THERE = """
SELECT 1 FROM request_sessions s JOIN request_logs r ON r.session_id = s.session_id
 WHERE s.tenant_id = $1 AND s.user_id = $2 AND r.tenant_id = $1 AND r.user_id = $2
   AND r.normalized_request->>'integration_type' = 'slack'
   AND r.normalized_request->'integration_context'->>'slack_team_id' = $3
   AND r.normalized_request->'integration_context'->>'channel_id' = $4
 LIMIT 1
"""


class Refused(Exception):
    """The config names a Slack destination this user may not use; `field` is the config key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


async def _operator_default(db: asyncpg.Pool | asyncpg.Connection, settings: Settings, team: str, channel: str) -> bool:
    default = await channel_configs.default_config(db, "SLACK")
    return default.get("channel_id") == channel and (default.get("team_id") or settings.slack_team_id) == team


async def destination(
    db: asyncpg.Pool | asyncpg.Connection, settings: Settings, tenant_id: str, user_id: str, config: dict[str, Any]
) -> Installation | None:
    """The installation that posts to `config`'s channel for this user, None when it names no channel,
    or Refused when the user may not post there."""
    channel = config.get("channel_id")
    if not channel:
        return None
    team = config.get("team_id") or settings.slack_team_id
    if not team:
        raise Refused("config.team_id", "required with channel_id: the Slack workspace (team id) of the channel")
    found = await of_tenant(db, settings, tenant_id, team)
    if found is None:
        raise Refused("config.team_id", f"no Slack workspace {team!r} is installed for this tenant")
    if not (
        await _operator_default(db, settings, team, channel)
        or await db.fetchval(_ASKED_THERE, tenant_id, user_id, team, channel)
    ):
        raise Refused(
            "config.channel_id",
            f"relaygate posts only where this user has asked it something: mention"
            f" the app in {channel!r} (or send it a DM there) first",
        )
    return found
