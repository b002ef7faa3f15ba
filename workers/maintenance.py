"""Background loops of every worker: lease heartbeats, the reaper and periodic sweeps.

They are safe to run in every worker at once: each transition is a conditional update,
so two reapers never requeue the same attempt twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from types import ModuleType

import asyncpg

from common.agents.registry import ModelPrice
from common.platform import metrics, presence, sink
from common.platform.keys import intake_keys
from common.platform.outages import STORE_ERRORS, every, outlast
from common.queue import enqueue as queue
from common.requests import ending, lifecycle
from common.requests import repository as request_repo
from common.usage import budgets
from common.usage.models import Usage
from workers import model, schedules
from workers.attempt import Attempt, Stop
from workers.runner import WorkerRuntime

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
_TRANSIENT = (*STORE_ERRORS, asyncpg.PostgresError)
# A reaper queues a requeued attempt's job right after its commit; unclaimed this long after, the job was
# lost (or waits behind others: queueing it again is then a no-op).
RETRY_GRACE_SECONDS = 3.0


CHECKPOINT_EVERY = 10


async def heartbeat_once(rt: WorkerRuntime, beat: int = 0) -> None:
    """Extend every lease of this worker in one statement, with each attempt's usage so far (what counts
    if the worker is lost); every CHECKPOINT_EVERY beats also store the partial replies that grew (not
    the whole reply every second)."""
    runs = [r for r in rt.active.values() if r.stop is None]
    if not runs:
        return
    leases: list[tuple[str, int, str | None, str | None, Usage, str]] = []
    checkpoint = beat % CHECKPOINT_EVERY == 0
    litellm = await _litellm()
    for r in runs:
        partial = None
        if checkpoint and len(r.parts) > r.checkpointed:
            partial = "".join(r.parts)
            r.checkpointed = len(r.parts)
        leases.append(
            (
                r.payload.request_id,
                r.payload.attempt,
                partial,
                r.last_stream_id,
                _so_far(r, litellm, rt.agents.prices),
                r.meter.model,
            )
        )
    held = await lifecycle.heartbeat(rt.db, leases, rt.settings.lease_seconds)
    for run in runs:
        if run.payload.request_id not in held:
            run.halt(Stop("lease lost", fenced=True))


async def _litellm() -> ModuleType | None:
    """litellm once the model layer is loaded (until then no attempt has called a model)."""
    if not model.ready():
        return None
    try:
        return await model.litellm_module()
    except Exception:
        return None


def _so_far(run: Attempt, litellm: ModuleType | None, prices: dict[str, ModelPrice]) -> Usage:
    """The attempt's usage estimate; a failure to count stores none (it never stops the heartbeat)."""
    try:
        return run.meter.so_far(litellm, prices)
    except Exception as exc:
        log.warning("estimating usage failed", extra={"request_id": run.payload.request_id, "error": repr(exc)})
        return Usage()


