"""Principals, JWT verification and minting, and hashed API keys."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
from jose import JWTError, jwt

from common.platform.settings import Settings

API_KEY_PREFIX = "rgk_"
KEY_ID_BYTES = 12

# Scopes. A credential with none of the route scopes may use every route but /metrics;
# one with some of them may use only the routes those name.
SCOPE_REQUESTS = "requests"  # POST/GET /api/v1/requests/..., POST /stream
SCOPE_SESSIONS = "sessions"  # /api/v1/sessions/...
SCOPE_METRICS = "metrics"  # GET /metrics (never implied)
SCOPE_RUNS = "runs"  # /v1/runs, /v1/flows, /v1/webhook-configs
SCOPE_INTEGRATIONS = "integrations"  # /api/v1/integration-defaults, /api/v1/users/{id}/integrations|deliveries
ROUTE_SCOPES = frozenset({SCOPE_REQUESTS, SCOPE_SESSIONS, SCOPE_METRICS, SCOPE_RUNS, SCOPE_INTEGRATIONS})
SCOPE_ACT_AS_USER = "act-as-user"  # start requests for any user of the tenant (in a new session)
SCOPE_JOIN_SESSIONS = "join-user-sessions"  # ... and join that user's existing sessions
SCOPE_ADMIN = "admin"  # see the whole tenant's usage and set its budgets


class AuthError(Exception):
    """Credentials missing or invalid; the message is safe to show to the client."""


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    user_id: str
    kind: Literal["user", "tool"] = "user"
    scopes: frozenset[str] = field(default_factory=frozenset)
    via: Literal["jwt", "api_key"] = "jwt"
    expires_at: float | None = None  # a token's `exp`; API keys do not expire by themselves

    def may_act_for(self, user_id: str) -> bool:
        """Everyone acts for themselves; only `act-as-user` holders for other users of their tenant."""
        return user_id == self.user_id or SCOPE_ACT_AS_USER in self.scopes

    def may_join_sessions_of_others(self) -> bool:
        return SCOPE_ACT_AS_USER in self.scopes and SCOPE_JOIN_SESSIONS in self.scopes

    def allows(self, route_scope: str) -> bool:
        """Whether this credential may use the routes of `route_scope` (see ROUTE_SCOPES)."""
        if route_scope in self.scopes:
            return True
        return route_scope != SCOPE_METRICS and not (self.scopes & ROUTE_SCOPES)


def _verification_key(settings: Settings) -> str:
    if settings.jwt_algorithm.startswith("HS"):
        key = settings.jwt_secret_key.get_secret_value()
    else:
        key = settings.jwt_public_key
    if not key:
        raise AuthError("token authentication is not configured")
    return key


def decode_jwt(token: str, settings: Settings) -> Principal:
    """Verify with exactly one algorithm: never the one the token names for itself."""
    audience = settings.jwt_audience or None
    issuer = settings.jwt_issuer or None
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != settings.jwt_algorithm:
            raise AuthError("invalid token")
        claims: dict[str, Any] = jwt.decode(
            token,
            _verification_key(settings),
            algorithms=[settings.jwt_algorithm],
            audience=audience,
            issuer=issuer,
            # python-jose skips a missing `aud` unless it is required; `iss` is checked when set.
            options={
                "require_exp": True,
                "require_sub": True,
                "verify_aud": audience is not None,
                "require_aud": audience is not None,
                "require_iss": issuer is not None,
            },
        )
    except JWTError as exc:
        message = "token expired" if "expired" in str(exc).lower() else "invalid token"
        raise AuthError(message) from None
    tenant = claims.get("tenant_id")
    subject = claims.get("sub")
    if not isinstance(tenant, str) or not tenant or not isinstance(subject, str) or not subject:
        raise AuthError("token lacks sub or tenant_id")
    raw = claims.get("scopes") or []
    listed = raw if isinstance(raw, list) else []
    scopes = raw.split() if isinstance(raw, str) else [x for x in listed if isinstance(x, str)]
    kind: Literal["user", "tool"] = "tool" if claims.get("kind") == "tool" else "user"
    return Principal(
        tenant_id=tenant,
        user_id=subject,
        kind=kind,
        scopes=frozenset(scopes),
        via="jwt",
        expires_at=float(claims["exp"]),
    )


def mint_token(
    settings: Settings,
    *,
    user_id: str,
    tenant_id: str,
    ttl_seconds: int = 24 * 3600,
    scopes: list[str] | None = None,
) -> str:
    """A development HS256 token (RS256 deployments mint tokens with their own identity provider)."""
    if not settings.jwt_algorithm.startswith("HS"):
        raise AuthError(f"cannot mint {settings.jwt_algorithm} tokens: only HS* secrets are held here")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "tenant_id": tenant_id, "iat": now, "exp": now + ttl_seconds}
    if scopes:
        claims["scopes"] = scopes
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return str(jwt.encode(claims, _verification_key(settings), algorithm=settings.jwt_algorithm))


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    tenant_id: str,
    user_id: str,
    kind: Literal["user", "tool"] = "user",
    scopes: list[str] | None = None,
    name: str = "",
) -> tuple[str, str]:
    """Returns (key_id, key). The key is shown once; only its hash is stored."""
    if kind == "tool" and SCOPE_ACT_AS_USER not in (scopes or []):
        scopes = [*(scopes or []), SCOPE_ACT_AS_USER]
    key_id = secrets.token_hex(KEY_ID_BYTES)
    key = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    await conn.execute(
        "INSERT INTO api_keys (key_id, key_hash, tenant_id, user_id, kind, scopes, name)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        key_id,
        hash_api_key(key),
        tenant_id,
        user_id,
        kind,
        scopes or [],
        name,
    )
    return key_id, key


def well_formed_api_key(key: str) -> bool:
    """`rgk_<hex key id>_<43 url-safe chars>`: anything else is refused without a lookup."""
    prefix, _, rest = key.partition(API_KEY_PREFIX)
    key_id, _, secret = rest.partition("_")
    return (
        not prefix
        and len(key_id) in (8, 2 * KEY_ID_BYTES)
        and all(c in "0123456789abcdef" for c in key_id)
        and len(secret) == 43
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in secret)
    )


async def list_api_keys(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str | None) -> list[dict[str, Any]]:
    """Every key (of one tenant, or all), newest first; never the key itself."""
    rows = await conn.fetch(
        "SELECT key_id, tenant_id, user_id, kind, scopes, name, created_at, revoked_at FROM api_keys"
        " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY id DESC",
        tenant_id,
    )
    return [dict(r) for r in rows]


async def revoke_api_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str, tenant_id: str | None) -> bool:
    """Revoke a key; False when no unrevoked key has that id (in that tenant)."""
    result: str = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL"
        " AND ($2::text IS NULL OR tenant_id = $2)",
        key_id,
        tenant_id,
    )
    return result.endswith(" 1")


async def lookup_api_key(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> Principal | None:
    row = await conn.fetchrow(
        "SELECT tenant_id, user_id, kind, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_api_key(key),
    )
    if row is None:
        return None
    return Principal(
        tenant_id=row["tenant_id"],
        user_id=row["user_id"],
        kind="tool" if row["kind"] == "tool" else "user",
        scopes=frozenset(row["scopes"]),
        via="api_key",
    )
