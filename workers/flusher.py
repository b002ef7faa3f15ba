"""One flush loop per worker process: the tokens of every running attempt, a few round trips per tick.

Every running reply gets at most one `token` event per tick (of at most TOKEN_FLUSH_TOKENS tokens),
written by `StreamWriter.append_many`, which also reads the cancel flags. The tick is TOKEN_FLUSH_MS,
widened with the number of running replies past TOKEN_EVENTS_PER_SECOND, since every event costs
the stream, each gateway and each client as much as a token does. A tick is written in phases of
at most REPLIES_PER_PHASE replies (those whose slot falls in it), at least PHASE_SECONDS apart:
the stages after the worker (Valkey, the gateways' hubs and sockets, the clients) take a phase's
events as one burst, one after another, so a reply's relay latency waits on the events ahead of
it in its burst; each phase costs a round trip here and a read in each gateway. A reply's first
token or a full batch is written at once, whatever the phase. The loop sleeps while nothing is
pending (TOKEN_FLUSH_MS=0 never spins). A store error keeps every token for the next try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Counter

from common.platform.outages import STORE_ERRORS
from common.platform.settings import Settings
from common.streams.writer import StreamWriter
from workers.attempt import Attempt, Stop

log = logging.getLogger(__name__)

TOKENS = Counter("relaygate_worker_token_events_total", "Token events written")
FLUSHES = Counter("relaygate_worker_flushes_total", "Round trips of the token flusher")
CANCEL_POLL_SECONDS = 0.25
MAX_WINDOW_SECONDS = 0.1
PHASE_SECONDS = 0.005
REPLIES_PER_PHASE = 100
MAX_PHASES = 16  # a widened tick (up to MAX_WINDOW_SECONDS) is not split into more round trips than this
RETRY_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0)


class Flusher:
    def __init__(self, settings: Settings, writer: StreamWriter, active: dict[str, Attempt]) -> None:
        self.writer = writer
        self.active = active
        self.window = settings.token_flush_ms / 1000
        self.events_per_second = settings.token_events_per_second
        self.batch = max(1, settings.token_flush_tokens)
        self.wake = asyncio.Event()
        self.urgent = asyncio.Event()
        self.last_step = 0.0
        self.phase = 0
        self.slots = 0
        self.last_cancel_check = 0.0
        self.failures = 0

    def add(self, run: Attempt, text: str) -> None:
        """A token of `run`: kept, then written in its phase (at once for the first token or a full batch)."""
        run.parts.append(text)
        run.pending.append(text)
        if run.slot < 0:
            run.slot, self.slots = self.slots, self.slots + 1
        if run.last_stream_id is None or len(run.pending) >= self.batch:
            run.due = True
            self.urgent.set()
        self.wake.set()

    def tick(self) -> float:
        """Seconds between flushes now: one event per reply per tick stays within the events budget."""
        if not self.events_per_second or not self.window:
            return self.window
        return max(self.window, min(len(self.active) / self.events_per_second, MAX_WINDOW_SECONDS))

    def phases(self) -> int:
        """Flushes per tick, each writing its share of the replies: REPLIES_PER_PHASE at most, while phases
        stay PHASE_SECONDS apart."""
        if not self.window:
            return 1
        wanted = -(-len(self.active) // REPLIES_PER_PHASE)
        return min(MAX_PHASES, max(1, min(wanted, int(self.tick() / PHASE_SECONDS + 1e-9))))

    async def drain(self, run: Attempt) -> None:
        """Wait until every token of `run` is written (across store errors)."""
        while not run.flushed and run.stop is None:
            run.written.clear()
            self.wake.set()
            await run.written.wait()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_POLL_SECONDS):
                    await self.wake.wait()
            self.wake.clear()
            phases = self.phases()
            step = self.tick() / phases
            remaining = step - (time.monotonic() - self.last_step)
            if remaining > 0 and not self.urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self.urgent.wait()
            self.urgent.clear()
            phase = None  # off schedule: only the replies that are due
            if time.monotonic() - self.last_step >= step:
                self.last_step = time.monotonic()
                phase = self.phase = (self.phase + 1) % phases
            try:
                await self.flush_once(phase, phases)
                self.failures = 0
            except STORE_ERRORS as exc:
                delay = RETRY_SECONDS[min(self.failures, len(RETRY_SECONDS) - 1)]
                if self.failures == 0:
                    log.warning("token flush failed; tokens kept, retrying", extra={"error": repr(exc)})
                self.failures += 1
                self.wake.set()
                await asyncio.sleep(delay)

    async def flush_once(self, phase: int | None, phases: int) -> None:
        """Writes the due replies and, on schedule, those in `phase` (all if the tick has one, or on a retry)."""
        now = time.monotonic()
        runs = [r for r in self.active.values() if r.stop is None]
        everyone = self.failures > 0 or (phases == 1 and phase is not None)
        batches: list[Attempt] = []
        for run in runs:
            if not (everyone or run.due or run.slot % phases == phase):
                if run.pending or run.unsent:  # its phase comes next, whether or not more tokens do
                    self.wake.set()
                continue
            run.due = False
            if run.pending:
                pending, step = run.pending, self.batch
                for i in range(0, len(pending), step):
                    run.unsent.append(run.event("token", {"text": "".join(pending[i : i + step])}))
                pending.clear()
            if run.unsent:
                batches.append(run)
        check_all = now - self.last_cancel_check >= CANCEL_POLL_SECONDS
        watched = runs if check_all else batches
        if not batches and not watched:
            return
        sent = {id(r): len(r.unsent) for r in batches}
        appended = await self.writer.append_many(
            [(r.payload.session_id, r.unsent) for r in batches],
            [(r.payload.session_id, r.cancel_key) for r in watched],
            dedupe=self.failures > 0,
        )
        if check_all:
            self.last_cancel_check = now
        FLUSHES.inc()
        for run, last, refused in zip(batches, appended.ids, appended.refused, strict=True):
            if refused:
                run.halt(Stop("superseded by a newer attempt", fenced=True))
                continue
            count = sent[id(run)]
            del run.unsent[:count]
            TOKENS.inc(count)
            if last is not None:
                run.last_stream_id = last
        for run in batches:
            if run.flushed:
                run.written.set()
        for run, flag in zip(watched, appended.values, strict=True):
            if flag is not None:
                run.halt(Stop(flag.decode() or "cancelled"))
