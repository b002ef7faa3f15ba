"""Concurrent calls of one statement share a round trip; a failed batch costs no caller its answer."""

from __future__ import annotations

import asyncio

import pytest

from common.platform.batching import Batcher


class Recorder:
    """`many` and `one` of a Batcher that doubles numbers and records how it was called."""

    def __init__(self, fail_many: bool = False, bad: int | None = None) -> None:
        self.fail_many = fail_many
        self.bad = bad
        self.batches: list[list[int]] = []
        self.alone: list[int] = []

    async def many(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(0.01)
        if self.fail_many or self.bad in items:
            raise RuntimeError("the batch failed")
        return [2 * i for i in items]

    async def one(self, item: int) -> int:
        self.alone.append(item)
        await asyncio.sleep(0.01)
        if item == self.bad:
            raise ValueError(f"bad item {item}")
        return 2 * item


async def test_a_lone_call_runs_at_once_by_itself() -> None:
    rec = Recorder()
    batcher = Batcher(rec.many, rec.one, name="test")
    assert await batcher(3) == 6
    assert rec.alone == [3] and rec.batches == []


async def test_calls_that_overlap_share_statements_and_each_gets_its_own_result() -> None:
    rec = Recorder()
    batcher = Batcher(rec.many, rec.one, name="test", limit=10)
    results = await asyncio.gather(*(batcher(i) for i in range(25)))
    assert results == [2 * i for i in range(25)]
    # The first call went out alone (nothing was running), the rest in batches of at most 10.
    assert rec.alone == [] and [len(b) for b in rec.batches] == [10, 10, 5]
    assert batcher.batches == 3


async def test_calls_with_one_key_never_share_a_batch() -> None:
    rec = Recorder()
    batcher = Batcher(rec.many, rec.one, name="test", key=lambda i: i % 3)
    results = await asyncio.gather(*(batcher(i) for i in range(7)))
    assert results == [2 * i for i in range(7)]
    for batch in rec.batches:
        assert len({i % 3 for i in batch}) == len(batch)
    assert sorted(rec.alone + [i for b in rec.batches for i in b]) == list(range(7))


async def test_a_failed_batch_runs_each_call_alone_and_only_the_bad_one_fails() -> None:
    rec = Recorder(bad=4)
    batcher = Batcher(rec.many, rec.one, name="test")
    outcomes = await asyncio.gather(*(batcher(i) for i in range(8)), return_exceptions=True)
    assert [o for i, o in enumerate(outcomes) if i != 4] == [2 * i for i in range(8) if i != 4]
    assert isinstance(outcomes[4], ValueError) and "bad item 4" in str(outcomes[4])
    assert sorted(rec.alone) == list(range(8)) and batcher.batches == 0


async def test_a_batch_with_the_wrong_number_of_results_falls_back_to_single_calls() -> None:
    async def short(items: list[int]) -> list[int]:
        return [0]

    rec = Recorder()
    batcher = Batcher(short, rec.one, name="test")
    assert await asyncio.gather(*(batcher(i) for i in range(4))) == [0, 2, 4, 6]


async def test_a_caller_cancelled_before_its_batch_goes_writes_nothing() -> None:
    rec = Recorder()
    batcher = Batcher(rec.many, rec.one, name="test")
    first = asyncio.create_task(batcher(1))
    await asyncio.sleep(0)  # the first call is in flight; the next ones wait
    waiting = [asyncio.create_task(batcher(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    waiting[1].cancel()
    assert await first == 2
    assert [await waiting[0], await waiting[2]] == [4, 8]
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    assert rec.batches == [[2, 4]]


async def test_an_error_reaches_its_caller_when_every_call_runs_alone() -> None:
    rec = Recorder(bad=1)
    batcher = Batcher(rec.many, rec.one, name="test")
    with pytest.raises(ValueError, match="bad item 1"):
        await batcher(1)
    assert await batcher(2) == 4  # the batcher goes on after an error
