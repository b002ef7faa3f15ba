"""A worker process that dies is found by its presence, not only by its lease: the reaper requeues its
attempts once they go two heartbeats unrenewed with neither its Postgres lock nor its Redis key left, while
a live holder, one heard in either store, or a fresh beat keeps them running. On real Postgres and Valkey."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis
from arq.constants import in_progress_key_prefix

from common.platform.keys import presence_key
from common.platform.presence import Presence, judge
from common.queue import enqueue as queue
from common.requests import lifecycle
from common.streams.protocol import StreamsRedis, connect
from tests.conftest import Stack, wait_until
from tests.requests.test_heartbeat import running
from tests.support.app import App
from tests.support.cluster import EmbeddedValkeyCluster
from tests.support.streams import done_for, offline, read_until, text_of, wait_status
from workers import flows, maintenance
from workers.offline_model import compose_reply
from workers.runner import WorkerRuntime

HEARTBEAT = 0.25  # the presence tests' own: the Redis key lives two of them


@dataclass
class Quiet:
    """The quiet database (tests/conftest.py: no worker reaps its rows) and the suite's Valkey."""

    app: App
    db: asyncpg.Pool
    url: str

    @property
    def streams(self) -> StreamsRedis:
        return self.app.gateway.streams


@pytest.fixture
def q(app: App, quiet_db: asyncpg.Pool, quiet_database_url: str) -> Quiet:
    return Quiet(app, quiet_db, quiet_database_url)


def presence_of(q: Quiet) -> Presence:
    return Presence(q.url, q.streams, HEARTBEAT)


async def held_by(q: Quiet, holder: int, unrenewed_seconds: float) -> str:
    """A running attempt with a long lease, claimed by the process with presence key `holder`, last renewed
    that long ago."""
    request_id = await running(q.db, lease_seconds=600)
    await q.db.execute(
        "UPDATE request_logs SET lease_holder = $2, updated_at = now() - make_interval(secs => $3)"
        " WHERE request_id = $1",
        request_id,
        holder,
        unrenewed_seconds,
    )
    return request_id


async def reap(q: Quiet) -> dict[str, bool]:
    """One reaper pass, as a worker's (two heartbeats unrenewed): the request ids it requeued, each with
    whether its holder was gone (rather than its lease lapsed)."""
    async with q.db.acquire() as conn:
        _, unlocked = await lifecycle.suspects(conn, 2 * HEARTBEAT)
        gone, _ = await judge(q.streams, [], unlocked, outage=False)
        requeued, failed = await lifecycle.reap_expired(conn, 5, gone, 2 * HEARTBEAT)
    assert not failed
    return {r["request_id"]: r["holder_gone"] for r in requeued}


async def test_a_dead_holders_attempt_is_requeued_long_before_its_lease_lapses(q: Quiet) -> None:
    presence = presence_of(q)
    await presence.open()
    request_id = await held_by(q, presence.key, unrenewed_seconds=5)
    try:
        assert request_id not in await reap(q), "a live holder's attempt was taken"
    finally:
        await presence.close()
    # Its lock goes when its backend sees the client leave (at once), its Redis key two heartbeats later.
    deadline = time.monotonic() + 5
    while request_id not in (found := await reap(q)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert found.get(request_id) is True
    row = await q.db.fetchrow("SELECT status, attempt FROM request_logs WHERE request_id = $1", request_id)
    assert (row["status"], row["attempt"]) == ("queued", 2)


async def test_a_holder_heard_in_either_store_or_renewed_lately_keeps_its_attempts(q: Quiet) -> None:
    """Cut off from Postgres (no lock) but refreshing its Redis key; its Redis key lost (a Redis restart)
    while it holds its lock; a beat within two heartbeats: none of them is taken for gone."""
    presence = presence_of(q)
    await presence.open()
    try:
        locked = await held_by(q, presence.key, unrenewed_seconds=5)
        await q.streams.delete(presence_key(presence.key))  # Redis restarted; the lock holds
        cut_off, beaten = 2_000_000_001, 2_000_000_002  # keys no process holds a lock for
        in_redis = await held_by(q, cut_off, unrenewed_seconds=5)
        await q.streams.set(presence_key(cut_off), 1, px=10_000)
        fresh = await held_by(q, beaten, unrenewed_seconds=0)
        assert not {locked, in_redis, fresh} & set(await reap(q))
        async with q.db.acquire() as conn:
            assert beaten not in (await lifecycle.suspects(conn, 2 * HEARTBEAT))[1]
            # Even named gone, an attempt renewed within two heartbeats stays.
            requeued, _ = await lifecycle.reap_expired(conn, 5, [beaten], 2 * HEARTBEAT)
            assert fresh not in {r["request_id"] for r in requeued}
        await q.streams.delete(presence_key(cut_off))
        assert set(await reap(q)) & {locked, in_redis, fresh} == {in_redis}
    finally:
        await presence.close()


async def test_presence_reconnects_with_its_key(q: Quiet) -> None:
    presence = presence_of(q)
    await presence.open()

    async def holder() -> int | None:
        """The backend holding the presence lock of `presence.key`."""
        pid: int | None = await q.db.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted"
            " AND classid = hashtext('relaygate.presence')::oid AND objid = $1::int::oid",
            presence.key,
        )
        return pid

    try:
        key, backend = presence.key, await holder()
        assert backend and await q.streams.exists(presence_key(key))
        assert await q.db.fetchval("SELECT pg_terminate_backend($1)", backend)
        deadline = time.monotonic() + 10
        while (now := await holder()) in (None, backend) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert now not in (None, backend), "the lock was not taken again"
        assert presence.held and presence.key == key
    finally:
        await presence.close()


