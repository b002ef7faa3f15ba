"""The built-in offline model: a litellm custom provider that streams a deterministic reply.

It lets relaygate run, demo and test with no model provider. Its replies say so.
Length (tokens) and speed (tokens per second, 0 = as fast as possible) come from the
request's `metadata.offline` or from OFFLINE_MODEL_TOKENS / OFFLINE_MODEL_TOKENS_PER_SECOND.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import litellm
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

from workers.model import OFFLINE_PROVIDER as PROVIDER

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


def _chunk(text: str, finished: bool = False) -> GenericStreamingChunk:
    return {"text": text, "is_finished": finished, "finish_reason": "stop" if finished else "",
            "usage": None, "index": 0, "tool_use": None}


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
        reply = compose_reply(prompt, tokens)
        for token in reply:
            await asyncio.sleep(delay)  # at full speed too: replies interleave token by token, as over a network
            yield _chunk(token)
        yield _chunk("", finished=True)


def register(tokens: int, tokens_per_second: float) -> None:
    litellm.custom_provider_map = [
        item for item in litellm.custom_provider_map if item["provider"] != PROVIDER
    ] + [{"provider": PROVIDER, "custom_handler": OfflineModel(tokens, tokens_per_second)}]
