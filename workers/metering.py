"""One attempt's token usage and cost: the provider's own count when it sends one, else litellm's
token counter (marked estimated); priced from the agents file's `prices`, else litellm's cost map
(read as JSON for replies that did not go through litellm, so they never wait for its import).
While an attempt runs, `Meter.so_far` is what it used until now, which its worker's heartbeat stores
so that an attempt lost with its worker still counts (common.requests.lifecycle)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from common.agents.registry import ModelPrice
from common.usage.models import Usage
from workers import cost_map

log = logging.getLogger(__name__)


@dataclass
class Meter:
    """Filled by `workers.model.stream_reply` while a reply streams."""

    agent_id: str = ""
    model: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    chunks: int = 0  # text chunks received
    reported: tuple[int, int] | None = None  # the provider's (prompt, completion) tokens of the current call
    earlier: tuple[int, int] = (0, 0)  # what the provider reported for the attempt's earlier calls (tool steps)
    offline: bool = False  # the offline model: its chunks are its tokens and it costs nothing
    via_litellm: bool = False  # served by litellm (priced with its own cost functions)
    prompt_estimate: int | None = None  # the current call's prompt tokens as counted once `so_far` needed them

    def begin(self, messages: list[dict[str, Any]], offline: bool, via_litellm: bool) -> None:
        """A model call of the attempt starts (an agent with tools makes one per step)."""
        if self.reported is not None:
            self.earlier = (self.earlier[0] + self.reported[0], self.earlier[1] + self.reported[1])
            self.reported = None
        self.messages, self.offline, self.via_litellm = messages, offline, via_litellm
        self.prompt_estimate = None

    def so_far(self, litellm: ModuleType | None, prices: dict[str, ModelPrice]) -> Usage:
        """An estimate of what the attempt used until now: the provider's counts of finished calls, the
        prompt counted by litellm (when loaded; a worker on the lean path may never load it, and then
        counts the prompt only once the provider reports it) and a token per text chunk since. Counts
        the prompt once per call."""
        if self.offline:
            if self.prompt_estimate is None:
                self.prompt_estimate = sum(len(str(m.get("content", "")).split()) for m in self.messages)
            return Usage(self.prompt_estimate if self.chunks else 0, self.chunks, 0.0, True)
        if not (self.chunks or self.reported or self.earlier != (0, 0)):
            return Usage()
        if litellm is not None and self.reported is None and self.prompt_estimate is None:
            self.prompt_estimate = (
                int(litellm.token_counter(model=self.model, messages=self.messages)) if self.messages else 0
            )
        last = self.reported or (self.prompt_estimate or 0, 0)
        prompt, completion = self.earlier[0] + last[0], max(self.earlier[1] + last[1], self.chunks)
        per_input, per_output = unit_prices(litellm if self.via_litellm else None, self.model, prices)
        return Usage(prompt, completion, prompt * per_input + completion * per_output, True)

    def report(self, usage: Any) -> None:
        """Take a provider usage object or dict (`prompt_tokens`, `completion_tokens`), if it is one."""
        if usage is None:
            return
        fields = usage if isinstance(usage, dict) else vars(usage) if hasattr(usage, "__dict__") else {}
        prompt, completion = fields.get("prompt_tokens"), fields.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            self.reported = (prompt, completion)


def price(
    litellm: ModuleType | None, model: str, input_tokens: int, output_tokens: int, prices: dict[str, ModelPrice]
) -> float:
    """USD for these tokens: the operator's price for the model, else litellm's cost map (through litellm
    when given, else read from its file; the map must be loaded, see `cost_map.load`), else 0."""
    override = prices.get(model)
    if override is not None:
        return (
            input_tokens * override.input_usd_per_million_tokens
            + output_tokens * override.output_usd_per_million_tokens
        ) / 1_000_000
    if litellm is None:
        return cost_map.cost(model, input_tokens, output_tokens) or 0.0
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=input_tokens, completion_tokens=output_tokens
        )
    except Exception:
        return 0.0  # a model litellm has no price for: set one under `prices` in the agents file
    return float(prompt_cost) + float(completion_cost)


_unit_prices: dict[str, tuple[float, float]] = {}


def unit_prices(litellm: ModuleType | None, model: str, prices: dict[str, ModelPrice]) -> tuple[float, float]:
    """USD per input and per output token of `model`, looked up once per process (prices are read at start)."""
    found = _unit_prices.get(model)
    if found is None:
        found = _unit_prices[model] = (
            price(litellm, model, 1_000_000, 0, prices) / 1_000_000,
            price(litellm, model, 0, 1_000_000, prices) / 1_000_000,
        )
    return found


def _count(litellm: ModuleType, model: str, messages: list[dict[str, Any]], reply: str) -> tuple[int, int]:
    prompt = int(litellm.token_counter(model=model, messages=messages)) if messages else 0
    return prompt, int(litellm.token_counter(model=model, text=reply)) if reply else 0


async def measure(
    meter: Meter,
    model: str,
    reply: str,
    prices: dict[str, ModelPrice],
    litellm_module: Callable[[], Awaitable[ModuleType]],
) -> Usage:
    """What the attempt used. A call that produced nothing and reported nothing used nothing.
    litellm (`litellm_module`) is awaited only to count tokens a provider did not report, and to price
    replies litellm served."""
    if meter.offline:
        words = sum(len(str(m.get("content", "")).split()) for m in meter.messages)
        return Usage(words if meter.chunks else 0, meter.chunks, 0.0, False)
    litellm = await litellm_module() if meter.via_litellm else None
    if meter.reported is not None or meter.earlier != (0, 0):
        last = meter.reported or (0, 0)
        prompt, completion, estimated = meter.earlier[0] + last[0], meter.earlier[1] + last[1], False
    elif meter.chunks:
        counter = litellm or await litellm_module()
        prompt, completion = await asyncio.to_thread(_count, counter, model, meter.messages, reply)
        estimated = True
    else:
        return Usage()
    if litellm is None and model not in prices and not cost_map.loaded():
        await asyncio.to_thread(cost_map.load)
    return Usage(prompt, completion, price(litellm, model, prompt, completion, prices), estimated)
