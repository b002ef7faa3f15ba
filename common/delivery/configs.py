"""Integration defaults, user overrides and the effective configuration both gateway and dispatcher use."""

from __future__ import annotations

import time
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.platform import outbound
from common.platform.settings import Settings

Channel = Literal["SLACK", "EMAIL", "WEBHOOK", "SMS", "TEST"]
CHANNELS: tuple[Channel, ...] = ("SLACK", "EMAIL", "WEBHOOK", "SMS", "TEST")
DeliveryStatus = Literal["PENDING", "RETRYING", "SUCCESS", "FAILED", "EXPIRED"]

SECRET_FIELDS = frozenset({"secret", "password", "token", "auth_token", "bot_token", "signing_secret"})
MASK = "********"


class ChannelConfig(BaseModel):
    """One integration's settings: the shape of a default, an override and an effective config."""

    enabled: bool = True
    priority: int = Field(default=1, ge=0, le=100)
    retry_count: int = Field(default=3, ge=0, le=20)
    retry_delay_seconds: int = Field(default=60, ge=0, le=86_400)
    config: dict[str, Any] = Field(default_factory=dict)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlackConfig(_Strict):
    thread_replies: bool = False
    mention_user: bool = False
    include_agent_info: bool = True
    channel_id: str | None = Field(default=None, max_length=64)
    team_id: str | None = Field(default=None, max_length=64)


class EmailConfig(_Strict):
    email_address: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)
    format: Literal["html", "text"] = "html"
    include_agent_info: bool = True
    subject: str | None = Field(default=None, max_length=200)


# Headers every webhook delivery sets itself (Standard Webhooks); a user's own value would be dropped.
WEBHOOK_OWN_HEADERS = frozenset({"content-type", "webhook-id", "webhook-timestamp", "webhook-signature"})


class WebhookConfig(_Strict):
    """`url` also passes the outbound guard when saved (api/delivery) and at every delivery."""

    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    secret: str | None = Field(default=None, pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$")
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)

    @field_validator("headers")
    @classmethod
    def _settable(cls, headers: dict[str, str]) -> dict[str, str]:
        """`Authorization` and other end-to-end headers may be set (the receiver is the user's own, and
        the guard keeps it off private addresses); `Host`, hop-by-hop and the signature headers may not."""
        for name, value in headers.items():
            problem = outbound.header_problem(name, value)
            if problem is None and name.lower() in WEBHOOK_OWN_HEADERS:
                problem = "set by relaygate on every delivery"
            if problem is not None:
                raise ValueError(f"header {name!r}: {problem}")
        return headers


class SmsConfig(_Strict):
    phone_number: str | None = Field(default=None, pattern=r"^\+[1-9]\d{6,14}$")


class TestConfig(BaseModel):
    model_config = ConfigDict(extra="allow")


CONFIG_MODELS: dict[Channel, type[BaseModel]] = {
    "SLACK": SlackConfig,
    "EMAIL": EmailConfig,
    "WEBHOOK": WebhookConfig,
    "SMS": SmsConfig,
    "TEST": TestConfig,
}
# What an enabled channel cannot deliver without (SLACK reaches a Slack request's own thread).
REQUIRED: dict[Channel, tuple[str, ...]] = {
    "EMAIL": ("email_address",),
    "WEBHOOK": ("url", "secret"),
    "SMS": ("phone_number",),
}


