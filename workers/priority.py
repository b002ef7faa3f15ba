"""First tokens first: while a worker's event loop is saturated, replies that are already
streaming pause between chunks so attempts still waiting for their first token can start.

Under a burst, each new attempt's start (claim, history, the model call's setup) competes on
one event loop with the chunks of every reply already running, and asyncio serves them in turn:
time to first token then grows with the number of running replies. The pause is taken only
while the loop is saturated, and lasts at most WORKER_START_PRIORITY_MS, so an idle loop, or a
start that is waiting on the network, never holds replies back for long. Saturated means the
loop lags (a turn takes long), or it spent almost none of the last probe period waiting in
select (many short turns lag little but leave no CPU to spare). If the loop went idle while
replies were held, the starts are waiting on the network, not on the CPU (a real model's first
token): holding replies helps nobody then, so pausing is off for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

# Loop lag above which the loop counts as saturated: an unloaded loop's probe sees ~1 ms.
SATURATED_LAG_SECONDS = 0.01
# Share of a probe period spent outside select() above which the loop counts as saturated.
SATURATED_BUSY_SHARE = 0.9
# Replies were held, yet the loop was busy less than this share: the starts wait on the network.
IDLE_WHILE_HELD_SHARE = 0.5
# How long pausing stays off after that.
BACK_OFF_SECONDS = 0.5


class StartPriority:
    def __init__(self, max_pause_ms: float, idle_seconds: Callable[[], float] | None = None) -> None:
        self.max_pause = max_pause_ms / 1000
        self.idle_seconds = idle_seconds
        self.starting = 0
        self.saturated = False
        self.held = False  # replies were held at some point since the last probe
        self.off_until = 0.0
        self._idle_at = (time.monotonic(), idle_seconds() if idle_seconds else 0.0)
        self._go = asyncio.Event()
        self._go.set()

    def start(self) -> Start:
        """Count an attempt as starting until its `Start.done()`."""
        self.starting += 1
        self._update()
        return Start(self)

    def observe_lag(self, lag: float) -> None:
        """Called by the lag probe of the queue worker with its latest figure."""
        busy, now = self._busy_share(), time.monotonic()
        if self.held and self.idle_seconds is not None and busy < IDLE_WHILE_HELD_SHARE:
            self.off_until = now + BACK_OFF_SECONDS
        self.held = False
        self.saturated = now >= self.off_until and (lag > SATURATED_LAG_SECONDS or busy > SATURATED_BUSY_SHARE)
        self._update()

    def _busy_share(self) -> float:
        """The share of the time since the last call the loop did not wait in select (0 if unknown)."""
        if self.idle_seconds is None:
            return 0.0
        (then, idle_then), now, idle = self._idle_at, time.monotonic(), self.idle_seconds()
        self._idle_at = (now, idle)
        return 1.0 - (idle - idle_then) / (now - then) if now > then else 0.0

    async def pause(self) -> None:
        """Between two chunks of a running reply: wait while starts are held up by a busy loop."""
        if self._go.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_pause):
                await self._go.wait()

    def _update(self) -> None:
        if self.starting and self.saturated and self.max_pause > 0:
            self._go.clear()
            self.held = True
        else:
            self._go.set()


class Start:
    """One attempt's start; `done()` (idempotent) at its first token or when it ends without one."""

    __slots__ = ("_priority",)

    def __init__(self, priority: StartPriority) -> None:
        self._priority: StartPriority | None = priority

    def done(self) -> None:
        if self._priority is not None:
            self._priority.starting -= 1
            self._priority._update()
            self._priority = None
