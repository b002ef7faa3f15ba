"""Token and cost budgets per tenant and per user, per UTC day and month.

Postgres is the truth (`usage_daily`, kept at finish time; `budgets` holds the overrides). Redis holds
each budget's usage in the current period, one hash per budget and period that the gateway's admission
script reads with the other limits (common.requests.limits) and workers add to whenever an attempt's usage
is added to its request (its finish, a hand-back, a pause for an approval, the reaper's count of a lost
attempt). A hash is
seeded from Postgres when missing and lives at most RESYNC_SECONDS, so Redis drifts from the truth
for no longer than that. A worker whose addition takes a budget past SOFT_SHARE emits
`budget.threshold` to the CloudEvents sink, once per budget and period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import asyncpg

from common.platform import lua, sink
from common.platform.batching import pipelined
from common.platform.keys import budget_key
from common.platform.outages import STORE_ERRORS
from common.platform.settings import Settings
from common.usage.models import Usage

log = logging.getLogger(__name__)

Scope = Literal["tenant", "user"]
Period = Literal["day", "month"]
SCOPES: tuple[Scope, ...] = ("tenant", "user")
PERIODS: tuple[Period, ...] = ("day", "month")
Overrides = dict[Scope, dict[str, float | None]]
LIMITS = ("tokens_per_day", "tokens_per_month", "cost_usd_per_day", "cost_usd_per_month")

RESYNC_SECONDS = 300
SOFT_SHARE = 0.8
OVERRIDE_CACHE_SECONDS = 5.0

_SEED = lua.load(__file__, "seed.lua")

_FEED = lua.load(__file__, "feed.lua")


@dataclass(frozen=True)
class Budget:
    """One budget in its current period: limits (0 = off) and where its usage is counted."""

    tenant_id: str
    scope: Scope
    user_id: str  # '' for the tenant's
    period: Period
    tokens: int
    cost_usd: float
    now: datetime = field(compare=False)

    @property
    def active(self) -> bool:
        return self.tokens > 0 or self.cost_usd > 0

    @property
    def first_day(self) -> date:
        today = self.now.date()
        return today if self.period == "day" else today.replace(day=1)

    @property
    def resets_at(self) -> datetime:
        start = datetime.combine(self.first_day, datetime.min.time(), UTC)
        if self.period == "day":
            return start + timedelta(days=1)
        return (start + timedelta(days=32)).replace(day=1)

    @property
    def key(self) -> str:
        period_id = self.first_day.isoformat() if self.period == "day" else self.first_day.isoformat()[:7]
        return budget_key(self.tenant_id, self.scope, self.user_id, period_id)

    def seconds_left(self) -> int:
        return max(1, int((self.resets_at - self.now).total_seconds() + 0.999))

    def describe(self) -> str:
        return f"{self.scope} {self.period}"


def _default(settings: Settings, scope: Scope, limit: str) -> float:
    return float(getattr(settings, f"budget_{scope}_{limit}"))


async def overrides(db: asyncpg.Pool | asyncpg.Connection, tenant_id: str, user_id: str) -> Overrides:
    """The tenant's and the user's override rows (a missing row or column: the setting's default)."""
    rows = await db.fetch(
        f"SELECT user_id, {', '.join(LIMITS)} FROM budgets WHERE tenant_id = $1 AND user_id = ANY($2::text[])",
        tenant_id,
        ["", user_id],
    )
    found: Overrides = {}
    for row in rows:
        scope: Scope = "tenant" if row["user_id"] == "" else "user"
        found[scope] = {name: None if row[name] is None else float(row[name]) for name in LIMITS}
    return found


def budgets_for(
    settings: Settings,
    rows: Overrides,
    tenant_id: str,
    user_id: str,
    now: datetime | None = None,
) -> list[Budget]:
    """The four budgets of a user (tenant day and month, user day and month), on or off."""
    now = now or datetime.now(UTC)
    out = []
    for scope in SCOPES:
        row = rows.get(scope, {})
        for period in PERIODS:
            limits = {}
            for kind in ("tokens", "cost_usd"):
                name = f"{kind}_per_{period}"
                value = row.get(name)
                limits[kind] = _default(settings, scope, name) if value is None else value
            out.append(
                Budget(
                    tenant_id,
                    scope,
                    user_id if scope == "user" else "",
                    period,
                    int(limits["tokens"]),
                    limits["cost_usd"],
                    now,
                )
            )
    return out


async def used(db: asyncpg.Pool | asyncpg.Connection, budget: Budget) -> tuple[int, float]:
    """(tokens, USD) used in the budget's period so far, from the daily rollup."""
    row = await db.fetchrow(
        """
        SELECT coalesce(sum(input_tokens + output_tokens), 0)::bigint AS tokens,
               coalesce(sum(cost_usd), 0)::float8 AS cost
          FROM usage_daily
         WHERE tenant_id = $1 AND day >= $2 AND ($3 = '' OR user_id = $3)
        """,
        budget.tenant_id,
        budget.first_day,
        budget.user_id,
    )
    assert row is not None
    return int(row["tokens"]), float(row["cost"])


async def seed(redis: Any, db: asyncpg.Pool, budget: Budget) -> None:
    """Put a budget's usage from Postgres into Redis, unless another process just did."""
    tokens, cost = await used(db, budget)
    ttl_ms = min(RESYNC_SECONDS, budget.seconds_left()) * 1000
    await redis.register_script(_SEED)(keys=[budget.key], args=[tokens, repr(cost), ttl_ms])


@dataclass
class BudgetBook:
    """A gateway's view of the overrides, cached briefly (a change reaches every replica within
    OVERRIDE_CACHE_SECONDS; the replica that made it sees it at once)."""

    db: asyncpg.Pool
    settings: Settings
    _cache: dict[tuple[str, str], tuple[float, asyncio.Future[Overrides]]] = field(default_factory=dict)

    async def budgets(self, tenant_id: str, user_id: str) -> list[Budget]:
        """The user's budgets; a burst of requests from one user shares one lookup (a failed one is not kept)."""
        key, now = (tenant_id, user_id), time.monotonic()
        entry = self._cache.get(key)
        if entry is None or entry[0] < now:
            if len(self._cache) > 10_000:
                self._cache.clear()
            lookup = asyncio.ensure_future(overrides(self.db, tenant_id, user_id))
            lookup.add_done_callback(_retrieved)
            entry = self._cache[key] = (now + OVERRIDE_CACHE_SECONDS, lookup)
        try:
            found = await asyncio.shield(entry[1])
        except Exception:
            if self._cache.get(key) is entry:
                del self._cache[key]
            raise
        return budgets_for(self.settings, found, tenant_id, user_id)

    def forget(self, tenant_id: str) -> None:
        for key in [k for k in self._cache if k[0] == tenant_id]:
            self._cache.pop(key, None)


async def record(redis: Any, tenant_id: str, user_id: str, usage: Usage, correlation_id: str = "") -> list[Budget]:
    """Add a finished attempt's usage to its budgets in Redis (those a gateway is counting) and report
    each budget it took past the soft threshold (returned too). Concurrent calls (a burst of endings)
    share one pipeline."""
    if not (usage.input_tokens or usage.output_tokens or usage.cost_usd):
        return []
    now = datetime.now(UTC)
    every = [
        Budget(tenant_id, scope, user_id if scope == "user" else "", period, 0, 0.0, now)
        for scope in SCOPES
        for period in PERIODS
    ]
    keys = [b.key for b in every] + [f"{b.key}:soft" for b in every]
    args: list[Any] = [
        usage.input_tokens + usage.output_tokens,
        repr(usage.cost_usd),
        SOFT_SHARE,
        *(b.seconds_left() * 1000 for b in every),
    ]
    crossed = []
    fed = await pipelined(redis).script(redis.register_script(_FEED), keys, args)
    for index, tokens, cost, token_limit, cost_limit in fed:
        budget = every[int(index) - 1]
        crossed.append(budget)
        sink.emit(
            "budget.threshold",
            budget.key,
            {
                "scope": budget.scope,
                "user_id": budget.user_id or None,
                "period": budget.period,
                "resets_at": budget.resets_at.isoformat(),
                "share": SOFT_SHARE,
                "tokens": {"used": int(float(tokens)), "limit": int(float(token_limit))},
                "cost_usd": {"used": float(cost), "limit": float(cost_limit)},
            },
            tenant_id=tenant_id,
            correlation_id=correlation_id,
        )
    return crossed


async def count(redis: Any, tenant_id: str, user_id: str, usage: Usage, correlation_id: str = "") -> bool:
    """`record`, for a caller that goes on without Redis (False then): what it could not add reaches the
    budgets at their next seeding from Postgres, which holds every attempt's usage."""
    try:
        await record(redis, tenant_id, user_id, usage, correlation_id)
    except STORE_ERRORS as exc:
        log.warning("counting usage against budgets failed", extra={"tenant_id": tenant_id, "error": repr(exc)})
        return False
    return True


def _retrieved(lookup: asyncio.Future[Overrides]) -> None:
    """A lookup whose every waiter left still had its outcome read (no "never retrieved" warning)."""
    if not lookup.cancelled():
        lookup.exception()
