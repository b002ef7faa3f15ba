"""Model calls through litellm: the configured model or the built-in offline one.

litellm's import is most of a worker's start (seconds of CPU), and only model calls need it: `configure`
starts it in a thread, so the worker opens its stores and takes jobs meanwhile, and a model call waits
for it only if it comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from common.agents import Agent, AgentRegistry
from common.models import model_options
from common.redact import scrub
from common.settings import Settings
from workers.metering import Meter

log = logging.getLogger(__name__)

# The offline model's names, without importing it (workers.offline_model imports litellm).
OFFLINE_PROVIDER = "relaygate-offline"
OFFLINE_MODEL = f"{OFFLINE_PROVIDER}/echo"

# How long a finished stream's trailer may take before its connection is just closed.
TRAILER_SECONDS = 2.0

_loaded: Future[ModuleType] | None = None


def configure(settings: Settings) -> None:
    """Start loading and configuring litellm in a background thread (once per process; a later call
    with other settings re-registers the offline model once litellm is loaded)."""
    global _loaded
    if _loaded is not None:
        if _loaded.done() and _loaded.exception() is None:
            from workers import offline_model

            offline_model.register(settings.offline_model_tokens, settings.offline_model_tokens_per_second)
        return
    _loaded = Future()
    loaded = _loaded

    def load() -> None:
        started = time.monotonic()
        try:
            loaded.set_result(_load(settings))
        except BaseException as exc:
            log.exception("loading the model layer failed")
            loaded.set_exception(exc)
        else:
            log.info("model layer ready", extra={"seconds": round(time.monotonic() - started, 2)})

    threading.Thread(target=load, name="litellm-import", daemon=True).start()


def ready() -> bool:
    """Whether litellm is loaded (model calls start without waiting)."""
    return _loaded is not None and _loaded.done()


async def litellm_module() -> ModuleType:
    if _loaded is None:
        raise RuntimeError("workers.model.configure() was not called")
    return await asyncio.wrap_future(_loaded)


def _load(settings: Settings) -> ModuleType:
    import litellm

    # litellm imports the OpenAI SDK's resources on its first call, synchronously; doing it
    # here keeps that stall out of the event loop that runs the lease heartbeats.
    import openai.resources.chat  # noqa: F401

    from workers import offline_model

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    # relaygate bills nothing from litellm and registers no callbacks: per-chunk logging threads
    # and end-user cost tracking are pure cost per token. (turn_off_message_logging stays off:
    # it makes litellm deep-copy and redact every call's messages for loggers we do not have.)
    litellm.disable_streaming_logging = True
    litellm.disable_end_user_cost_tracking = True
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    offline_model.register(settings.offline_model_tokens, settings.offline_model_tokens_per_second)
    return litellm


def transient_errors(litellm: ModuleType) -> tuple[type[Exception], ...]:
    """Provider failures worth retrying before the first chunk."""
    errors = litellm.exceptions
    return (errors.APIConnectionError, errors.RateLimitError, errors.ServiceUnavailableError,
            errors.InternalServerError, errors.Timeout)


def model_for(agent: Agent, settings: Settings) -> str:
    return agent.model or settings.llm_model or OFFLINE_MODEL


def configured(settings: Settings, agents: AgentRegistry) -> frozenset[str]:
    """The models this deployment set up (LLM_MODEL, or the offline model, and every agent's): the only
    ones a flow's llm task may name, so a flow cannot pick a provider or a local endpoint of its own."""
    return frozenset({settings.llm_model or OFFLINE_MODEL, *(model_for(a, settings) for a in agents.agents)})


@dataclass
class ToolRequest:
    """A tool call the model asked for, assembled from its streamed deltas (`name` is the provider's name)."""

    id: str = ""
    name: str = ""
    arguments: str = ""


def describe_error(exc: BaseException) -> str:
    """A short, readable reason for clients: truncated, scrubbed of URLs and keys, never a traceback."""
    message = scrub(" ".join(str(exc).split()))
    name = type(exc).__name__
    return f"model provider error ({name}): {message[:300]}" if message else f"model provider error ({name})"


_usage_streamers: dict[str, bool] = {}


def _streams_usage(litellm: ModuleType, model: str) -> bool:
    """Whether the provider takes `stream_options` (then it is asked to end a stream with its usage)."""
    known = _usage_streamers.get(model)
    if known is None:
        try:
            name, provider, _, _ = litellm.get_llm_provider(model)
            supported = litellm.get_supported_openai_params(model=name, custom_llm_provider=provider)
        except Exception:
            supported = None
        known = _usage_streamers[model] = bool(supported) and "stream_options" in supported
    return known


async def stream_reply(
    settings: Settings, model: str, messages: list[dict[str, Any]], metadata: dict[str, Any],
    tools: list[dict[str, Any]] | None = None, calls: list[ToolRequest] | None = None, meter: Meter | None = None,
) -> AsyncIterator[str]:
    """Yields text chunks; with `tools`, the tool calls the model asks for are collected into `calls`.
    `meter` receives the chunk count and the provider's usage, when it sends one. Transient failures
    before the first chunk are retried with backoff."""
    litellm = await litellm_module()
    meter = meter if meter is not None else Meter()
    meter.begin(messages, model.startswith(OFFLINE_PROVIDER))
    options = model_options(metadata)
    kwargs: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                              "metadata": {k: v for k, v in options.items() if k == "offline"}}
    if tools:
        kwargs["tools"] = tools
    if not meter.offline:
        if _streams_usage(litellm, model):
            kwargs["stream_options"] = {"include_usage": True}
        caps = [int(c) for c in (options.get("max_tokens"), settings.max_reply_tokens) if c]
        if caps:
            kwargs["max_tokens"] = min(caps)
        kwargs["max_retries"] = 0  # the provider SDK's own retries would multiply ours
        if settings.llm_api_base:
            kwargs["api_base"] = settings.llm_api_base
        if settings.llm_api_key.get_secret_value():
            kwargs["api_key"] = settings.llm_api_key.get_secret_value()
    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, settings.llm_retries)),
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry_if_exception_type(transient_errors(litellm)),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            response = await litellm.acompletion(**kwargs)
            chunks = response.__aiter__()
            chunk = await anext(chunks, None)
    finished = False
    try:
        while chunk is not None:
            meter.report(getattr(chunk, "usage", None))
            choice = chunk.choices[0] if chunk.choices else None
            if choice is not None:
                if choice.delta.content:
                    meter.chunks += 1
                    yield choice.delta.content
                if calls is not None and getattr(choice.delta, "tool_calls", None):
                    _collect(calls, choice.delta.tool_calls)
                if choice.finish_reason:
                    break
            chunk = await anext(chunks, None)
        finished = True
    finally:
        await _release(response, drain=finished, meter=meter)


