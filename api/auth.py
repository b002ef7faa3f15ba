"""Who is calling: API keys and JWTs turned into principals, with the caches that keep it cheap.

Unauthenticated traffic costs nothing: a malformed key is refused without a lookup, a
known-bad one from a bounded negative cache, and lookups of keys no cache knows are
budgeted per second, so a flood of random keys never becomes a Postgres query storm and
never evicts the good keys (they live in their own cache, which only valid keys enter).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from common.platform.credentials import Principal, decode_jwt, hash_api_key, lookup_api_key, well_formed_api_key
from common.platform.settings import Settings

_MAX_ENTRIES = 10_000


class LookupBudgetExceeded(Exception):
    """Too many unknown API keys this second: the caller answers 503 without asking Postgres."""


@dataclass
class _Budget:
    """A token bucket of lookups per second (burst: one second's worth)."""

    tokens: float = 0.0
    at: float = 0.0

    def take(self, rate: float) -> bool:
        now = time.monotonic()
        self.tokens = min(rate, self.tokens + (now - self.at) * rate) if self.at else rate
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


K = TypeVar("K")
V = TypeVar("V")


def _remember(cache: OrderedDict[K, V], key: K, value: V) -> None:
    """Insert as newest; the oldest entries go first once the cache is full."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _MAX_ENTRIES:
        cache.popitem(last=False)


@dataclass
class Authenticator:
    """Caches hold digests, never secrets: a hot client costs no query and no signature check."""

    lookups: int = 0  # Postgres lookups made, for tests and metrics
    _keys: OrderedDict[str, tuple[float, Principal]] = field(default_factory=OrderedDict)
    _bad_keys: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _tokens: OrderedDict[bytes, Principal] = field(default_factory=OrderedDict)
    _budget: _Budget = field(default_factory=_Budget)

    async def principal_for_key(self, db: asyncpg.Pool, settings: Settings, key: str) -> Principal | None:
        """API keys are looked up by hash; answers are cached for API_KEY_CACHE_SECONDS."""
        if not well_formed_api_key(key):
            return None
        now = time.monotonic()
        digest = hash_api_key(key)
        known = self._keys.get(digest)
        if known and known[0] > now:
            return known[1]
        refused_until = self._bad_keys.get(digest)
        if refused_until and refused_until > now:
            return None
        if not self._budget.take(settings.api_key_lookups_per_second):
            raise LookupBudgetExceeded
        self.lookups += 1
        principal = await lookup_api_key(db, key)
        until = now + settings.api_key_cache_seconds
        if principal is None:
            _remember(self._bad_keys, digest, until)
        else:
            self._bad_keys.pop(digest, None)
            _remember(self._keys, digest, (until, principal))
        return principal

    def principal_for_token(self, settings: Settings, token: str) -> Principal:
        """A verified JWT stays valid until its `exp`: remembering it spares a hot client the decode."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._tokens.get(digest)
        if cached is not None and cached.expires_at is not None and cached.expires_at > time.time():
            return cached
        principal = decode_jwt(token, settings)
        _remember(self._tokens, digest, principal)
        return principal
