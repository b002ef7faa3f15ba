"""`workers.model.stream_reply` against a fake OpenAI-compatible server, through both of its clients.

Every test runs on the lean client (LLM_FAST_PATH=auto, workers/openai_stream.py) and on litellm's
real client (LLM_FAST_PATH=off): text, the provider's usage, tool-call deltas, retries before the
first chunk, readable permanent errors, the request body, and a consumer that stops early closing
the connection. On litellm's path a reply also ends at its finish reason without litellm's
end-of-stream response rebuild (usage and cost logging relaygate does not use).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from common.platform.settings import Settings
from tests.fakes.openai_api import FakeOpenAI, ToolCalls
from workers import model
from workers.metering import Meter
from workers.tool_requests import ToolRequest

MODEL = "openai/fake-model"
KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(params=["auto", "off"])
def fast_path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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


def settings(fake: FakeOpenAI, fast_path: str, **extra: Any) -> Settings:
    given: dict[str, Any] = {"llm_retries": 1, **extra}
    s = Settings(llm_model=MODEL, llm_api_base=fake.base_url, llm_api_key=KEY, llm_fast_path=fast_path, **given)
    assert model.path_for(MODEL, s) == ("openai" if fast_path == "auto" else "litellm")
    model.configure()
    return s


async def reply(
    s: Settings,
    limit: int | None = None,
    meter: Meter | None = None,
    calls: list[ToolRequest] | None = None,
    tools: list[dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[str]:
    pieces: list[str] = []
    stream = model.stream_reply(
        s, MODEL, [{"role": "user", "content": "hi"}], metadata or {}, tools=tools, calls=calls, meter=meter
    )
    async for text in stream:
        pieces.append(text)
        if limit is not None and len(pieces) >= limit:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return pieces


@pytest.mark.parametrize("usage_trailer", [False, True])
async def test_a_reply_ends_at_its_finish_reason_with_the_providers_usage(
    fake: FakeOpenAI, fast_path: str, rebuilds: list[int], usage_trailer: bool
) -> None:
    fake.usage_trailer = usage_trailer
    fake.reply("one two three four")
    meter = Meter()
    assert await reply(settings(fake, fast_path), meter=meter) == ["one ", "two ", "three ", "four"]
    assert meter.chunks == 4
    assert meter.reported == ((3, 4) if usage_trailer else None)
    assert rebuilds == []


async def test_the_request_carries_key_cap_tools_and_asks_for_usage(fake: FakeOpenAI, fast_path: str) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    await reply(settings(fake, fast_path, max_reply_tokens=50), tools=tools, metadata={"max_tokens": 20})
    [call] = fake.calls
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert (call.body["model"], call.body["stream"], call.body["max_tokens"]) == ("fake-model", True, 20)
    assert call.body["stream_options"] == {"include_usage": True}
    assert call.body["tools"] == tools
    assert call.messages == [{"role": "user", "content": "hi"}]


async def test_tool_call_deltas_are_folded_into_whole_calls(fake: FakeOpenAI, fast_path: str) -> None:
    fake.tools(
        ToolCalls([("lookup", {"q": "weather in Oslo"}), ("clock", {})], text="Let me look.", ids=["call_a", "call_b"])
    )
    calls: list[ToolRequest] = []
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
        for n in ("lookup", "clock")
    ]
    assert "".join(await reply(settings(fake, fast_path), calls=calls, tools=tools)) == "Let me look."
    assert calls == [ToolRequest("call_a", "lookup", '{"q": "weather in Oslo"}'), ToolRequest("call_b", "clock", "{}")]


async def test_transient_errors_before_the_first_chunk_are_retried(fake: FakeOpenAI, fast_path: str) -> None:
    fake.fail(503, times=1)
    fake.fail(429, times=1, message="Rate limit reached", type="rate_limit_error")
    fake.reply("third time lucky")
    assert "".join(await reply(settings(fake, fast_path, llm_retries=3))) == "third time lucky"
    assert len(fake.calls) == 3


async def test_retries_are_bounded(fake: FakeOpenAI, fast_path: str) -> None:
    fake.fail(500, times=3)
    with pytest.raises(Exception) as raised:
        await reply(settings(fake, fast_path, llm_retries=2))
    assert len(fake.calls) == 2
    assert "overloaded" in model.describe_error(raised.value)


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_a_permanent_error_is_not_retried_and_reads_well(fake: FakeOpenAI, fast_path: str, status: int) -> None:
    fake.fail(status, message=f"Incorrect API key provided: {KEY}", type="invalid_request_error")
    with pytest.raises(Exception) as raised:
        await reply(settings(fake, fast_path, llm_retries=3))
    assert len(fake.calls) == 1
    error = model.describe_error(raised.value)
    assert "Incorrect API key provided" in error
    assert KEY not in error and "Traceback" not in error


async def test_a_dead_endpoint_is_a_readable_connection_error(fake: FakeOpenAI, fast_path: str) -> None:
    s = settings(fake, fast_path, llm_retries=2)
    fake.stop()
    with pytest.raises(Exception) as raised:
        await reply(s)
    error = model.describe_error(raised.value)
    assert error.startswith("model provider error (") and "Connect" in error, error  # ConnectError / APIConnectionError


async def test_a_consumer_that_stops_early_closes_the_connection(fake: FakeOpenAI, fast_path: str) -> None:
    fake.pace = 0.05
    fake.reply(" ".join(f"w{i}" for i in range(200)))
    assert await reply(settings(fake, fast_path), limit=2) == ["w0 ", "w1 "]
    async with asyncio.timeout(5):  # the whole reply would take 10 s
        while fake.disconnects != 1:
            await asyncio.sleep(0.05)
