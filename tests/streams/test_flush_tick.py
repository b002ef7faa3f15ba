"""A worker's flush tick widens with its running replies, so the events it writes stay within budget,
and a tick is written in phases of at most REPLIES_PER_PHASE replies, so no later stage gets the whole
tick's events at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from common.platform.settings import Settings
from common.requests.models import JobPayload
from common.streams.protocol import Event, connect
from common.streams.writer import Appended, StreamWriter
from tests.conftest import Infra
from workers import flusher as flusher_module
from workers.attempt import Attempt
from workers.flusher import MAX_PHASES, MAX_WINDOW_SECONDS, PHASE_SECONDS, Flusher


def config(**settings: Any) -> Settings:
    return Settings(jwt_secret_key="x" * 32, **settings)  # type: ignore[arg-type]


def flusher(active: int, **settings: Any) -> Flusher:
    return Flusher(config(**settings), writer=None, active={str(n): None for n in range(active)})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("replies", "seconds", "phases"),
    [(1, 0.015, 1), (150, 0.015, 2), (200, 0.02, 2), (300, 0.03, 3), (500, 0.05, 5), (5000, MAX_WINDOW_SECONDS, 16)],
)
def test_the_tick_is_the_flush_window_until_the_events_budget_needs_more(
    replies: int, seconds: float, phases: int
) -> None:
    tick = flusher(replies, token_flush_ms=15, token_events_per_second=10_000)
    assert tick.tick() == pytest.approx(seconds)
    assert tick.phases() == phases  # at most REPLIES_PER_PHASE replies per flush, flushes PHASE_SECONDS apart


def test_phases_stay_phase_seconds_apart() -> None:
    tick = flusher(1000, token_flush_ms=15, token_events_per_second=100_000)
    assert tick.tick() == pytest.approx(0.015) and tick.phases() == int(0.015 / PHASE_SECONDS)


def test_a_widened_tick_is_not_split_into_dozens_of_flushes() -> None:
    tick = flusher(50_000, token_flush_ms=1, token_events_per_second=10_000)
    assert tick.tick() == pytest.approx(MAX_WINDOW_SECONDS) and MAX_WINDOW_SECONDS / PHASE_SECONDS > MAX_PHASES
    assert tick.phases() == MAX_PHASES


def test_a_zero_budget_or_window_keeps_the_configured_tick() -> None:
    assert flusher(500, token_flush_ms=15, token_events_per_second=0).tick() == pytest.approx(0.015)
    assert flusher(500, token_flush_ms=0).tick() == 0  # TOKEN_FLUSH_MS=0: flush whenever free
    assert flusher(500, token_flush_ms=0).phases() == 1


class Recording(StreamWriter):
    """The real writer, remembering the sessions each call wrote events to."""

    calls: list[list[str]]

    async def append_many(
        self, batches: list[tuple[str, list[Event]]], reads: list[tuple[str, str]] | None = None, **kw: Any
    ) -> Appended:
        self.calls.append([session for session, events in batches if events])
        return await super().append_many(batches, reads, **kw)


async def test_a_widened_tick_writes_each_reply_once_in_its_phase(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flusher_module, "REPLIES_PER_PHASE", 5)
    redis = connect(infra.redis_url, cluster=False, max_connections=4)
    writer = Recording(redis, buckets=256, maxlen=1000, ttl_seconds=60)
    writer.calls = []
    runs = {
        str(n): Attempt(JobPayload(request_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()), tenant_id="t"))
        for n in range(30)
    }
    flush = Flusher(config(token_flush_ms=10, token_events_per_second=1000), writer, runs)  # type: ignore[arg-type]
    assert flush.tick() == pytest.approx(0.03) and flush.phases() == 6
    loop = asyncio.create_task(flush.run())
    try:
        for run in runs.values():  # first tokens go at once, whatever the phase
            flush.add(run, "first ")
        async with asyncio.timeout(5):
            for run in runs.values():
                await flush.drain(run)
        assert all(run.last_stream_id for run in runs.values())
        writer.calls.clear()
        for run in runs.values():
            flush.add(run, "second ")
        async with asyncio.timeout(5):
            for run in runs.values():  # an ending waits for its phase: it does not write everyone's tokens
                await flush.drain(run)
        written = [sessions for sessions in writer.calls if sessions]
        assert sorted(s for sessions in written for s in sessions) == sorted(
            r.payload.session_id for r in runs.values()
        )
        assert [len(sessions) for sessions in written] == [5] * 6
        for run in runs.values():
            entries = await redis.xrange(writer.key(run.payload.session_id))
            assert [e[1][b"data"] for e in entries] == [b'{"text":"first "}', b'{"text":"second "}']
    finally:
        loop.cancel()
        await redis.aclose()


async def test_tokens_left_for_a_later_phase_are_written_without_new_tokens(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last tokens of replies in other phases (their models done, nothing new to wake the loop) go out
    within the tick, not at the next cancel poll."""
    monkeypatch.setattr(flusher_module, "CANCEL_POLL_SECONDS", 30.0)
    monkeypatch.setattr(flusher_module, "REPLIES_PER_PHASE", 5)
    redis = connect(infra.redis_url, cluster=False, max_connections=4)
    writer = StreamWriter(redis, buckets=256, maxlen=1000, ttl_seconds=60)
    runs = {
        str(n): Attempt(JobPayload(request_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()), tenant_id="t"))
        for n in range(30)
    }
    flush = Flusher(config(token_flush_ms=10, token_events_per_second=1000), writer, runs)  # type: ignore[arg-type]
    loop = asyncio.create_task(flush.run())
    try:
        for run in runs.values():
            flush.add(run, "first ")
        async with asyncio.timeout(5):
            for run in runs.values():
                await flush.drain(run)
        last = [runs["0"], runs["1"], runs["2"]]  # in three different phases
        for run in last:
            flush.add(run, "last ")
        async with asyncio.timeout(5):
            for run in last:
                await flush.drain(run)
    finally:
        loop.cancel()
        await redis.aclose()
