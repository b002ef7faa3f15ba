"""The built-in offline model: a litellm custom provider that streams a deterministic reply.

It lets relaygate run, demo and test with no model provider. Its replies say so.
Length (tokens) and speed (tokens per second, 0 = as fast as possible) come from the
request's `metadata.offline` or from OFFLINE_MODEL_TOKENS / OFFLINE_MODEL_TOKENS_PER_SECOND.
Given tools, a message line `/tool SERVER.TOOL {json arguments}` makes it call that tool (one call per
such line, together), and once the results are in it answers quoting them.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import litellm
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

from workers.model import OFFLINE_PROVIDER as PROVIDER
from workers.tool_names import provider_name

_FILLER = (
    "Replies stream token by token through a Redis Stream and reach you over server-sent events, "
    "resumable with Last-Event-ID. Configure LLM_MODEL to talk to a real model. "
).split()


def compose_reply(prompt: str, tokens: int) -> list[str]:
    """The reply as a list of tokens: a fixed preamble, an echo of the prompt, then filler."""
    echo = " ".join(prompt.split())[:200]
    words = f"[offline model] This is relaygate's built-in offline model, not a real AI model. You said: {echo}".split()
    words += list(itertools.islice(itertools.cycle(_FILLER), max(tokens - len(words), 0)))
    words = words[: max(tokens, 1)]
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def _chunk(text: str, finished: bool = False, reason: str = "stop") -> GenericStreamingChunk:
    return {"text": text, "is_finished": finished, "finish_reason": reason if finished else "",
            "usage": None, "index": 0, "tool_use": None}


def requested_tools(prompt: str, offered: set[str]) -> list[tuple[str, str]]:
    """The `/tool NAME {json}` lines of `prompt` whose tool is offered, as (provider name, JSON arguments)."""
    calls = []
    for line in prompt.splitlines():
        _, found, rest = line.partition("/tool ")
        name, _, arguments = rest.strip().partition(" ")
        if found and provider_name(name) in offered:
            calls.append((provider_name(name), arguments.strip() or "{}"))
    return calls


def quote_results(prompt: str, messages: list[dict[str, Any]]) -> list[str]:
    """The answer after tool calls, as tokens: each of the latest turn's results, quoted by tool name."""
    named = {provider_name(n): n for n in (line.partition("/tool ")[2].split(" ")[0] for line in prompt.splitlines())}
    calls = {c["id"]: c["function"]["name"] for m in messages for c in (m.get("tool_calls") or [])}
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        name = calls.get(message.get("tool_call_id", ""), "tool")
        results.append(f"{named.get(name, name)} returned: {message.get('content')}")
    words = ("[offline model] " + "; ".join(reversed(results))).split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


class OfflineModel(CustomLLM):
    def __init__(self, tokens: int, tokens_per_second: float) -> None:
        super().__init__()
        self.tokens = tokens
        self.tokens_per_second = tokens_per_second

    def _options(self, litellm_params: dict[str, Any] | None) -> tuple[int, float]:
        metadata = (litellm_params or {}).get("metadata") or {}
        options = metadata.get("offline") or {}
        tokens = int(options.get("tokens", self.tokens))
        rate = float(options.get("tokens_per_second", self.tokens_per_second))
        return max(1, min(tokens, 100_000)), max(0.0, rate)

    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:  # type: ignore[override]
        messages: list[dict[str, Any]] = kwargs.get("messages") or (args[1] if len(args) > 1 else [])
        prompt = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        tokens, rate = self._options(kwargs.get("litellm_params"))
        delay = 1.0 / rate if rate else 0.0
        tools = (kwargs.get("optional_params") or {}).get("tools") or []
        offered = {t["function"]["name"] for t in tools}
        calls = requested_tools(prompt, offered) if messages and messages[-1].get("role") == "user" else []
        if calls:
            for index, (name, arguments) in enumerate(calls):
                chunk = _chunk("")
                chunk["tool_use"] = {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function", "index": index,
                                     "function": {"name": name, "arguments": arguments}}
                yield chunk
            yield _chunk("", finished=True, reason="tool_calls")
            return
        after_tools = bool(messages) and messages[-1].get("role") == "tool"
        reply = quote_results(prompt, messages) if after_tools else compose_reply(prompt, tokens)
        for token in reply:
            await asyncio.sleep(delay)  # at full speed too: replies interleave token by token, as over a network
            yield _chunk(token)
        yield _chunk("", finished=True)


def register(tokens: int, tokens_per_second: float) -> None:
    litellm.custom_provider_map = [
        item for item in litellm.custom_provider_map if item["provider"] != PROVIDER
    ] + [{"provider": PROVIDER, "custom_handler": OfflineModel(tokens, tokens_per_second)}]
