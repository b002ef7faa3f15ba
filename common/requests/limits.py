"""Per-user and per-tenant limits, shared by every gateway replica through Redis.

Request rates use GCRA (a token bucket kept as one timestamp per limit); unfinished
requests and open SSE streams are sorted sets scored by when an entry lapses, so a
crashed gateway's entries expire by themselves. Each check is one atomic script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from common.platform import lua
from common.platform.keys import open_streams_key, rate_key, running_key
from common.platform.settings import Settings
from common.usage.budgets import Budget

log = logging.getLogger(__name__)

REFUSALS = Counter("relaygate_limit_refusals_total", "Requests and streams refused by a limit", ["limit"])

WINDOW_MS = 60_000

_ADMIT = lua.load(__file__, "admit.lua", WINDOW_MS=WINDOW_MS)

_OPEN_STREAM = lua.load(__file__, "open_stream.lua")

_RENEW = lua.load(__file__, "renew.lua")


@dataclass(frozen=True)
class Refusal:
    """A limit said no: `limit` names it (also the metric label), `retry_after` is in seconds."""

    limit: str
    detail: str
    retry_after: int


StillActive = Callable[[list[str]], Awaitable[set[str]]]
Seed = Callable[[Budget], Awaitable[None]]


def max_reply_tokens_refusal(metadata: dict[str, Any], ceiling: int) -> str | None:
    """Why the reply length a request asks for is over MAX_REPLY_TOKENS, or None when it is within."""
    if ceiling <= 0:
        return None
    offline = metadata.get("offline")
    asked = [metadata.get("max_tokens"), offline.get("tokens") if isinstance(offline, dict) else None]
    for value in asked:
        if isinstance(value, int | float) and value > ceiling:
            return f"max_reply_tokens: a reply of {int(value)} tokens was asked for; the limit is {ceiling}"
    return None


class Limits:
    """Admission checks for one gateway process."""

    def __init__(self, redis: Any, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._admit = redis.register_script(_ADMIT)
        self._open_stream = redis.register_script(_OPEN_STREAM)
        self._renew = redis.register_script(_RENEW)

    def _rates(self, tenant_id: str, user_id: str, integration: str) -> list[tuple[str, str, int]]:
        s = self.settings
        wanted = [
            ("user_requests_per_minute", rate_key(tenant_id, "user", user_id), s.rate_limit_user_per_minute),
            ("tenant_requests_per_minute", rate_key(tenant_id, "tenant", ""), s.rate_limit_tenant_per_minute),
            (
                "integration_requests_per_minute",
                rate_key(tenant_id, "integration", integration),
                s.rate_limit_integration_per_minute,
            ),
        ]
        return [(name, key, limit) for name, key, limit in wanted if limit > 0]

    async def admit_request(
        self,
        tenant_id: str,
        user_id: str,
        integration: str,
        request_id: str,
        still_active: StillActive,
        *,
        lease_seconds: float | None = None,
        count_running: bool = True,
        budgets: Sequence[Budget] = (),
        seed: Seed | None = None,
    ) -> Refusal | None:
        """Check the budgets, then count a new request against the rates and the user's unfinished requests.

        A budget whose usage is not in Redis yet is seeded (`seed`, from Postgres) and the check
        repeated. When the unfinished set is full, its members are checked against Postgres once
        (`still_active`) and finished ones dropped: only a user at the cap pays that query.
        A flow run holds its place for `lease_seconds` (its own time limit) at most;
        `count_running=False` counts against the rates only.
        """
        spendable = [b for b in budgets if b.active]
        rates = self._rates(tenant_id, user_id, integration)
        cap = self.settings.max_running_requests_per_user if count_running else 0
        if not (spendable or rates or cap > 0):
            return None  # every limit is off: nothing to check or count
        keys = [b.key for b in spendable] + [key for _, key, _ in rates] + [running_key(tenant_id, user_id)]
        lease = lease_seconds if lease_seconds is not None else self.settings.request_timeout_seconds
        args: list[Any] = [
            len(spendable),
            *(x for b in spendable for x in (b.tokens, repr(b.cost_usd))),
            len(rates),
            *(WINDOW_MS // limit or 1 for _, _, limit in rates),
            cap,
            request_id,
            int(lease * 1000),
        ]
        reconciled, seeded = False, 0
        while True:
            result = await self._admit(keys=keys, args=args)
            code = int(result[0])
            if code == 0:
                return None
            if code == -1 and seed is not None and seeded <= len(spendable):
                seeded += 1
                await seed(spendable[int(result[1]) - 1])
                continue
            if code < 0:
                return (
                    _over_budget(spendable[int(result[1]) - 1], int(result[2]), result[3])
                    if code == -2
                    else _refused("budget", "budget: usage could not be counted; retry", 1000)
                )
            if code <= len(rates):
                name, _, limit = rates[code - 1]
                return _refused(name, f"{name}: more than {limit} requests a minute", int(result[1]))
            members = [m.decode() if isinstance(m, bytes) else str(m) for m in result[2:]]
            if not reconciled:
                reconciled = True
                finished = set(members) - await still_active(members)
                if finished:
                    await self.redis.zrem(keys[-1], *finished)
                    continue
            break
        return _refused(
            "running_requests_per_user", f"running_requests_per_user: {cap} requests are still queued or running", 1000
        )

    async def release_request(self, tenant_id: str, user_id: str, request_id: str) -> None:
        """A request counted by `admit_request` was not stored after all."""
        if self.settings.max_running_requests_per_user <= 0:
            return
        with contextlib.suppress(Exception):
            await self.redis.zrem(running_key(tenant_id, user_id), request_id)


def _over_budget(budget: Budget, kind: int, used: Any) -> Refusal:
    """429 until the budget's period resets."""
    spent = float(used.decode() if isinstance(used, bytes) else used)
    what = f"{int(spent)} of {budget.tokens} tokens" if kind == 0 else f"{spent:.4f} of {budget.cost_usd:g} USD"
    detail = (
        f"budget: {budget.scope} {'tokens' if kind == 0 else 'cost'} per {budget.period}: {what} used;"
        f" resets at {budget.resets_at.isoformat().replace('+00:00', 'Z')}"
    )
    return _refused("budget", detail, budget.seconds_left() * 1000)