class ConfigError(Exception):
    """A config block is invalid; `errors` name each field as `config.<field>`."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


def validate_config(channel: Channel, config: dict[str, Any], *, enabled: bool) -> dict[str, Any]:
    """The normalised config of `channel`, or ConfigError naming what is wrong or missing."""
    try:
        model = CONFIG_MODELS[channel].model_validate(config)
    except ValidationError as exc:
        raise ConfigError(
            [
                {"field": ".".join(["config", *(str(p) for p in err["loc"])]), "message": err["msg"]}
                for err in exc.errors()
            ]
        ) from None
    clean = model.model_dump(exclude_none=True)
    if enabled:
        missing = [name for name in REQUIRED.get(channel, ()) if not clean.get(name)]
        if missing:
            raise ConfigError(
                [
                    {"field": f"config.{name}", "message": f"required for an enabled {channel} integration"}
                    for name in missing
                ]
            )
    return clean


def mask(config: dict[str, Any]) -> dict[str, Any]:
    """A config safe to show: secret values replaced, and every webhook header's value (often a credential)."""
    shown = {k: (MASK if k in SECRET_FIELDS and v else v) for k, v in config.items()}
    if isinstance(shown.get("headers"), dict):
        shown["headers"] = {name: MASK for name in shown["headers"]}
    return shown


