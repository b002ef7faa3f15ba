"""Running replies pause for starting attempts only while the loop is saturated, and never for long."""

from __future__ import annotations

import asyncio

import pytest

from workers import priority as priority_module
from workers.priority import BACK_OFF_SECONDS, SATURATED_LAG_SECONDS, StartPriority

BUSY = SATURATED_LAG_SECONDS * 5


class Clock:
    """`time` for workers.priority, moved by hand: busy shares and the back-off do not depend on how
    long the test's own sleeps take on a loaded machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(priority_module, "time", fake)
    return fake


async def paused(priority: StartPriority) -> asyncio.Task[None]:
    """A running reply's pause, given a few turns of the loop to return if it is not held."""
    task = asyncio.create_task(priority.pause())
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def test_no_pause_without_starts_or_without_saturation() -> None:
    priority = StartPriority(max_pause_ms=60_000)
    priority.observe_lag(BUSY)
    assert (await paused(priority)).done()  # saturated, but nothing is starting
    start = priority.start()
    priority.observe_lag(0.001)
    assert (await paused(priority)).done()  # starting, but the loop keeps up
    start.done()


async def test_a_pause_lasts_until_the_starts_are_done() -> None:
    priority = StartPriority(max_pause_ms=60_000)
    first, second = priority.start(), priority.start()
    priority.observe_lag(BUSY)
    task = await paused(priority)
    assert not task.done()
    first.done()
    first.done()  # idempotent: one start is not counted off twice
    await asyncio.sleep(0)
    assert not task.done() and priority.starting == 1
    second.done()
    await asyncio.wait_for(task, 1)
    assert priority.starting == 0


async def test_a_pause_ends_when_the_loop_keeps_up_again() -> None:
    priority = StartPriority(max_pause_ms=60_000)
    start = priority.start()
    priority.observe_lag(BUSY)
    task = await paused(priority)
    assert not task.done()
    priority.observe_lag(0.0)  # the starts now wait on the network: the loop is idle
    await asyncio.wait_for(task, 1)
    start.done()


async def test_a_pause_is_bounded_and_zero_turns_it_off() -> None:
    bounded = StartPriority(max_pause_ms=20)
    bounded.start()
    bounded.observe_lag(BUSY)
    await asyncio.wait_for(bounded.pause(), 5)  # returns after its 20 ms though the start never ends

    off = StartPriority(max_pause_ms=0)
    off.start()
    off.observe_lag(BUSY)
    assert (await paused(off)).done()


async def test_a_loop_that_never_waits_is_saturated_though_it_does_not_lag(clock: Clock) -> None:
    idle = [0.0]
    priority = StartPriority(max_pause_ms=60_000, idle_seconds=lambda: idle[0])
    start = priority.start()
    clock.now += 0.02
    priority.observe_lag(0.001)  # no time waiting in select since the last probe: busy
    assert not (await paused(priority)).done()
    clock.now += 0.02
    idle[0] += 0.02  # the whole period waiting in select: the starts wait on the network
    priority.observe_lag(0.001)
    assert (await paused(priority)).done()
    start.done()


async def test_the_idle_timing_selector_counts_time_spent_waiting() -> None:
    from common.platform.tuning import IdleTimingSelector

    selector = IdleTimingSelector()
    try:
        selector.select(0.03)
        assert selector.idle >= 0.02
    finally:
        selector.close()


async def test_holding_replies_for_starts_that_wait_on_the_network_backs_off(clock: Clock) -> None:
    idle = [0.0]
    priority = StartPriority(max_pause_ms=60_000, idle_seconds=lambda: idle[0])
    start = priority.start()
    clock.now += 0.02
    priority.observe_lag(0.001)  # busy: replies are held
    held = await paused(priority)
    assert not held.done()
    clock.now += 0.02
    idle[0] += 0.02  # held, and the loop went idle: the starts wait on a model's first token
    priority.observe_lag(0.001)
    await asyncio.wait_for(held, 1)
    clock.now += 0.01
    priority.observe_lag(0.001)  # busy again, but within the back-off: no pause
    assert (await paused(priority)).done()
    clock.now += BACK_OFF_SECONDS
    priority.observe_lag(0.001)  # the back-off is over and the loop is busy: hold again
    assert not (await paused(priority)).done()
    start.done()
