"""Process-level tuning shared by the gateway and the workers."""

from __future__ import annotations

import asyncio
import gc
import selectors
import time


def tune_gc() -> None:
    """Move what start-up allocated out of the collector's way and collect young objects less often.

    The default thresholds make full collections walk every long-lived object (modules,
    litellm's tables) every few thousand allocations; those pauses showed up as 30-260 ms
    spikes in relay latency. Call once, after start-up.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


class IdleTimingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The default selector, counting the seconds its event loop waits in `select()` (`idle`).

    An event loop that is always busy can still turn quickly (many short callbacks, so little
    lag); the share of time it never waits is what says it has no CPU to spare.
    """

    def __init__(self) -> None:
        super().__init__()
        self.idle = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        start = time.monotonic()
        try:
            return super().select(timeout)  # type: ignore[no-any-return]
        finally:
            self.idle += time.monotonic() - start


def new_event_loop() -> tuple[asyncio.AbstractEventLoop, IdleTimingSelector]:
    """A new event loop (set as current) and its idle-timing selector."""
    selector = IdleTimingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    asyncio.set_event_loop(loop)
    return loop, selector
