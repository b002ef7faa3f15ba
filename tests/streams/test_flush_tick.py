"""A worker's flush tick widens with its running replies, so the events it writes stay within budget."""

from __future__ import annotations

from typing import Any

import pytest

from common.platform.settings import Settings
from workers.flusher import MAX_WINDOW_SECONDS, Flusher


def flusher(active: int, **settings: Any) -> Flusher:
    config = Settings(jwt_secret_key="x" * 32, **settings)  # type: ignore[arg-type]
    return Flusher(config, writer=None, active={str(n): None for n in range(active)})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("replies", "seconds"),
    [(1, 0.015), (150, 0.015), (200, 0.02), (500, 0.05), (5000, MAX_WINDOW_SECONDS)],
)
def test_the_tick_is_the_flush_window_until_the_events_budget_needs_more(replies: int, seconds: float) -> None:
    assert flusher(replies, token_flush_ms=15, token_events_per_second=10_000).tick() == pytest.approx(seconds)


def test_a_zero_budget_or_window_keeps_the_configured_tick() -> None:
    assert flusher(500, token_flush_ms=15, token_events_per_second=0).tick() == pytest.approx(0.015)
    assert flusher(500, token_flush_ms=0).tick() == 0  # TOKEN_FLUSH_MS=0: flush whenever free