async def heartbeats(rt: WorkerRuntime) -> None:
    """The lease loop: every HEARTBEAT_SECONDS, and a failed beat is retried within a quarter of it."""
    beat = 0
    while True:
        started = time.monotonic()
        try:
            await heartbeat_once(rt, beat)
            _stalled(rt, started)
            beat += 1
            await asyncio.sleep(rt.settings.heartbeat_seconds)
        except _TRANSIENT as exc:
            rt.postgres_trouble_at = time.monotonic()
            log.warning("heartbeat failed; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(rt.settings.heartbeat_seconds / 4)


def _stalled(rt: WorkerRuntime, started: float) -> None:
    """A statement that took longer than a heartbeat means Postgres stalled (paused, overloaded, cut off)."""
    now = time.monotonic()
    if now - started > rt.settings.heartbeat_seconds:
        rt.postgres_trouble_at = now


Holders = tuple[list[int], list[int]]
Reaped = tuple[list[asyncpg.Record], list[asyncpg.Record]]


async def reap_pass(
    rt: WorkerRuntime,
    suspects: Callable[[], Awaitable[Holders]],
    reap: Callable[[list[int], list[int]], Awaitable[Reaped]],
) -> Reaped:
    """One reaper pass over requests or flow runs: `suspects()` gives the holders of (lapsed, unlocked)
    attempts, `reap(gone, spare)` requeues (or fails) the lost ones and returns (requeued, failed).

    A lease that lapsed while this process too could not reach Postgres (within the last lease) is spared
    when its holder is heard from in Redis: every worker's beats stopped at once, and a live holder's beats
    resume with Postgres. Only a holder that stays silent, or one that alone lost Postgres, is retried."""
    started = time.monotonic()
    try:
        lapsed, unlocked = await suspects() if rt.presence else ([], [])
        _stalled(rt, started)
        outage = time.monotonic() - rt.postgres_trouble_at < rt.settings.lease_seconds
        gone, spare = await presence.judge(rt.streams, lapsed, unlocked, outage)
        reaped = await reap(gone, spare)
    except _TRANSIENT:
        rt.postgres_trouble_at = time.monotonic()
        raise
    if spare:
        log.warning("Postgres was away: leases of workers heard from in Redis spared", extra={"holders": spare})
    return reaped


async def reap_once(rt: WorkerRuntime) -> None:
    """Requeue the attempts of lost workers: those whose lease lapsed (see `reap_pass` for an outage), and
    those of worker processes gone from both stores (common/platform/presence.py) that went two heartbeats
    unrenewed."""
    unrenewed = 2 * rt.settings.heartbeat_seconds

    # Each acquires inside reap_pass: a pool that cannot connect is Postgres trouble too (a worker with
    # no running attempt sends no beats, so its reaper is what notices an outage).
    async def suspects() -> Holders:
        async with rt.db.acquire() as conn:
            return await lifecycle.suspects(conn, unrenewed)

    async def reap(gone: list[int], spare: list[int]) -> Reaped:
        async with rt.db.acquire() as conn:
            return await lifecycle.reap_expired(conn, MAX_ATTEMPTS, gone, unrenewed, spare)

    requeued, failed = await reap_pass(rt, suspects, reap)
    await count_lost(rt, [*requeued, *failed])
    count_found(requeued, failed)
    for row in requeued:
        log.warning(
            "worker gone; requeued" if row["holder_gone"] else "lease expired; requeued",
            extra={"request_id": row["request_id"], "attempt": row["attempt"], "holder": row["lease_holder"]},
        )
        # The row is queued already; waiting out a Redis restart here starts it seconds after Redis is
        # back, where giving up would leave it to the stalled sweep (10 s later).
        await outlast("requeue", functools.partial(queue.enqueue, rt.queue, *lifecycle.job_for(row)), max_wait=1.0)
    await ending.end_elsewhere(rt, failed)
    await repair_endings_once(rt)
    await requeue_retries_once(rt)


async def requeue_retries_once(rt: WorkerRuntime) -> int:
    """Queue the jobs of retried requests that no worker claimed a few seconds after their requeue: the
    reaper that requeued them died before queueing them. A job still queued makes this a no-op."""
    async with rt.db.acquire() as conn:
        retried = await lifecycle.unqueued_retries(conn, RETRY_GRACE_SECONDS)
    queued = sum(await asyncio.gather(*(queue.enqueue(rt.queue, feature, job) for feature, job in retried)))
    if queued:
        log.warning("retried requests queued again: their requeue's job was lost", extra={"requests": queued})
    return queued


def count_found(*reaped: list[asyncpg.Record]) -> None:
    """relaygate_attempts_lost_total for reaped rows (requests or flow runs): found by presence or by lease."""
    for rows in reaped:
        for row in rows:
            metrics.ATTEMPTS_LOST.labels("presence" if row["holder_gone"] else "lease").inc()


async def count_lost(rt: WorkerRuntime, rows: list[asyncpg.Record]) -> None:
    """What the lost attempts of reaped rows used (their heartbeats' last count, lifecycle.LOST), against
    their budgets now rather than at the budgets' next seeding from Postgres (which has the rest if
    Redis is away: one warning, not one per row)."""
    for row in rows:
        used = Usage(row["lost_input_tokens"], row["lost_output_tokens"], row["lost_cost_usd"], estimated=True)
        if not await budgets.count(rt.streams, row["tenant_id"], row["user_id"], used, row["correlation_id"] or ""):
            return


async def repair_endings_once(rt: WorkerRuntime) -> int:
    """Close the streams of terminal requests whose ender died before writing their `done`, and queue
    their sessions' next requests. Safe in every worker at once: the stream fence writes each ending once."""
    rows = await lifecycle.unended(rt.db, ending.SWEEP_GRACE_SECONDS)
    if rows:
        log.warning("writing endings their writer did not", extra={"requests": [r["request_id"] for r in rows]})
        await ending.end_elsewhere(rt, rows)
    return len(rows)


async def end_unstored_once(rt: WorkerRuntime, older_than_seconds: float = 60) -> int:
    """End the streams of requests a gateway announced but never stored (it died in between).

    Every announced request sits in its bucket's intake set; once old enough, those with a
    row are simply dropped from it. Removing the entry is the claim: one worker ends each.
    """
    keys = intake_keys(rt.settings.stream_buckets)
    cutoff = int((time.time() - older_than_seconds) * 1000)
    pipe = rt.streams.pipeline(transaction=False)
    for key in keys:
        pipe.zrangebyscore(key, "-inf", cutoff, start=0, num=500)
    found = [(key, m.decode()) for key, members in zip(keys, await pipe.execute(), strict=True) for m in members]
    if not found:
        return 0
    ids = [member.split(" ", 1)[1] for _, member in found]
    stored = await request_repo.stored(rt.db, ids)
    ended_now = 0
    for key, member in found:
        session_id, request_id = member.split(" ", 1)
        if not await rt.streams.zrem(key, member) or request_id in stored:
            continue
        await ending.end_unstored(rt.writer, session_id, request_id)
        ended_now += 1
    return ended_now


async def sweep_once(rt: WorkerRuntime) -> None:
    async with rt.db.acquire() as conn:
        overdue = await lifecycle.fail_overdue(conn)
        stalled = await lifecycle.stalled_heads(conn, older_than_seconds=10)
        expired = await lifecycle.expire_sessions(conn)
    await count_lost(rt, overdue)
    await ending.end_elsewhere(rt, overdue)
    await end_unstored_once(rt)
    # Mostly no-ops (the job is still queued: a feature no worker serves, or a long queue), so they go
    # out together and only the jobs actually queued again count.
    requeued = sum(await asyncio.gather(*(queue.enqueue(rt.queue, feature, payload) for feature, payload in stalled)))
    for session in expired:
        sink.emit("session.ended", session["session_id"], {"status": "expired"}, tenant_id=session["tenant_id"])
    if overdue or requeued or expired:
        log.info("sweep", extra={"timed_out": len(overdue), "requeued": requeued, "sessions_expired": len(expired)})


def start(rt: WorkerRuntime) -> list[asyncio.Task[None]]:
    s = rt.settings
    return [
        asyncio.create_task(heartbeats(rt), name="heartbeat"),
        asyncio.create_task(rt.flusher.run(), name="flusher"),
        asyncio.create_task(every(s.reaper_interval_seconds, reap_once, rt), name="reaper"),
        asyncio.create_task(every(s.maintenance_interval_seconds, sweep_once, rt), name="sweeps"),
        asyncio.create_task(every(s.maintenance_interval_seconds, schedules.fire_due_once, rt), name="schedules"),
    ]
