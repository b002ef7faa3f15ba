"""Shared state of the gateway process and the dependencies routes take with `Depends`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

import asyncpg
from arq.connections import ArqRedis
from fastapi import Depends, Request

from api.auth import Authenticator, LookupBudgetExceeded
from api.errors import Forbidden, ServiceUnavailable, Unauthorized
from api.streams.capacity import StreamCapacity
from common.agents.registry import AgentRegistry
from common.platform.credentials import API_KEY_PREFIX, AuthError, Principal
from common.platform.settings import Settings
from common.requests.limits import Limits, StreamSlots
from common.streams.hub import Hub
from common.streams.protocol import StreamsRedis
from common.streams.writer import StreamWriter
from common.usage.budgets import BudgetBook


@dataclass
class Gateway:
    settings: Settings
    db: asyncpg.Pool
    streams: StreamsRedis
    queue: ArqRedis
    hub: Hub
    writer: StreamWriter
    agents: AgentRegistry
    auth: Authenticator = field(default_factory=Authenticator)
    limits: Limits | None = None  # None: no rate or concurrency limits (e.g. a Gateway built by a test)
    slots: StreamSlots | None = None
    capacity: StreamCapacity | None = None  # None: no descriptor guard (streams are counted by `slots`)
    budgets: BudgetBook | None = None  # None: no budgets (e.g. a Gateway built by a test)


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
        raise Unauthorized("missing credentials: send Authorization: Bearer <token> or x-api-key")
    return value.strip()


async def get_principal(request: Request, gateway: GatewayDep) -> Principal:
    credential = _credential(request)
    if credential.startswith(API_KEY_PREFIX):
        try:
            principal = await gateway.auth.principal_for_key(gateway.db, gateway.settings, credential)
        except LookupBudgetExceeded:
            raise ServiceUnavailable("too many unknown API keys; retry shortly", headers={"Retry-After": "1"}) from None
        if principal is None:
            raise Unauthorized("invalid API key")
    else:
        try:
            principal = gateway.auth.principal_for_token(gateway.settings, credential)
        except AuthError as exc:
            raise Unauthorized(str(exc)) from None
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_scope(scope: str, *alternatives: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency (for a route or a router) that answers 403 unless the credential allows `scope`
    (or one of `alternatives`, for a route that serves several kinds of work).

    Scopes are in `common.platform.credentials`: a credential naming none of the route scopes may use every
    route but /metrics; one naming some may use only those routes.
    """
    wanted = (scope, *alternatives)

    async def check(principal: PrincipalDep) -> Principal:
        if not any(principal.allows(s) for s in wanted):
            raise Forbidden(f"this credential lacks the {' or '.join(repr(s) for s in wanted)} scope")
        return principal

    return check
