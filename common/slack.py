"""Slack installations: which tenant a workspace is, its bot token and the app's signing secret.

A single-workspace install needs only SLACK_SIGNING_SECRET and SLACK_BOT_TOKEN (tenant
SLACK_TENANT_ID); more workspaces are rows of `slack_installations`.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from common.settings import Settings


@dataclass(frozen=True)
class Installation:
    team_id: str
    tenant_id: str
    bot_token: str
    bot_user_id: str | None = None

    def __repr__(self) -> str:  # the token never reaches a log line
        return f"Installation(team_id={self.team_id!r}, tenant_id={self.tenant_id!r})"


async def installation(db: asyncpg.Pool | asyncpg.Connection, settings: Settings, team_id: str) -> Installation | None:
    row = await db.fetchrow("SELECT team_id, tenant_id, bot_token, bot_user_id FROM slack_installations"
                            " WHERE team_id = $1", team_id)
    if row is not None:
        return Installation(row["team_id"], row["tenant_id"], row["bot_token"], row["bot_user_id"])
    token = settings.slack_bot_token.get_secret_value()
    if token and settings.slack_team_id in ("", team_id):
        return Installation(team_id, settings.slack_tenant_id, token)
    return None


async def signing_secrets(db: asyncpg.Pool | asyncpg.Connection, settings: Settings) -> list[str]:
    """Every signing secret a request may be signed with (one per Slack app)."""
    found = [settings.slack_signing_secret.get_secret_value()]
    found += [r["signing_secret"] for r in await db.fetch("SELECT DISTINCT signing_secret FROM slack_installations")]
    return [s for s in dict.fromkeys(found) if s]
