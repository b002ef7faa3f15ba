"""`workers.model.stream_reply` against a fake OpenAI-compatible server, through litellm's real client.

A reply ends at its finish reason: every piece of text arrives, the provider's trailer is still
read, and litellm's end-of-stream response rebuild (usage and cost logging relaygate does not
use, a few ms of CPU per reply) never runs. A consumer that stops early closes the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from common.settings import Settings
from tests.e2e.fake_openai import FakeOpenAI
from workers import model


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts litellm's end-of-stream `stream_chunk_builder` calls."""
    calls: list[int] = []
    real = litellm.stream_chunk_builder

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(litellm, "stream_chunk_builder", counted)
    return calls


def settings(fake: FakeOpenAI) -> Settings:
    s = Settings(llm_model="openai/fake-model", llm_api_base=fake.base_url, llm_api_key="sk-test",  # type: ignore[arg-type]
                 llm_retries=1)
    model.configure(s)
    return s


async def reply(s: Settings, limit: int | None = None) -> list[str]:
    pieces: list[str] = []
    stream = model.stream_reply(s, "openai/fake-model", [{"role": "user", "content": "hi"}], {})
    async for text in stream:
        pieces.append(text)
        if limit is not None and len(pieces) >= limit:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return pieces


@pytest.mark.parametrize("usage_trailer", [False, True])
async def test_a_reply_ends_at_its_finish_reason(fake: FakeOpenAI, rebuilds: list[int], usage_trailer: bool) -> None:
    fake.usage_trailer = usage_trailer
    fake.reply("one two three four")
    assert await reply(settings(fake)) == ["one ", "two ", "three ", "four"]
    assert rebuilds == []


async def test_a_consumer_that_stops_early_closes_the_stream(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[int] = []
    real = litellm.CustomStreamWrapper.aclose

    async def counted(self: Any) -> None:
        closed.append(1)
        await real(self)

    monkeypatch.setattr(litellm.CustomStreamWrapper, "aclose", counted)
    fake.reply("one two three four")
    assert await reply(settings(fake), limit=2) == ["one ", "two "]
    assert closed == [1]
