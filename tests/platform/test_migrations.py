"""Migrations apply in strict order, numbered without gaps; a database migrated under the old names upgrades
without applying anything twice."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import pytest

from common.platform import db
from tests.conftest import Infra, _external_database


def test_versions_are_numbered_one_to_n_without_gaps() -> None:
    numbers = [int(re.match(r"(\d{4})_", version).group(1)) for version, _ in db.migrations()]  # type: ignore[union-attr]
    assert numbers == list(range(1, len(numbers) + 1))


def test_every_old_name_maps_to_a_migration() -> None:
    versions = {version for version, _ in db.migrations()}
    assert set(db.RENAMED.values()) <= versions
    assert not set(db.RENAMED) & versions


def test_a_database_migrated_under_the_old_names_upgrades_without_reapplying(infra: Infra) -> None:
    url = _external_database(infra.database_url)
    asyncio.run(db.migrate(url))
    asyncio.run(
        _execute(
            url,
            "UPDATE schema_migrations SET version = $1 WHERE version = $2",
            *[(old, new) for old, new in db.RENAMED.items()],
        )
    )
    assert set(db.RENAMED) <= asyncio.run(_versions(url))

    assert asyncio.run(db.migrate(url)) == []
    assert asyncio.run(_versions(url)) == {version for version, _ in db.migrations()}


def test_a_migration_numbered_before_an_applied_one_is_refused(infra: Infra) -> None:
    url = _external_database(infra.database_url)
    asyncio.run(db.migrate(url))
    asyncio.run(_execute(url, "DELETE FROM schema_migrations WHERE version = $1", ("0002_auth_edges",)))
    with pytest.raises(RuntimeError, match="0002_auth_edges sorts before the applied"):
        asyncio.run(db.migrate(url))
    assert "0002_auth_edges" not in asyncio.run(_versions(url))


async def _execute(url: str, query: str, *args: tuple[str, ...]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(query, args)
    finally:
        await conn.close()


async def _versions(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    finally:
        await conn.close()