async def test_a_reconnect_waits_for_its_key_and_keeps_every_key_it_held_present(
    q: Quiet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection left may hold the lock a while (its backend has not noticed): the key is taken back
    once free; past OWN_KEY_TRIES a new one is drawn, and the old one's Redis key stays refreshed, so the
    attempts claimed under it are not taken for gone."""
    monkeypatch.setattr("common.platform.presence.OWN_KEY_TRIES", 8)  # 2 s
    reconnect = asyncio.Event()  # presence's connects wait for it, so the stale backend takes the key first
    reconnect.set()
    connect = asyncpg.connect

    async def gated(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        await reconnect.wait()
        return await connect(*args, **kwargs)

    monkeypatch.setattr("common.platform.presence.asyncpg.connect", gated)
    presence = presence_of(q)
    await presence.open()
    stale = await asyncpg.connect(q.url)  # stands in for the backend left behind
    try:
        first = presence.key

        async def cut_and_hold(hold_seconds: float) -> None:
            pid = await q.db.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted"
                " AND classid = hashtext('relaygate.presence')::oid AND objid = $1::int::oid",
                presence.key,
            )
            reconnect.clear()
            await q.db.fetchval("SELECT pg_terminate_backend($1)", pid)
            while not await stale.fetchval("SELECT pg_try_advisory_lock(hashtext('relaygate.presence'), $1)", first):
                await asyncio.sleep(0.01)
            reconnect.set()
            await asyncio.sleep(hold_seconds)
            await stale.execute("SELECT pg_advisory_unlock(hashtext('relaygate.presence'), $1)", first)

        await cut_and_hold(1.0)
        deadline = time.monotonic() + 10
        while not presence.held and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert presence.key == first and presence.keys == [first]

        await cut_and_hold(5.0)  # past the tries: a new key
        while presence.key == first and time.monotonic() < deadline + 10:
            await asyncio.sleep(0.05)
        assert presence.key != first and presence.keys == [first, presence.key]
        await q.streams.delete(presence_key(first))
        await asyncio.sleep(2 * HEARTBEAT)
        assert await q.streams.exists(presence_key(first), presence_key(presence.key)) == 2
    finally:
        await stale.close()
        await presence.close()


async def test_two_processes_never_share_a_key(q: Quiet, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = iter([7, 7, 8])
    monkeypatch.setattr("common.platform.presence.secrets.randbelow", lambda n: next(keys) - 1)
    first, second = presence_of(q), presence_of(q)
    await first.open()
    await second.open()
    try:
        assert (first.key, second.key) == (7, 8)
    finally:
        await first.close()
        await second.close()


async def test_presence_keys_on_a_valkey_cluster(q: Quiet, valkey_cluster: EmbeddedValkeyCluster) -> None:
    """STREAM_REDIS_CLUSTER: the refresh writes a key and a reaper reads many in one MGET (one hash tag)."""
    cluster = connect(valkey_cluster.url, cluster=True, max_connections=4)
    presence = Presence(q.url, cluster, HEARTBEAT)
    await presence.open()
    try:
        absent = 2_000_000_021
        assert await judge(cluster, [], [presence.key, absent], outage=False) == ([absent], [])
    finally:
        await presence.close()
        await cluster.aclose()


async def test_a_lapsed_lease_is_spared_after_an_outage_while_its_holder_is_heard_from(q: Quiet) -> None:
    """Postgres was away longer than the lease: every lease lapsed, but a holder still refreshing its Redis
    key is alive and will beat again. A reaper that itself lost Postgres within the last lease spares it;
    one that did not (the holder alone lost Postgres), or a holder not heard from, gets the lease's retry.
    Requests and flow runs alike."""
    settings = q.app.settings.model_copy(update={"database_url": q.url})
    arq = await queue.connect(settings.queue_redis_url)
    gw = q.app.gateway
    reaper = presence_of(q)
    await reaper.open()
    rt = WorkerRuntime(settings=settings, db=q.db, streams=q.streams, queue=arq, writer=gw.writer, agents=gw.agents)
    rt.presence = reaper
    try:
        alive, silent = 2_000_000_031, 2_000_000_032
        await q.streams.set(presence_key(alive), 1, px=60_000)
        lapsed = {h: await running(q.db, lease_seconds=-1) for h in (alive, silent)}
        for holder, request_id in lapsed.items():
            await q.db.execute("UPDATE request_logs SET lease_holder = $2 WHERE request_id = $1", request_id, holder)

        runs = {h: await running_run(q.db, h) for h in (alive, silent)}

        async def statuses() -> dict[int, tuple[str, str]]:
            return {h: ((await row_of(q, lapsed[h]))[0], await run_status(q.db, runs[h])) for h in lapsed}

        async def reap() -> None:
            await maintenance.reap_once(rt)
            await flows.reap_once(rt)

        legacy = await running(q.db, lease_seconds=-1)  # claimed by a worker from before presence: no holder
        legacy_run = await running_run(q.db, None)
        rt.postgres_trouble_at = time.monotonic()  # this reaper's own beats just failed too
        await reap()
        assert await statuses() == {alive: ("running", "RUNNING"), silent: ("queued", "PENDING")}
        assert (await row_of(q, legacy))[0] == "queued"
        assert await run_status(q.db, legacy_run) == "PENDING"
        rt.postgres_trouble_at = time.monotonic() - settings.lease_seconds - 1  # it never lost Postgres lately
        await reap()
        assert await statuses() == {alive: ("queued", "PENDING"), silent: ("queued", "PENDING")}
    finally:
        await reaper.close()
        await arq.aclose()


async def running_run(db: asyncpg.Pool, holder: int | None) -> str:
    """A flow run claimed by the process with presence key `holder`, its lease lapsed a second ago."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    await db.execute(
        "INSERT INTO flow_runs_audit (run_id, correlation_id, flow_id, tenant_id, user_id, input_data, session_id,"
        " status, lease_holder, lease_expires_at, started_at)"
        " VALUES ($1, $1, 'f1', 't-outage', 'alice', '{}', gen_random_uuid(), 'RUNNING', $2,"
        " now() - interval '1 second', now())",
        run_id,
        holder,
    )
    return run_id


