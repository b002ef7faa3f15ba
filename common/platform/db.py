"""Postgres pool and versioned SQL migrations applied once under an advisory lock."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

import asyncpg
import orjson

from common.platform import metrics
from common.platform.batching import Batcher

log = logging.getLogger(__name__)

# Any fixed 64-bit number: all replicas that start together serialise on it.
_MIGRATION_LOCK = 0x72656C6179676174


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


class _PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """Released without a reset query: relaygate keeps no session state on pooled connections (its
    advisory locks are transaction-scoped; no LISTEN, SET or cursors outside a transaction), and the
    default reset is a Postgres round trip on every release. asyncpg still ends an open transaction."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, name: str = "main") -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        connection_class=_PooledConnection,
    )
    assert pool is not None
    metrics.track_pool(name, pool)
    return pool


B = TypeVar("B", bound=Batcher[Any, Any])

_BATCHERS: dict[asyncpg.Pool, dict[str, Batcher[Any, Any]]] = {}


def batcher(pool: asyncpg.Pool, name: str, make: Callable[[str], B]) -> B:
    """The pool's batcher of statement `name` (common.platform.batching), made by `make(name)` on first use."""
    named = _BATCHERS.get(pool)
    if named is None:
        for closed in [p for p in _BATCHERS if p.is_closing()]:
            del _BATCHERS[closed]
        named = _BATCHERS[pool] = {}
    found = named.get(name)
    if found is None:
        found = named[name] = make(name)
    return found  # type: ignore[return-value]


# Versions recorded under the names the migrations had before they were numbered without gaps.
RENAMED = {
    "0003_auth_edges": "0002_auth_edges",
    "0004_delivery": "0003_delivery",
    "0006_flows": "0004_flows",
    "0007_done_pending": "0005_done_pending",
    "0008_tool_steps": "0006_tool_steps",
    "0009_usage": "0007_usage",
    "0010_budgets": "0008_budgets",
    "0011_schedules": "0009_schedules",
    "0012_attempt_usage": "0010_attempt_usage",
    "0013_destination_verifications": "0011_destination_verifications",
}


def migrations() -> list[tuple[str, str]]:
    """(version, SQL) of every migration file, in the order they apply."""
    folder = resources.files("common.platform") / "migrations"
    files = sorted((p.name, p) for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), path.read_text()) for name, path in files]


async def _recorded(conn: asyncpg.Connection) -> set[str]:
    """The applied versions, with rows written under a migration's old name renamed first."""
    for old, new in RENAMED.items():
        await conn.execute("UPDATE schema_migrations SET version = $2 WHERE version = $1", old, new)
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations in order; returns the versions applied by this call."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = await _recorded(conn)
            for version, sql in migrations():
                if version in done:
                    continue
                if done and version < max(done):
                    raise RuntimeError(
                        f"migration {version} sorts before the applied {max(done)}: number a new "
                        "migration after the last one, never between applied ones"
                    )
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                log.info("migration applied", extra={"version": version})
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied
