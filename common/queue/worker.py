"""The ARQ worker loop of the agent workers and the dispatcher: woken by enqueues instead of polling,
admitting jobs by capacity.

ARQ's `Worker` polls its queue every `poll_delay` and starts every ready job up to `max_jobs`.
Here an idle worker blocks on the queue's wake list (pushed by `common.queue.enqueue.push`) and
re-checks only every WORKER_POLL_DELAY; and a job is started only while the event loop keeps
up (lag under WORKER_MAX_LAG_MS), so the rest stays queued in Redis, visible to autoscaling.
SIGTERM stops taking jobs; running ones get WORKER_DRAIN_SECONDS to finish (the rest are handed
back by `workers.runner`).

A worker that is not warm yet (its model layer still loading, see `warm`) takes only jobs that
waited COLD_JOB_AGE_SECONDS: a warm worker takes a job within milliseconds, so a job that old has
nobody faster to run it, and a replacement helps at once under a backlog without holding
requests a warm peer would have started already.

A job's in-progress key is renewed while the job runs. Until the job says it is in hand (`settled`: its
claim is in Postgres, where the reaper finds it if this process dies) the key lives `take_seconds` (two
heartbeats), so a job taken by a worker that died before its claim is taken again within seconds; after,
one lease (`in_progress_seconds`), whatever the job's timeout. A Redis or Postgres outage makes the loop
wait and reconnect (common.platform.outages); it never exits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from arq.connections import create_pool
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker

from common.platform.keys import queue_wake_key
from common.platform.outages import STORE_ERRORS, outlast

log = logging.getLogger(__name__)

LAG_PROBE_SECONDS = 0.05
COLD_JOB_AGE_SECONDS = 2.0
BACKLOG_RECHECK_SECONDS = 0.02
PAGE_SLACK = 64


def settled(ctx: dict[str, Any]) -> None:
    """Tell the worker running this job that the job is in hand: its in-progress key may live a lease."""
    if (settle := ctx.get("settle")) is not None:
        settle(ctx["job_id"])


class RelayWorker(Worker):
    def __init__(
        self,
        *args: Any,
        max_lag_ms: float,
        admit_batch: int,
        on_drain: Callable[[], None],
        in_progress_seconds: float,
        take_seconds: float | None = None,
        on_lag: Callable[[float], None] | None = None,
        warm: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.warm = warm
        self.in_progress_timeout_s = in_progress_seconds
        self.take_s = min(take_seconds or in_progress_seconds, in_progress_seconds)
        self.unsettled: set[str] = set()  # running here, their keys living `take_s`
        self.settling: set[str] = set()  # settled since the last renewal: their keys get a lease next
        self.ctx["settle"] = self.settle
        self.wake_key = queue_wake_key(self.queue_name)
        self.max_lag = max_lag_ms / 1000
        self.admit_batch = max(1, admit_batch)
        self.on_drain = on_drain
        self.stopping = False
        self.on_lag = on_lag
        self.lag = 0.0
        self.backlog = False
        self.wakeup = asyncio.Event()

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await outlast(
                "queue connect",
                lambda: create_pool(
                    self.redis_settings,
                    job_deserializer=self.job_deserializer,
                    job_serializer=self.job_serializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                ),
            )
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await outlast("startup", lambda: self.on_startup(self.ctx))  # type: ignore[misc]
        helpers = [
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._probe_lag()),
            asyncio.create_task(self._hold_in_progress()),
            asyncio.create_task(self._hold_taken()),
        ]
        try:
            while True:
                await outlast("queue poll", self._poll_iteration)
                await self._wait()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _poll_iteration(self) -> None:
        """ARQ's iteration, except that a job whose own bookkeeping failed (Redis went away as it
        ended) is logged, not raised into this loop: its in-progress key lapses and it runs again."""
        if self.job_counter < self.max_jobs:
            newest = timestamp_ms() - (0 if self.warm is None or self.warm() else int(COLD_JOB_AGE_SECONDS * 1000))
            await self.start_ready(newest)
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                self.unsettled.discard(job_id)
                self.settling.discard(job_id)
                if not task.cancelled() and (error := task.exception()) is not None:
                    log.warning(
                        "job bookkeeping failed; it runs again after its in-progress key lapses",
                        extra={"job_id": job_id, "error": repr(error)},
                    )
        await self.heart_beat()

    def settle(self, job_id: str) -> None:
        if job_id in self.unsettled:
            self.unsettled.discard(job_id)
            self.settling.add(job_id)

    async def _hold_in_progress(self) -> None:
        """Renew the in-progress keys of the settled jobs running here for a lease, three times a lease."""
        while True:
            await asyncio.sleep(self.in_progress_timeout_s / 3)
            held = [job_id for job_id, task in self.tasks.items() if not task.done() and job_id not in self.unsettled]
            await self._renew(dict.fromkeys(held, self.in_progress_timeout_s))

    async def _hold_taken(self) -> None:
        """Three times per `take_s`: renew the keys of the jobs not settled yet for `take_s`, and give the
        jobs settled since the last time a lease."""
        while True:
            await asyncio.sleep(self.take_s / 3)
            settling, self.settling = self.settling, set()
            taken = [job_id for job_id in self.unsettled if (task := self.tasks.get(job_id)) and not task.done()]
            await self._renew(dict.fromkeys(taken, self.take_s) | dict.fromkeys(settling, self.in_progress_timeout_s))

    async def _renew(self, seconds: dict[str, float]) -> None:
        if not seconds:
            return
        try:
            async with self.pool.pipeline(transaction=False) as pipe:
                for job_id, ttl in seconds.items():
                    pipe.pexpire(in_progress_key_prefix + job_id, int(ttl * 1000))
                await pipe.execute()
        except STORE_ERRORS as exc:
            log.warning("renewing in-progress keys failed", extra={"error": repr(exc)})

    async def _wait(self) -> None:
        """Until there may be work: a wake, a finished job (when jobs were left queued), or a timeout."""
        timeout = BACKLOG_RECHECK_SECONDS if self.backlog else self.poll_delay_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wakeup.wait()
        self.wakeup.clear()

    async def _listen(self) -> None:
        """Block on the wake list (one connection); each push wakes the loop."""
        while True:
            try:
                got = await self.pool.blpop([self.wake_key], timeout=max(1, int(self.poll_delay_s)))  # type: ignore[misc]
                if got:
                    self.wakeup.set()
            except STORE_ERRORS as exc:
                log.warning("queue wake list unavailable", extra={"error": repr(exc)})
                await asyncio.sleep(1)

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.lag = max(0.0, loop.time() - before - LAG_PROBE_SECONDS)
            if self.on_lag is not None:
                self.on_lag(self.lag)

    def room(self) -> int:
        """How many more jobs this worker starts now: none while its loop lags (unless idle)."""
        if self.job_counter > 0 and self.lag > self.max_lag:
            return 0
        return max(0, min(self.admit_batch, self.max_jobs - self.job_counter))

    async def start_ready(self, newest: int) -> None:
        """Start up to `room()` of the oldest jobs ready by `newest` that run nowhere, in a few pipelined
        round trips.

        ARQ claims one job at a time (a WATCH/MULTI exchange each), and every round trip of a busy worker
        waits a whole turn of its event loop: a burst of hundreds took seconds. A running job stays in the
        queue until it ends, so ARQ's read of 5 x max_jobs ids had each poll of a busy worker check
        thousands of running jobs to start a few; here the queue is read from its oldest in pages sized to
        what is wanted (twice this worker's own jobs and room: as many again may run on peers), doubling
        until enough are free.
        """
        room = self.room()
        free: list[str] = []
        offset, page = 0, 2 * (len(self.tasks) + room) + PAGE_SLACK
        while True:
            ids = await self.pool.zrangebyscore(self.queue_name, min=float("-inf"), max=newest, start=offset, num=page)
            offset += len(ids)
            more = len(ids) == page
            candidates = [job_id for job_id in (j.decode() for j in ids) if job_id not in self.tasks]
            if candidates:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for job_id in candidates:
                        pipe.exists(in_progress_key_prefix + job_id)
                    running = await pipe.execute()
                free += [job_id for job_id, busy in zip(candidates, running, strict=True) if not busy]
            if len(free) >= room or not more:
                break
            page *= 2
        self.backlog = len(free) > room or more
        chosen = free[:room]
        if not chosen:
            return
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in chosen:
                pipe.set(in_progress_key_prefix + job_id, b"1", px=int(self.take_s * 1000), nx=True)
                pipe.zscore(self.queue_name, job_id)
            replies = await pipe.execute()
        now = timestamp_ms()
        stale = []
        for n, job_id in enumerate(chosen):
            claimed, score = replies[2 * n], replies[2 * n + 1]
            if not claimed:
                continue
            if not score or score > now:
                stale.append(in_progress_key_prefix + job_id)
                continue
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(score)))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
            self.unsettled.add(job_id)
        if stale:
            await self.pool.delete(*stale)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self.backlog:
            self.wakeup.set()

    async def _sleep_until_tasks_complete(self) -> None:
        """Until every job here has ended. ARQ counts entries of `tasks`, which only the poll loop prunes:
        with Redis down that loop waits in `outlast`, and a stop would sit out the whole drain period."""
        while running := [task for task in self.tasks.values() if not task.done()]:
            await asyncio.wait(running)

    async def close(self) -> None:
        """ARQ's close, except that Redis being down as the worker stops is a warning, not a traceback
        that skips `on_shutdown` (which closes the worker's own connections)."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if self._pool is None:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await self.pool.delete(self.health_check_key)
        except STORE_ERRORS as exc:
            log.warning(
                "queue unreachable while stopping; the health-check key expires by itself", extra={"error": repr(exc)}
            )
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.close(close_connection_pool=True)
        self._pool = None

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        # Only the first stop signal counts: a terminal's Ctrl-C reaches the whole process group and then
        # `relaygate dev` (or `relaygate worker --processes`) sends its own SIGTERM.
        if self.stopping:
            return
        self.stopping = True
        self.on_drain()
        super().handle_sig_wait_for_completion(signum)

    def handle_sig(self, signum: signal.Signals) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.on_drain()
        super().handle_sig(signum)