async def run_status(db: asyncpg.Pool, run_id: str) -> str:
    status: str = await db.fetchval("SELECT status FROM flow_runs_audit WHERE run_id = $1", run_id)
    return status


async def row_of(q: Quiet, request_id: str) -> tuple[str, int]:
    found = await q.db.fetchrow("SELECT status, attempt FROM request_logs WHERE request_id = $1", request_id)
    return found["status"], found["attempt"]


def test_kill_9_mid_reply_resumes_before_the_lease_would_lapse(stack: Stack) -> None:
    """With a 60 s lease (HEARTBEAT_SECONDS 0.5), a killed worker's reply resumes on another within seconds."""
    lease = 60.0
    # The `chaos` queue's only workers (tests/conftest.py's chaos_workers starts its own again when asked).
    for w in [w for w in stack.workers if w.poll() is None and "chaos" in str(w.args)]:
        stack.stop_worker(w)
    extra = [stack.start_worker("chaos", wait=False, LEASE_SECONDS=str(lease)) for _ in range(2)]
    try:
        for w in extra:
            stack.wait_ready(w)
        c = stack.client()
        r = c.post(
            "/api/v1/requests/web",
            json={"content": "gone", "agent_id": "chaos", "new_session": True, "metadata": offline(150, 30)},
        ).json()
        seen = read_until(c, r["stream_url"], lambda e: e.event == "token" and e.json()["seq"] >= 4)
        # Claimed, its job's in-progress key lives a lease again (two heartbeats while the claim was pending).
        jobs = redis.Redis.from_url(stack.infra.redis_url)
        wait_until(lambda: jobs.pttl(in_progress_key_prefix + r["request_id"]) > 2000, 5, "the key to live a lease")
        os.kill(stack.worker_running(r["request_id"]), signal.SIGKILL)
        killed_at = time.monotonic()
        rest = read_until(c, r["stream_url"], lambda e: e.event == "run.retrying", last_event_id=seen[-1].id)
        assert time.monotonic() - killed_at < lease / 2, "the retry waited for the lease"  # ~1.3 s here
        rest += read_until(c, r["stream_url"], done_for(r["request_id"]), last_event_id=rest[-1].id, timeout=60)
        assert text_of(seen + rest, r["request_id"]) == "".join(compose_reply("gone", 150))
        assert wait_status(c, r["request_id"], {"completed"})["attempt"] == 2
        found_by = [line for w in stack.workers for line in stack.worker_log(w).splitlines() if r["request_id"] in line]
        assert any("worker gone; requeued" in line for line in found_by), "not found by its presence"
    finally:
        for w in extra:
            if w.poll() is None:
                stack.stop_worker(w)
