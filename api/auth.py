"""Who is calling: API keys and JWTs turned into principals, with the caches that keep it cheap."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import asyncpg

from common.auth import Principal, decode_jwt, hash_api_key, lookup_api_key
from common.settings import Settings

_MAX_ENTRIES = 10_000


@dataclass
class Authenticator:
    """Caches hold digests, never secrets: a hot client costs no query and no signature check."""

    _keys: dict[str, tuple[float, Principal | None]] = field(default_factory=dict)
    _tokens: dict[bytes, Principal] = field(default_factory=dict)

    async def principal_for_key(self, db: asyncpg.Pool, settings: Settings, key: str) -> Principal | None:
        """API keys are looked up by hash; a known key stays cached for API_KEY_CACHE_SECONDS."""
        now = time.monotonic()
        digest = hash_api_key(key)
        cached = self._keys.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        principal = await lookup_api_key(db, key)
        if len(self._keys) > _MAX_ENTRIES:
            self._keys.clear()
        self._keys[digest] = (now + settings.api_key_cache_seconds, principal)
        return principal

    def principal_for_token(self, settings: Settings, token: str) -> Principal:
        """A verified JWT stays valid until its `exp`: remembering it spares a hot client the decode."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._tokens.get(digest)
        if cached is not None and cached.expires_at is not None and cached.expires_at > time.time():
            return cached
        principal = decode_jwt(token, settings)
        if len(self._tokens) > _MAX_ENTRIES:
            self._tokens.clear()
        self._tokens[digest] = principal
        return principal
