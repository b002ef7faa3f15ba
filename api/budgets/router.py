"""Budgets: what a user has left (`/me`), and the tenant's and users' overrides (`admin` scope, same tenant)."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Gateway, GatewayDep, PrincipalDep, require_scope
from api.errors import Forbidden, Invalid, responses
from common.platform.credentials import SCOPE_ADMIN, SCOPE_REQUESTS, Principal
from common.usage import budgets

router = APIRouter(
    prefix="/api/v1/budgets",
    tags=["budgets"],
    dependencies=[Depends(require_scope(SCOPE_REQUESTS))],
    responses=responses(Invalid),
)

UserId = Annotated[str, Path(min_length=1, max_length=255)]


class Limits(BaseModel):
    """An override: null keeps the BUDGET_* default, 0 turns a budget off."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_day: int | None = Field(default=None, ge=0)
    tokens_per_month: int | None = Field(default=None, ge=0)
    cost_usd_per_day: float | None = Field(default=None, ge=0, le=1e12)
    cost_usd_per_month: float | None = Field(default=None, ge=0, le=1e12)


def _admin(who: Principal) -> None:
    if SCOPE_ADMIN not in who.scopes:
        raise Forbidden(f"budgets of others need the {SCOPE_ADMIN!r} scope")


def _left(limit: float, spent: float) -> float | None:
    return max(0.0, limit - spent) if limit > 0 else None


async def _report(
    db: asyncpg.Pool, settings: Any, tenant_id: str, user_id: str, scopes: tuple[budgets.Scope, ...] = budgets.SCOPES
) -> dict[str, Any]:
    """Every budget of these scopes: limit (0 = off), used this period (from Postgres), remaining, reset."""
    found = await budgets.overrides(db, tenant_id, user_id)
    out = []
    for b in budgets.budgets_for(settings, found, tenant_id, user_id):
        if b.scope not in scopes:
            continue
        tokens, cost = await budgets.used(db, b)
        left_tokens = _left(b.tokens, tokens)
        out.append(
            {
                "scope": b.scope,
                "user_id": b.user_id or None,
                "period": b.period,
                "resets_at": b.resets_at.isoformat().replace("+00:00", "Z"),
                "tokens": {
                    "limit": b.tokens,
                    "used": tokens,
                    "remaining": None if left_tokens is None else int(left_tokens),
                },
                "cost_usd": {
                    "limit": b.cost_usd,
                    "used": round(cost, 6),
                    "remaining": None if (left := _left(b.cost_usd, cost)) is None else round(left, 6),
                },
            }
        )
    overrides = {scope: found.get(scope) for scope in scopes}
    return {"tenant_id": tenant_id, "budgets": out, "overrides": overrides}


async def _store(gw: Gateway, tenant_id: str, user_id: str, limits: Limits) -> None:
    values = limits.model_dump()
    await gw.db.execute(
        f"""
        INSERT INTO budgets (tenant_id, user_id, {", ".join(budgets.LIMITS)}) VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (tenant_id, user_id) DO UPDATE
           SET {", ".join(f"{name} = EXCLUDED.{name}" for name in budgets.LIMITS)}, updated_at = now()
        """,
        tenant_id,
        user_id,
        *(values[name] for name in budgets.LIMITS),
    )
    if gw.budgets is not None:
        gw.budgets.forget(tenant_id)


@router.get("/me")
async def mine(gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    return await _report(gw.db, gw.settings, who.tenant_id, who.user_id)


@router.get("/tenant")
async def tenant(gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    _admin(who)
    return await _report(gw.db, gw.settings, who.tenant_id, "", ("tenant",))


@router.put("/tenant")
async def set_tenant(limits: Limits, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    _admin(who)
    await _store(gw, who.tenant_id, "", limits)
    return await _report(gw.db, gw.settings, who.tenant_id, "", ("tenant",))


@router.get("/users/{user_id}")
async def user(user_id: UserId, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    if user_id != who.user_id:
        _admin(who)
    return await _report(gw.db, gw.settings, who.tenant_id, user_id, ("user",))


@router.put("/users/{user_id}")
async def set_user(user_id: UserId, limits: Limits, gw: GatewayDep, who: PrincipalDep) -> dict[str, Any]:
    _admin(who)
    await _store(gw, who.tenant_id, user_id, limits)
    return await _report(gw.db, gw.settings, who.tenant_id, user_id, ("user",))