def _refused(limit: str, detail: str, retry_ms: int) -> Refusal:
    REFUSALS.labels(limit).inc()
    return Refusal(limit, detail, max(1, -(-retry_ms // 1000)))


@dataclass
class StreamSlots:
    """Open SSE streams of this process, counted per process here and per user in Redis (only while
    MAX_STREAMS_PER_USER is on: with it off, opening and closing a stream costs no round trip)."""

    limits: Limits
    lease_seconds: float = 60.0
    _open: dict[str, tuple[str, str]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def count(self) -> int:
        return len(self._open)

    @property
    def _per_user(self) -> bool:
        return self.limits.settings.max_streams_per_user > 0

    async def acquire(self, tenant_id: str, user_id: str) -> tuple[str | None, Refusal | None]:
        """(slot id, None) when the stream may open, else (None, why not). Touches Redis before the 200."""
        s = self.limits.settings
        if 0 < s.max_streams_per_process <= len(self._open):
            return None, _refused(
                "streams_per_process",
                "streams_per_process: this gateway holds "
                f"{s.max_streams_per_process} streams; retry (another replica may take it)",
                1000,
            )
        slot = uuid.uuid4().hex
        self._open[slot] = (tenant_id, user_id)
        if not self._per_user:
            return slot, None
        try:
            admitted = await self.limits._open_stream(
                keys=[open_streams_key(tenant_id, user_id)],
                args=[s.max_streams_per_user, slot, int(self.lease_seconds * 1000)],
            )
        except BaseException:
            self._open.pop(slot, None)
            raise
        if not admitted:
            self._open.pop(slot, None)
            return None, _refused(
                "streams_per_user", f"streams_per_user: {s.max_streams_per_user} streams are already open", 1000
            )
        return slot, None

    def release(self, slot: str) -> None:
        """Free a slot (sync: it runs while a cancelled response unwinds); Redis is told in the background."""
        owner = self._open.pop(slot, None)
        if owner is None or not self._per_user:
            return
        task = asyncio.get_running_loop().create_task(self._forget(owner, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Wait until Redis has been told of every released slot."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _forget(self, owner: tuple[str, str], slot: str) -> None:
        with contextlib.suppress(Exception):
            await self.limits.redis.zrem(open_streams_key(*owner), slot)

    async def renew_forever(self) -> None:
        """Extend the leases of this process's open streams, so only a crashed process's lapse."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew_once()
            except Exception as exc:
                log.warning("stream lease renewal failed", extra={"error": repr(exc)})

    async def renew_once(self) -> None:
        if not self._per_user:
            return
        by_key: dict[str, list[str]] = {}
        for slot, owner in list(self._open.items()):
            by_key.setdefault(open_streams_key(*owner), []).append(slot)
        if not by_key:
            return
        if self.limits.settings.stream_redis_cluster:
            for key, slots in by_key.items():
                await self.limits._renew(keys=[key], args=[int(self.lease_seconds * 1000), len(slots), *slots])
            return
        args: list[Any] = [int(self.lease_seconds * 1000)]
        for slots in by_key.values():
            args += [len(slots), *slots]
        await self.limits._renew(keys=list(by_key), args=args)
