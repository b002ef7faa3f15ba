"""The built-in offline model: an async generator that streams a deterministic reply, without litellm.

It lets relaygate run, demo and test with no model provider, and a worker answers with it as soon as
its stores are open (litellm's import takes seconds). Its replies say so.
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

from workers.tool_names import provider_name
from workers.tool_requests import ToolRequest

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


def options(offline: dict[str, Any] | None, tokens: int, tokens_per_second: float) -> tuple[int, float]:
    """The reply's length and speed: the request's `metadata.offline`, else the deployment's defaults."""
    given = offline or {}
    length = int(given.get("tokens", tokens))
    rate = float(given.get("tokens_per_second", tokens_per_second))
    return max(1, min(length, 100_000)), max(0.0, rate)


async def stream(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    calls: list[ToolRequest] | None,
    length: int,
    rate: float,
) -> AsyncIterator[str]:
    """Yields the reply's tokens; asked for offered tools, it yields nothing and fills `calls` instead."""
    prompt = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
    offered = {t["function"]["name"] for t in tools or []}
    wanted = requested_tools(prompt, offered) if messages and messages[-1].get("role") == "user" else []
    if wanted:
        if calls is not None:
            calls.extend(ToolRequest(f"call_{uuid.uuid4().hex[:12]}", name, arguments) for name, arguments in wanted)
        return
    delay = 1.0 / rate if rate else 0.0
    after_tools = bool(messages) and messages[-1].get("role") == "tool"
    loop = asyncio.get_running_loop()
    due = loop.time()
    for token in quote_results(prompt, messages) if after_tools else compose_reply(prompt, length):
        # Paced on the reply's own clock, as a provider streams: a token the worker reads late leaves
        # the next one no later (it was waiting in the socket), rather than pushing every later token back.
        due += delay
        await asyncio.sleep(max(due - loop.time(), 0.0))  # at full speed too: replies interleave, as over a network
        yield token
