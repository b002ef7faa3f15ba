"""A worker process's presence, in both stores: an advisory lock held for the process's life on a Postgres
connection of its own, and a Redis key it refreshes every heartbeat.

Postgres drops the lock as soon as that connection closes, and the kernel closes it when the process dies,
however it dies (kill -9, the OOM killer, a crashed container); the Redis key expires two heartbeats after
the last refresh. Every claim records the claiming process's key (`lease_holder` of a request or a flow
run), and a reaper requeues a running attempt at once, rather than at its lease's end, when it went two
heartbeats unrenewed and its holder is present in neither store (`UNLOCKED`, then `judge`). Either
store alone would mistake a live worker for a dead one: a worker cut off from Postgres for a moment loses
its lock but keeps its key (and its reply streaming), a Redis restart loses every key while the locks
hold. A worker that is only slow or frozen keeps its connection, and so its lock: its attempts wait out
their lease as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import asyncpg

from common.platform.keys import presence_key
from common.platform.outages import POSTGRES_ERRORS, REDIS_ERRORS, outlast
from common.streams.protocol import StreamsRedis

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0  # how often an idle presence connection is checked (a closed one fails the check)
# After a reconnect, tries (0.25 s apart) to take its own key back before drawing a new one: the backend of
# the connection it left may not have noticed yet (Postgres was paused, say) and still holds it.
OWN_KEY_TRIES = 20
# The first key of every presence lock (two-key form: pg_locks shows it as classid, the worker's own as objid).
NAMESPACE = "hashtext('relaygate.presence')"
# SQL: the row's `lease_holder` holds no presence lock (its connection closed, or it was cut off from Postgres).
UNLOCKED = f"""NOT EXISTS (
  SELECT FROM pg_locks l
   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND l.classid = {NAMESPACE}::oid AND l.objid = lease_holder::oid)"""


class Presence:
    """`key` names this process among the live ones, as `lease_holder` and in its Redis key. Every key it
    ever held keeps its Redis key refreshed, so attempts claimed under an earlier one stay present."""

    def __init__(self, dsn: str, streams: StreamsRedis, heartbeat_seconds: float) -> None:
        self.dsn = dsn
        self.streams = streams
        self.heartbeat_seconds = heartbeat_seconds
        self.key = 0
        self.keys: list[int] = []
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        """Take a key no live process holds; from then on keep the lock (a lost connection is reconnected
        at once, and its key taken again) and refresh the Redis key."""
        await outlast("presence", self._connect)
        await self._announce()
        self._tasks = [
            asyncio.create_task(self._keep(), name="presence"),
            asyncio.create_task(self._refresh(), name="presence-refresh"),
        ]

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._conn is not None:
            with contextlib.suppress(*POSTGRES_ERRORS):
                await self._conn.close(timeout=2)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.dsn, command_timeout=CHECK_SECONDS)
        try:
            key = await self._take(conn)
        except BaseException:
            conn.terminate()
            raise
        if key not in self.keys:
            self.keys.append(key)
        self.key, self._conn = key, conn
        conn.add_termination_listener(self._on_closed)

    async def _take(self, conn: asyncpg.Connection) -> int:
        """Its own key again after a reconnect, else a new one no live process holds."""
        lock = f"SELECT pg_try_advisory_lock({NAMESPACE}, $1)"
        if self.key:
            for _ in range(OWN_KEY_TRIES):
                if await conn.fetchval(lock, self.key):
                    return self.key
                await asyncio.sleep(0.25)
            log.warning("presence key still held by the connection left; taking a new one", extra={"key": self.key})
        while True:
            key = secrets.randbelow(2**31 - 1) + 1
            if await conn.fetchval(lock, key):
                return key

    def _on_closed(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._lost.set()

    async def _keep(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), CHECK_SECONDS)
            if not self._lost.is_set():
                try:
                    assert self._conn is not None
                    await self._conn.fetchval("SELECT 1")
                    continue
                except TimeoutError:
                    continue  # Postgres is slow or paused: the connection, and so the lock, may well hold
                except (*POSTGRES_ERRORS, asyncpg.PostgresError) as exc:
                    log.warning("presence connection failed its check", extra={"error": repr(exc)})
            self._lost.clear()
            if self._conn is not None:
                self._conn.remove_termination_listener(self._on_closed)
                self._conn.terminate()
                self._conn = None
            log.warning("presence connection lost; reconnecting")
            await outlast("presence", self._connect, max_wait=1.0)
            log.info("presence held again", extra={"key": self.key})

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            await self._announce()

    async def _announce(self) -> None:
        """Set the Redis keys for two heartbeats; while Redis is away the lock alone shows this process."""
        try:
            for key in self.keys:
                await self.streams.set(presence_key(key), 1, px=int(2000 * self.heartbeat_seconds))
        except REDIS_ERRORS as exc:
            log.debug("presence refresh failed", extra={"error": repr(exc)})


async def _heard(streams: StreamsRedis, holders: list[int]) -> set[int] | None:
    """Which of `holders` refreshed their presence key in Redis within two heartbeats; None while Redis
    cannot say."""
    if not holders:
        return set()
    try:
        found = await streams.mget([presence_key(h) for h in holders])
    except REDIS_ERRORS as exc:
        log.debug("presence keys unreadable", extra={"error": repr(exc)})
        return None
    return {h for h, seen in zip(holders, found, strict=True) if seen is not None}


async def judge(
    streams: StreamsRedis, lapsed: list[int], unlocked: list[int], outage: bool
) -> tuple[list[int], list[int]]:
    """(gone, spare): the `unlocked` holders heard from in neither store; and, when this process saw its own
    Postgres fail within the last lease (`outage`), the `lapsed` holders heard from in Redis, alive (every
    worker's beats stopped at once, and theirs resume with Postgres). Nothing either way while Redis cannot
    say: the leases decide."""
    heard_from = await _heard(streams, [*unlocked, *(lapsed if outage else [])])
    if heard_from is None:
        return [], []
    spare = [h for h in lapsed if h in heard_from] if outage else []
    return [h for h in unlocked if h not in heard_from], spare
