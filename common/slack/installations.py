"""Slack installations: which tenant a workspace is, its bot token and its app's signing secret.

A single-workspace install needs SLACK_SIGNING_SECRET, SLACK_BOT_TOKEN and SLACK_TEAM_ID; more
workspaces are rows of `slack_installations`. An installation belongs to exactly one tenant
(a row's `tenant_id`; SLACK_TENANT_ID for the settings' one), and nothing of another
tenant's ever reaches it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from common.platform.settings import Settings

_COLUMNS = "team_id, tenant_id, bot_token, signing_secret, bot_user_id"


@dataclass(frozen=True)
class Installation:
    team_id: str
    tenant_id: str
    bot_token: str
    signing_secret: str = ""
    bot_user_id: str | None = None

    def __repr__(self) -> str:  # the token and the secret never reach a log line
        return f"Installation(team_id={self.team_id!r}, tenant_id={self.tenant_id!r})"


def _of_row(row: asyncpg.Record) -> Installation:
    return Installation(row["team_id"], row["tenant_id"], row["bot_token"], row["signing_secret"], row["bot_user_id"])


def from_settings(settings: Settings, team_id: str) -> Installation | None:
    """The SLACK_BOT_TOKEN installation, if `team_id` is its SLACK_TEAM_ID (Settings requires one with the
    token, so no other workspace is ever answered with it). It always belongs to SLACK_TENANT_ID."""
    token = settings.slack_bot_token.get_secret_value()
    if token and team_id and team_id == settings.slack_team_id:
        return Installation(team_id, settings.slack_tenant_id, token, settings.slack_signing_secret.get_secret_value())
    return None


async def installation(db: asyncpg.Pool | asyncpg.Connection, settings: Settings, team_id: str) -> Installation | None:
    """The installation of workspace `team_id`, read now (the dispatcher and saved overrides use this)."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM slack_installations WHERE team_id = $1", team_id)
    return _of_row(row) if row is not None else from_settings(settings, team_id)


async def of_tenant(
    db: asyncpg.Pool | asyncpg.Connection, settings: Settings, tenant_id: str, team_id: str
) -> Installation | None:
    """The installation `team_id` names, only when it belongs to `tenant_id` (never another tenant's bot)."""
    found = await installation(db, settings, team_id)
    return found if found is not None and found.tenant_id == tenant_id else None


@dataclass
class InstallationCache:
    """The gateway's copy of `slack_installations`, so a Slack request costs no query before its signature is checked.

    The copy is reloaded when older than MAX_AGE seconds; a workspace it does not know reloads it
    at most every MISS_RELOAD seconds, however many requests name unknown workspaces.
    """

    MAX_AGE = 30.0
    MISS_RELOAD = 1.0

    clock: Callable[[], float] = time.monotonic
    loads: int = 0  # reloads made, for tests
    _rows: dict[str, Installation] = field(default_factory=dict)
    _loaded_at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _due(self, team_id: str | None, settings: Settings) -> bool:
        if self._loaded_at is None or self.clock() - self._loaded_at >= self.MAX_AGE:
            return True
        if team_id is None or team_id in self._rows or team_id == settings.slack_team_id:
            return False
        return self.clock() - self._loaded_at >= self.MISS_RELOAD

    async def _fresh(self, db: asyncpg.Pool, settings: Settings, team_id: str | None) -> None:
        if not self._due(team_id, settings):
            return
        async with self._lock:
            if self._due(team_id, settings):  # another request may have reloaded while this one waited
                rows = await db.fetch(f"SELECT {_COLUMNS} FROM slack_installations")
                self._rows = {row["team_id"]: _of_row(row) for row in rows}
                self._loaded_at = self.clock()
                self.loads += 1

    async def get(self, db: asyncpg.Pool, settings: Settings, team_id: str) -> Installation | None:
        await self._fresh(db, settings, team_id)
        return self._rows.get(team_id) or from_settings(settings, team_id)

    async def signing_secrets(self, db: asyncpg.Pool, settings: Settings) -> list[str]:
        """Every app's signing secret: only for a body that names no workspace (Slack's `url_verification`)."""
        await self._fresh(db, settings, None)
        found = [settings.slack_signing_secret.get_secret_value(), *(i.signing_secret for i in self._rows.values())]
        return [s for s in dict.fromkeys(found) if s]
