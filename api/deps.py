"""Shared state of the gateway process and the dependencies routes take with `Depends`."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Annotated

import asyncpg
from arq.connections import ArqRedis
from fastapi import Depends, Request

from api.errors import ApiError
from common.agents import AgentRegistry
from common.auth import API_KEY_PREFIX, AuthError, Principal, decode_jwt, hash_api_key, lookup_api_key
from common.hub import Hub
from common.settings import Settings
from common.streams import StreamsRedis, StreamWriter


@dataclass
class Gateway:
    settings: Settings
    db: asyncpg.Pool
    streams: StreamsRedis
    queue: ArqRedis
    hub: Hub
    writer: StreamWriter
    agents: AgentRegistry
    _key_cache: dict[str, tuple[float, Principal | None]] = field(default_factory=dict)
    _token_cache: dict[bytes, Principal] = field(default_factory=dict)

    async def principal_for_key(self, key: str) -> Principal | None:
        """API keys are looked up by hash, with a short cache so a hot client costs no query."""
        now = time.monotonic()
        digest = hash_api_key(key)  # the cache holds no secrets
        cached = self._key_cache.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        principal = await lookup_api_key(self.db, key)
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[digest] = (now + self.settings.api_key_cache_seconds, principal)
        return principal

    def principal_for_token(self, token: str) -> Principal:
        """A verified JWT stays valid until its `exp`: remembering it spares a hot client the decode."""
        digest = hashlib.sha256(token.encode()).digest()  # the cache holds no tokens
        cached = self._token_cache.get(digest)
        if cached is not None and cached.expires_at is not None and cached.expires_at > time.time():
            return cached
        principal = decode_jwt(token, self.settings)
        if len(self._token_cache) > 10_000:
            self._token_cache.clear()
        self._token_cache[digest] = principal
        return principal


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def _credential(request: Request) -> str:
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, "missing credentials: send Authorization: Bearer <token> or x-api-key")
    return value.strip()


async def get_principal(request: Request, gateway: GatewayDep) -> Principal:
    credential = _credential(request)
    if credential.startswith(API_KEY_PREFIX):
        principal = await gateway.principal_for_key(credential)
        if principal is None:
            raise ApiError(401, "invalid API key")
    else:
        try:
            principal = gateway.principal_for_token(credential)
        except AuthError as exc:
            raise ApiError(401, str(exc)) from None
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
