"""Which client serves a model, the offline model as a native stream, and prices without litellm."""

from __future__ import annotations

import subprocess
import sys

import litellm
import pytest

from common.platform.settings import Settings
from workers import cost_map, model, offline_model
from workers.metering import Meter, measure
from workers.tool_requests import ToolRequest

BASE = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("name", "base", "fast_path", "path"),
    [
        (model.OFFLINE_MODEL, "", "auto", "offline"),
        (model.OFFLINE_MODEL, BASE, "off", "offline"),
        ("openai/my-model", BASE, "auto", "openai"),
        ("hosted_vllm/llama", BASE, "auto", "openai"),
        ("openai/my-model", BASE, "off", "litellm"),
        ("openai/gpt-4o", "", "auto", "litellm"),  # OpenAI's own API: litellm knows its per-model parameters
        ("anthropic/claude-3-5-sonnet", BASE, "auto", "litellm"),
        ("gpt-4o", BASE, "auto", "litellm"),
    ],
)
def test_path_for(name: str, base: str, fast_path: str, path: str) -> None:
    assert model.path_for(name, Settings(llm_api_base=base, llm_fast_path=fast_path)) == path  # type: ignore[arg-type]


def test_only_litellm_models_wait_for_litellm() -> None:
    s = Settings(llm_api_base=BASE)
    assert model.ready_for({model.OFFLINE_MODEL, "openai/my-model"}, s)
    assert model.ready_for(set(), s)
    assert model.ready_for({"anthropic/claude-3-5-sonnet"}, s) is model.ready()


def test_importing_the_model_layer_does_not_import_litellm() -> None:
    code = "import sys, workers.model, workers.runner, workers.main; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_offline_stream_yields_the_composed_reply() -> None:
    messages = [{"role": "user", "content": "what is this?"}]
    tokens = [t async for t in offline_model.stream(messages, None, None, 12, 0)]
    assert tokens == offline_model.compose_reply("what is this?", 12)


async def test_offline_stream_asks_for_offered_tools_only() -> None:
    tools = [{"type": "function", "function": {"name": "demo__calculate"}}]
    messages = [{"role": "user", "content": '/tool demo.calculate {"expression": "1+1"}\n/tool other.x {}'}]
    calls: list[ToolRequest] = []
    assert [t async for t in offline_model.stream(messages, tools, calls, 12, 0)] == []
    assert [(c.name, c.arguments) for c in calls] == [("demo__calculate", '{"expression": "1+1"}')]
    assert calls[0].id.startswith("call_")


def test_offline_options_come_from_metadata_then_settings() -> None:
    assert offline_model.options(None, 60, 40.0) == (60, 40.0)
    assert offline_model.options({"tokens": 5, "tokens_per_second": 0}, 60, 40.0) == (5, 0.0)
    assert offline_model.options({"tokens": 10**9, "tokens_per_second": -1}, 60, 40.0) == (100_000, 0.0)


@pytest.mark.parametrize("name", ["gpt-4o", "openai/gpt-4o", "gpt-4o-mini", "openai/gpt-3.5-turbo"])
def test_cost_map_prices_as_litellm_does(name: str) -> None:
    prompt, completion = litellm.cost_per_token(model=name, prompt_tokens=1234, completion_tokens=567)
    assert cost_map.cost(name, 1234, 567) == pytest.approx(prompt + completion)


def test_cost_map_has_no_price_for_unknown_models() -> None:
    assert cost_map.cost("openai/no-such-model", 10, 10) is None


async def test_lean_replies_are_priced_without_litellm() -> None:
    meter = Meter()
    meter.begin([{"role": "user", "content": "hi"}], offline=False, via_litellm=False)
    meter.chunks, meter.reported = 3, (1000, 500)

    async def no_litellm() -> object:
        raise AssertionError("litellm was awaited")

    used = await measure(meter, "openai/gpt-4o", "a b c", {}, no_litellm)  # type: ignore[arg-type]
    assert (used.input_tokens, used.output_tokens, used.estimated) == (1000, 500, False)
    assert used.cost_usd == pytest.approx(cost_map.cost("openai/gpt-4o", 1000, 500))