def _collect(calls: list[ToolRequest], deltas: list[Any]) -> None:
    """Fold streamed tool-call deltas into whole calls: the first delta of an index names it, later ones
    append to its arguments."""
    for delta in deltas:
        index = getattr(delta, "index", None)
        index = len(calls) if index is None else int(index)
        while len(calls) <= index:
            calls.append(ToolRequest())
        call = calls[index]
        call.id = call.id or (delta.id or "")
        function = delta.function
        if function is not None:
            call.name = call.name or (function.name or "")
            call.arguments += function.arguments or ""


async def _release(response: Any, *, drain: bool, meter: Meter) -> None:
    """End a stream at its finish reason, skipping litellm's end-of-stream work.

    Reading the wrapper to its end makes litellm rebuild the whole response from every chunk
    for usage and cost logging (`stream_chunk_builder`, a few ms of CPU per reply) that
    relaygate does not use. The provider's own trailer (a usage chunk, `[DONE]`) is still read,
    briefly, so its HTTP connection goes back to the pool and its usage reaches `meter`; an
    abandoned stream is closed.
    """
    rest: Any = getattr(response, "completion_stream", None)
    if drain and hasattr(rest, "__aiter__"):
        with contextlib.suppress(Exception):
            async with asyncio.timeout(TRAILER_SECONDS):
                async for raw in rest:
                    meter.report(raw.get("usage") if isinstance(raw, dict) else getattr(raw, "usage", None))
    await response.aclose()