def unmask_headers(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` headers where a value still reads MASK (a shown config sent back) keep the stored value."""
    old = stored if isinstance(stored, dict) else {}
    return {name: old.get(name, value) if value == MASK else value for name, value in given.items()}


def available(channel: Channel, settings: Settings, *, slack_installed: bool) -> bool:
    """Whether a default may be on: its service is configured, not merely listed."""
    if channel == "SLACK":
        return slack_installed
    if channel == "EMAIL":
        return bool(settings.smtp_host)
    if channel == "TEST":
        return settings.delivery_test_enabled
    return True


async def slack_installed(db: asyncpg.Pool | asyncpg.Connection, settings: Settings, tenant_id: str) -> bool:
    if settings.slack_bot_token.get_secret_value() and settings.slack_tenant_id == tenant_id:
        return True
    return bool(await db.fetchval("SELECT 1 FROM slack_installations WHERE tenant_id = $1 LIMIT 1", tenant_id))


_DEFAULTS_CACHE_SECONDS = 5.0
_cached: tuple[float, list[asyncpg.Record]] = (0.0, [])


async def _default_rows(db: asyncpg.Pool | asyncpg.Connection) -> list[asyncpg.Record]:
    """The defaults table, read at most every few seconds per process: it changes rarely."""
    global _cached
    now = time.monotonic()
    if now - _cached[0] > _DEFAULTS_CACHE_SECONDS:
        rows = await db.fetch(
            "SELECT integration_type, enabled, priority, retry_count, retry_delay_seconds, config"
            " FROM integration_default_configs ORDER BY priority"
        )
        _cached = (now, list(rows))
    return _cached[1]


async def default_config(db: asyncpg.Pool | asyncpg.Connection, channel: Channel) -> dict[str, Any]:
    """The `config` block of `channel`'s system default (what the operator chose, e.g. a Slack channel)."""
    for row in await _default_rows(db):
        if row["integration_type"] == channel:
            return dict(row["config"])
    return {}


async def defaults_deliver_alone(db: asyncpg.Pool | asyncpg.Connection, settings: Settings) -> bool:
    """Whether a user without overrides gets a finished reply anywhere (only when a default names a destination)."""
    for row in await _default_rows(db):
        channel: Channel = row["integration_type"]
        cfg = ChannelConfig(enabled=row["enabled"], config=dict(row["config"]))
        if channel == "SLACK":
            if cfg.enabled and cfg.config.get("channel_id"):
                return True
        elif available(channel, settings, slack_installed=False) and deliverable(channel, cfg):
            return True
    return False


async def defaults(
    db: asyncpg.Pool | asyncpg.Connection, settings: Settings, tenant_id: str
) -> dict[Channel, ChannelConfig]:
    """The system defaults as they apply now: `enabled` only while the channel is configured."""
    rows = await _default_rows(db)
    slack = await slack_installed(db, settings, tenant_id)
    out: dict[Channel, ChannelConfig] = {}
    for row in rows:
        channel: Channel = row["integration_type"]
        out[channel] = ChannelConfig(
            enabled=row["enabled"] and available(channel, settings, slack_installed=slack),
            priority=row["priority"],
            retry_count=row["retry_count"],
            retry_delay_seconds=row["retry_delay_seconds"],
            config=dict(row["config"]),
        )
    return out


async def overrides(
    db: asyncpg.Pool | asyncpg.Connection, tenant_id: str, user_id: str
) -> dict[Channel, ChannelConfig]:
    rows = await db.fetch(
        "SELECT integration_type, enabled, priority, retry_count, retry_delay_seconds, config"
        " FROM user_integration_configs WHERE tenant_id = $1 AND user_id = $2 ORDER BY priority",
        tenant_id,
        user_id,
    )
    return {
        row["integration_type"]: ChannelConfig(
            enabled=row["enabled"],
            priority=row["priority"],
            retry_count=row["retry_count"],
            retry_delay_seconds=row["retry_delay_seconds"],
            config=dict(row["config"]),
        )
        for row in rows
    }


async def save_override(db: asyncpg.Pool, tenant_id: str, user_id: str, channel: Channel, cfg: ChannelConfig) -> None:
    """Store a user's override of `channel`, replacing the one they had."""
    await db.execute(
        """
        INSERT INTO user_integration_configs (tenant_id, user_id, integration_type, enabled, priority, retry_count,
                                              retry_delay_seconds, config)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (tenant_id, user_id, integration_type) DO UPDATE
           SET enabled = EXCLUDED.enabled, priority = EXCLUDED.priority, retry_count = EXCLUDED.retry_count,
               retry_delay_seconds = EXCLUDED.retry_delay_seconds, config = EXCLUDED.config, updated_at = now()
        """,
        tenant_id,
        user_id,
        channel,
        cfg.enabled,
        cfg.priority,
        cfg.retry_count,
        cfg.retry_delay_seconds,
        cfg.config,
    )


async def disable_override(
    db: asyncpg.Pool, tenant_id: str, user_id: str, channel: Channel, cfg: ChannelConfig
) -> None:
    """Turn `channel` off for the user (a destination that refuses for good); with no override yet, one is made
    from `cfg`, the config in effect, disabled."""
    await db.execute(
        """
        INSERT INTO user_integration_configs (tenant_id, user_id, integration_type, enabled, priority,
                                              retry_count, retry_delay_seconds, config)
        VALUES ($1, $2, $3, false, $4, $5, $6, $7)
        ON CONFLICT (tenant_id, user_id, integration_type) DO UPDATE SET enabled = false, updated_at = now()
        """,
        tenant_id,
        user_id,
        channel,
        cfg.priority,
        cfg.retry_count,
        cfg.retry_delay_seconds,
        cfg.config,
    )


async def delete_overrides(db: asyncpg.Pool, tenant_id: str, user_id: str, channel: Channel | None = None) -> int:
    """Drop the user's override of `channel` (None: of every channel); returns how many there were."""
    if channel is None:
        status: str = await db.execute(
            "DELETE FROM user_integration_configs WHERE tenant_id = $1 AND user_id = $2", tenant_id, user_id
        )
    else:
        status = await db.execute(
            "DELETE FROM user_integration_configs WHERE tenant_id = $1 AND user_id = $2 AND integration_type = $3",
            tenant_id,
            user_id,
            channel,
        )
    return int(status.rsplit(" ", 1)[-1])


def effective(system: dict[Channel, ChannelConfig], user: dict[Channel, ChannelConfig]) -> dict[Channel, ChannelConfig]:
    """An override replaces its channel's default whole; other channels keep the default (lazy)."""
    merged = {**system, **user}
    return dict(sorted(merged.items(), key=lambda item: (item[1].priority, CHANNELS.index(item[0]))))


async def effective_for(
    db: asyncpg.Pool | asyncpg.Connection, settings: Settings, tenant_id: str, user_id: str
) -> dict[Channel, ChannelConfig]:
    return effective(await defaults(db, settings, tenant_id), await overrides(db, tenant_id, user_id))


def deliverable(channel: Channel, cfg: ChannelConfig) -> bool:
    """Enabled and with a destination: an address, a URL, a number (TEST needs none)."""
    return cfg.enabled and all(cfg.config.get(name) for name in REQUIRED.get(channel, ()))
