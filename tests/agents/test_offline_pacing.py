"""The offline model paces a reply on its own clock, as a provider does, whatever its reader's delays."""

from __future__ import annotations

import asyncio

import pytest

from workers import offline_model


async def test_a_late_reader_gets_the_tokens_already_due_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "time", lambda: now[0])
    monkeypatch.setattr(offline_model.asyncio, "sleep", sleep)
    messages = [{"role": "user", "content": "hi"}]
    received = []
    async for token in offline_model.stream(messages, None, None, length=5, rate=10):
        received.append(token)
        if len(received) == 1:
            now[0] += 0.25  # the reader stalls for 2.5 tokens' time after the first
    assert len(received) == 5
    # Due at 0.1, 0.2, 0.3, 0.4, 0.5: the second and third were already due when the reader came back.
    assert slept == [0.1, 0.0, 0.0, 0.05, 0.1]


async def test_full_speed_still_yields_to_the_loop_between_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(offline_model.asyncio, "sleep", sleep)
    tokens = [t async for t in offline_model.stream([{"role": "user", "content": "hi"}], None, None, length=4, rate=0)]
    assert len(tokens) == 4 and slept == [0.0] * 4
