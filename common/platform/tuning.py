"""Process-level tuning shared by the gateway and the workers."""

from __future__ import annotations

import asyncio
import gc
import selectors
import time
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

_PYTHON_PACK = AbstractConnection.pack_command


def tune_gc() -> None:
    """Move what start-up allocated out of the collector's way and collect young objects less often.

    The default thresholds make full collections walk every long-lived object (modules,
    litellm's tables) every few thousand allocations; those pauses showed up as 30-260 ms
    spikes in relay latency. Call once, after start-up.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def pack_commands_in_c() -> None:
    """Pack every asyncio Redis command with hiredis' C packer, not redis-py's loop over the arguments.

    redis-py's asyncio connections pack in Python even with hiredis installed; a worker's token flush
    is one script call of ~8 arguments per event, and packing 170 events took 1.3 ms there against
    0.17 ms here. The bytes are the same (tests/platform/test_tuning.py). Call once per process.
    """
    AbstractConnection.pack_command = _pack_with_hiredis  # type: ignore[method-assign]


def _pack_with_hiredis(self: AbstractConnection, *args: Any) -> list[bytes]:
    # As redis-py does: a command name given as "CONFIG GET" is sent as two arguments.
    if isinstance(args[0], str):
        args = (*args[0].encode().split(), *args[1:])
    elif b" " in args[0]:
        args = (*args[0].split(), *args[1:])
    try:
        return [hiredis.pack_command(args)]
    except TypeError:  # neither packs it (None, bool, a dict): redis-py's own DataError says which argument
        return _PYTHON_PACK(self, *args)


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
