"""Overrides are rows only where a user changed something (lazy); every query is scoped to the tenant."""

from __future__ import annotations

from typing import Any

from api.delivery.schemas import Delivery, Override, OverrideCreate, OverrideUpdate, UserConfigs, Verified
from api.deps import Gateway
from api.errors import Forbidden, Invalid, NotFound
from common.delivery import configs as channel_configs
from common.delivery import verification
from common.delivery.configs import Channel, ChannelConfig, ConfigError
from common.platform import outbound
from common.platform.credentials import Principal
from common.slack import access as slack_access

ADMIN_SCOPE = "admin"


def authorize(who: Principal, user_id: str) -> None:
    """A user manages their own delivery channels; an `admin` manages anyone's in the same tenant."""
    if user_id != who.user_id and ADMIN_SCOPE not in who.scopes:
        raise Forbidden("only the user themself or an admin of the tenant may manage these integrations")


def shown(cfg: ChannelConfig) -> ChannelConfig:
    return cfg.model_copy(update={"config": channel_configs.mask(cfg.config)})


async def user_configs(gw: Gateway, who: Principal, user_id: str) -> UserConfigs:
    authorize(who, user_id)
    system = await channel_configs.defaults(gw.db, gw.settings, who.tenant_id)
    user = await channel_configs.overrides(gw.db, who.tenant_id, user_id)
    return UserConfigs(
        user_id=user_id,
        user_overrides={k: shown(v) for k, v in user.items()},
        effective_configs={k: shown(v) for k, v in channel_configs.effective(system, user).items()},
        using_integration_defaults=not user,
    )


def _checked(channel: Channel, cfg: ChannelConfig) -> ChannelConfig:
    try:
        clean = channel_configs.validate_config(channel, cfg.config, enabled=cfg.enabled)
    except ConfigError as exc:
        raise Invalid(exc.errors) from None  # type: ignore[arg-type]
    return cfg.model_copy(update={"config": clean})


async def _reachable(gw: Gateway, channel: Channel, cfg: ChannelConfig) -> None:
    """A WEBHOOK URL must pass the outbound guard when it is saved (and again at every delivery)."""
    url = cfg.config.get("url") if channel == "WEBHOOK" else None
    if url:
        try:
            await outbound.check(str(url), gw.settings.outbound_policy())
        except outbound.OutboundError as exc:
            raise Invalid([{"field": "config.url", "message": str(exc)}]) from None


async def _allowed(gw: Gateway, who: Principal, user_id: str, channel: Channel, cfg: ChannelConfig) -> None:
    """An enabled SLACK override may name only its tenant's workspace and a channel the user asked the bot in."""
    if channel != "SLACK" or not cfg.enabled:
        return
    try:
        await slack_access.destination(gw.db, gw.settings, who.tenant_id, user_id, cfg.config)
    except slack_access.Refused as exc:
        raise Invalid([{"field": exc.field, "message": exc.message}]) from None


async def _store(gw: Gateway, who: Principal, user_id: str, channel: Channel, cfg: ChannelConfig) -> Override:
    await _reachable(gw, channel, cfg)
    await _allowed(gw, who, user_id, channel, cfg)
    await channel_configs.save_override(gw.db, who.tenant_id, user_id, channel, cfg)
    to = verification.destination(channel, cfg.config) if cfg.enabled else None
    status = await verification.request(gw.db, gw.queue, who.tenant_id, user_id, channel, to) if to else None
    return Override(user_id=user_id, integration_type=channel, verification=status, **shown(cfg).model_dump())


def _apply(base: ChannelConfig, changes: dict[str, Any]) -> ChannelConfig:
    """Unset fields keep the base; a config block is merged key by key into the base's."""
    given = changes.pop("config", None) or {}
    if isinstance(given.get("headers"), dict):
        given = {**given, "headers": channel_configs.unmask_headers(base.config.get("headers") or {}, given["headers"])}
    config = {**base.config, **given}
    return ChannelConfig(**{**base.model_dump(), **changes, "config": config})


async def create(gw: Gateway, who: Principal, user_id: str, body: OverrideCreate) -> Override:
    """A new override starts from the system default, so a partial body changes only what it names."""
    authorize(who, user_id)
    system = await channel_configs.defaults(gw.db, gw.settings, who.tenant_id)
    changes = body.model_dump(exclude_none=True, exclude={"integration_type"})
    cfg = _checked(body.integration_type, _apply(system[body.integration_type], changes))
    return await _store(gw, who, user_id, body.integration_type, cfg)


async def update(gw: Gateway, who: Principal, user_id: str, channel: Channel, body: OverrideUpdate) -> Override:
    """Changes the override, or creates one from the default when the user has none yet."""
    authorize(who, user_id)
    current = (await channel_configs.overrides(gw.db, who.tenant_id, user_id)).get(channel)
    if current is None:
        current = (await channel_configs.defaults(gw.db, gw.settings, who.tenant_id))[channel]
    cfg = _checked(channel, _apply(current, body.model_dump(exclude_none=True)))
    return await _store(gw, who, user_id, channel, cfg)


async def verify(gw: Gateway, who: Principal, user_id: str, channel: Channel, code: str) -> Verified:
    """The code sent to the destination the user's override names: right, and replies may go there."""
    authorize(who, user_id)
    if channel not in verification.FIELDS:
        raise Invalid(f"{channel} destinations need no verification")
    current = (await channel_configs.overrides(gw.db, who.tenant_id, user_id)).get(channel)
    to = verification.destination(channel, current.config) if current else None
    outcome = await verification.confirm(gw.db, who.tenant_id, user_id, channel, to, code)
    if not outcome.verified:
        raise Invalid(outcome.problem or "not verified")
    return Verified(integration_type=channel, destination=str(outcome.destination), verified=True)


async def delete(gw: Gateway, who: Principal, user_id: str, channel: Channel) -> None:
    authorize(who, user_id)
    if not await channel_configs.delete_overrides(gw.db, who.tenant_id, user_id, channel):
        raise NotFound(f"no {channel} override for this user")


async def reset(gw: Gateway, who: Principal, user_id: str) -> int:
    authorize(who, user_id)
    return await channel_configs.delete_overrides(gw.db, who.tenant_id, user_id)


async def deliveries(gw: Gateway, who: Principal, user_id: str, limit: int, offset: int) -> list[Delivery]:
    authorize(who, user_id)
    rows = await gw.db.fetch(
        "SELECT delivery_id::text, request_id::text, session_id::text, integration_type, attempt, status,"
        " error_message, created_at, updated_at FROM delivery_logs WHERE tenant_id = $1 AND user_id = $2"
        " ORDER BY id DESC LIMIT $3 OFFSET $4",
        who.tenant_id,
        user_id,
        limit,
        offset,
    )
    return [Delivery(**dict(row)) for row in rows]
