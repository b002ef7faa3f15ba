"""A user's budget of the day as Redis holds it, for tests of what workers count against it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import redis

from common.platform.keys import budget_key


def counted_today(redis_url: str, tenant_id: str, user_id: str) -> Callable[[], int]:
    """Seed the user's budget of today as a gateway counting it would (nothing used), and return what
    reads the tokens counted against it since."""
    key = budget_key(tenant_id, "user", user_id, datetime.now(UTC).date().isoformat())
    client = redis.Redis.from_url(redis_url)
    client.hset(key, mapping={"tokens": 0, "cost": 0})
    client.expire(key, 3600)
    return lambda: int(client.hget(key, "tokens") or 0)
